"""Materialised "current" views: ``products_current``, ``images_current`` and ``denoise_current`` as Parquet.

The live views (:data:`warehouse.views.DERIVED_VIEWS`) compute "what is true now" at every query: a window over
every product version, a join of every photo with its product and of every decision with its photo. At 500k
photos that is most of an analyst query's time. So the run that changes one of their inputs (crawl, ingest,
denoise: see :func:`warehouse.runs.start_run`; a correction by hand: :mod:`warehouse.overrides`) writes them
once, sorted by their integer keys, into ``<warehouse>/_current/``, with a manifest naming the batches they were computed from::

    _current/manifest.json                  {"stamp": ..., "tables": {table: [batch/part:size, ...]}, "files": ...}
    _current/<view>-<generation>.parquet    the view's rows, sorted by product_key (and image_key)

A connection uses a file only while it is exact (:func:`valid_files`): the batches of its input tables are
still the ones it was computed from and no ``denoise`` run has been recorded since. Otherwise (a step
committed since, a run failed before its refresh, a home written by an older version) that view stays the
live query: a stale row is never shown, only a slower query. Files and manifest are written to temp names
and renamed; the previous generation is kept, so a reader that read the old manifest still finds its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from core.files import atomic_path, atomic_write_text
from warehouse.locks import file_lock

CURRENT_DIR = "_current"
MANIFEST = "manifest.json"
RUNS_SCAN_LIMIT = 256  # more runs files than this since a refresh: treat it as stale rather than read them
# view -> (the tables whose batches it is computed from, its sort order: row-group statistics on the keys)
MATERIALISED = {
    "products_current": (("products",), "product_key"),
    "images_current": (("products", "images"), "product_key, image_key"),
    "denoise_current": (("products", "images", "denoise", "denoise_overrides"), "product_key, image_key"),
}


def _stamp() -> str:
    """Changes whenever a view's definition or a table's schema does: files of another version are not used."""
    from warehouse.schemas import TABLES
    from warehouse.views import DERIVED_VIEWS

    text = repr(sorted(DERIVED_VIEWS.items())) + repr([(n, str(s)) for n, s in TABLES.items()])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def batches(wh, table: str) -> list[str]:
    """The committed files of ``table`` as ``batch/part:size`` (directory listings: no file is read).

    The size makes a part truncated or replaced in place a change too: its table's views are then computed
    live, and a query naming them says which file it cannot read, as without materialised views.
    """
    out = []
    try:
        with os.scandir(wh.root / table) as entries:
            names = [e.name for e in entries if e.name.startswith("batch-") and e.is_dir()]
        for name in names:
            with os.scandir(wh.root / table / name) as parts:
                out += [f"{name}/{p.name}:{p.stat().st_size}" for p in parts if p.name.endswith(".parquet")]
    except FileNotFoundError:  # a table or batch not there (yet), or moved away meanwhile
        pass
    return sorted(out)


def listing(wh) -> dict[str, list[str]]:
    """The batches of every table a materialised view depends on (``runs``: for the newest denoise run)."""
    return {t: batches(wh, t) for t in ("products", "images", "denoise", "denoise_overrides", "runs")}


def manifest_mtime(wh) -> int:
    try:
        return (wh.root / CURRENT_DIR / MANIFEST).stat().st_mtime_ns
    except OSError:
        return 0


def read_manifest(wh) -> dict | None:
    try:
        manifest = json.loads((wh.root / CURRENT_DIR / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("stamp") == _stamp() else None


def _denoise_recorded_since(wh, known: list[str], now: list[str]) -> bool:
    """Whether a ``runs`` file added since the refresh records a denoise run (it may change the newest one).

    A file gone or changed since (runs are never deleted, but a hand-edited home) counts as a change too.
    """
    old = set(known)
    if not old.issubset(now):
        return True
    added = [b for b in now if b not in old]
    if len(added) > RUNS_SCAN_LIMIT:
        return True
    for entry in added:
        try:
            steps = pq.read_table(wh.root / "runs" / entry.rsplit(":", 1)[0], columns=["step"]).column("step")
        except (OSError, ValueError, KeyError):
            return True
        if "denoise" in steps.to_pylist():
            return True
    return False


def valid_files(wh, now: dict[str, list[str]] | None = None) -> dict[str, str]:
    """{view: absolute path} of the materialised views that are exact now (see the module docstring)."""
    manifest = read_manifest(wh)
    if manifest is None:
        return {}
    now = now or listing(wh)
    known = manifest.get("tables", {})
    out = {}
    for view, (inputs, _order) in MATERIALISED.items():
        path = wh.root / CURRENT_DIR / str(manifest.get("files", {}).get(view, ""))
        if any(now[t] != known.get(t) for t in inputs) or not path.is_file():
            continue
        if view == "denoise_current" and _denoise_recorded_since(wh, known.get("runs", []), now["runs"]):
            continue
        out[view] = str(path)
    return out


def _sweep(directory: Path, keep: set[str]) -> None:
    """Delete the files of generations older than the ones in ``keep`` (and temporaries of killed writers)."""
    for path in directory.iterdir():
        if path.name != MANIFEST and not path.name.endswith(".lock") and path.name not in keep:
            path.unlink(missing_ok=True)


def refresh(wh) -> dict[str, str]:
    """(Re)write the materialised views of ``wh`` from the live ones; returns {view: file} (empty: skipped).

    Skipped on a read-only home, when the files are exact already, when a table has an unreadable file, and
    when a commit lands while it computes (the manifest would name batches the files do not reflect).
    """
    import duckdb

    from warehouse.views import create_views

    if wh.read_only:
        return {}
    directory = wh.root / CURRENT_DIR
    directory.mkdir(exist_ok=True)
    with file_lock(directory / ".refresh.lock"):
        before = listing(wh)
        if set(valid_files(wh, before)) == set(MATERIALISED):
            return {}
        generation = uuid.uuid4().hex[:10]
        files: dict[str, str] = {}
        with duckdb.connect(":memory:") as con:
            if create_views(con, wh):  # a table with an unreadable file: its queries say so, live
                return {}
            for view, (_inputs, order) in MATERIALISED.items():
                name = f"{view}-{generation}.parquet"
                with atomic_path(directory / name) as tmp:
                    con.execute(f"COPY (SELECT * FROM {view} ORDER BY {order}) TO '{tmp}' "
                                "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)")
                files[view] = name
        if listing(wh) != before:  # a commit landed meanwhile: these files may be older than its batches
            for name in files.values():
                (directory / name).unlink(missing_ok=True)
            return {}
        previous = read_manifest(wh) or {}
        atomic_write_text(directory / MANIFEST, json.dumps({"stamp": _stamp(), "tables": before, "files": files}))
        _sweep(directory, set(files.values()) | set(previous.get("files", {}).values()))
    return {view: str(directory / name) for view, name in files.items()}
