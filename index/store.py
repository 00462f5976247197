"""The on-disk index format and the ``CURRENT`` pointer: what a built index is, which one serves.

An index is a directory ``indexes/<index_id>/`` holding ``index.faiss``, ``mapping.parquet``
(faiss row -> image_id, product_id, photo path), ``products.parquet`` (what a result shows) and
``meta.json``. It is written under a temporary name and renamed into place, so a directory that
exists is complete. ``indexes/CURRENT`` names the index that searches use; it is replaced atomically
(temp file + ``os.replace``) only after the ``indexes`` row with status ``current`` is committed,
so searches never see a half-built index and a failed build leaves the previous one serving.
The ``indexes`` table is the truth; the pointer is the searches' fast path, repaired from the table.
A running API re-reads the table when :func:`serving_stamp` changes (one ``stat`` per request), so a
switch whose pointer write was lost (a kill between the two) still takes effect.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import ShoesearchError
from core.files import atomic_write_text
from warehouse import open_warehouse
from warehouse.models_table import TRAINED, find_model

POINTER = "CURRENT"
INDEX_FILE = "index.faiss"
MAPPING_FILE = "mapping.parquet"
PRODUCTS_FILE = "products.parquet"
META_FILE = "meta.json"


class IndexUnavailable(ShoesearchError):
    """A file of a built index that cannot be read (truncated, corrupt, missing), named relative to the home."""


def read_index_file(settings, directory: Path, name: str, reader):
    """``reader(path)`` of the index file ``directory / name``; any failure is :class:`IndexUnavailable`,
    one line naming the file relative to the data home (faiss, Arrow and JSON errors span lines)."""
    path = directory / name
    try:
        return reader(path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # Arrow, faiss, json, a bad meta.json
        shown = path.relative_to(settings.home) if path.is_relative_to(settings.home) else path
        raise IndexUnavailable(f"cannot read {shown}: {_reason(exc, path)} (rebuild it with `shoesearch index`)") \
            from None


def _reason(exc: Exception, path: Path) -> str:
    """``exc`` on one short line without ``path``: faiss's "Error in <function> at <source>: Error: '<check>'
    failed: <reason>" is cut to its reason, an OSError to its strerror."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc).strip().splitlines() or [""])[0]
    text = text.split("failed: ")[-1].replace(f"'{path}'", "").replace(str(path), "")
    text = re.sub(r"\s+:", ":", text).strip(" :")[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def serving_stamp(settings) -> tuple:
    """What changes when the current index may have: the ``indexes`` table directory's mtime (a commit
    renames a batch into it) and the ``CURRENT`` pointer's text. One ``stat`` and one small read."""
    try:
        table = (settings.warehouse_dir / "indexes").stat().st_mtime_ns
    except OSError:
        table = None
    try:
        pointer = (settings.indexes_dir / POINTER).read_text()
    except OSError:
        pointer = None
    return table, pointer


@dataclass(frozen=True)
class IndexInfo:
    """A built index on disk and its ``indexes`` row."""

    index_id: str
    model_id: str
    kind: str
    path: Path  # absolute directory
    n_vectors: int
    dim: int
    recall_vs_exact: float | None
    run_id: str


def _row_to_info(settings, row: dict) -> IndexInfo:
    return IndexInfo(
        index_id=row["index_id"], model_id=row["model_id"], kind=row["kind"],
        path=(settings.home / row["path"]).resolve(), n_vectors=int(row["n_vectors"] or 0),
        dim=int(row["dim"] or 0), recall_vs_exact=row["recall_vs_exact"], run_id=row["run_id"],
    )


def write_index_dir(settings, index_id: str, index, mapping: pa.Table, products: pa.Table, meta: dict) -> Path:
    """Write every file under a temporary name, then rename the directory into place."""
    import faiss

    final = settings.indexes_dir / index_id
    tmp = settings.indexes_dir / f".tmp-{index_id}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pq.write_table(mapping, tmp / MAPPING_FILE)
        pq.write_table(products, tmp / PRODUCTS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def index_row(wh, index_id: str, status: str = "built") -> dict:
    rows = wh.query(
        "SELECT * FROM indexes WHERE index_id = ? AND status = ? ORDER BY created_at DESC LIMIT 1",
        [index_id, status],
    ).to_pylist()
    if not rows:
        raise ShoesearchError(f"no {status} index {index_id!r} (see `shoesearch sql 'SELECT * FROM indexes'`)")
    return rows[0]


def write_pointer(settings, index_id: str) -> None:
    atomic_write_text(settings.indexes_dir / POINTER, index_id + "\n")


def current_index_row(wh) -> dict | None:
    rows = wh.query("SELECT * FROM indexes_current").to_pylist()
    return rows[0] if rows else None


def current_index(settings, must_exist: bool = False) -> IndexInfo | None:
    """The current index per the ``indexes`` table; the ``CURRENT`` pointer (the searches' fast path)
    is rewritten when it is missing or names another index (a crash between commit and pointer write),
    where the home is writable. ``must_exist`` (readers, the API): a missing home is refused, not created."""
    pointer = settings.indexes_dir / POINTER
    row = current_index_row(open_warehouse(settings, must_exist=must_exist))
    if row is None:
        return None
    if not pointer.exists() or pointer.read_text().strip() != row["index_id"]:
        try:
            write_pointer(settings, row["index_id"])
        except OSError:  # a read-only home: the table is the truth, the pointer is only a fast path
            pass
    return _row_to_info(settings, row)


def prune_indexes(settings, keep: int) -> list[str]:
    """Delete old index directories beyond the newest ``keep`` (never the current one)."""
    pointer = settings.indexes_dir / POINTER
    current = pointer.read_text().strip() if pointer.exists() else None
    dirs = sorted((d for d in settings.indexes_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    removed = []
    for d in dirs[max(keep, 1):]:
        if d.name != current:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def served_trained_model(settings) -> str | None:
    """The trained model behind the current index; None when the ImageNet descriptor serves or there is no index."""
    wh = open_warehouse(settings)
    current = current_index_row(wh)
    row = find_model(wh, current["model_id"]) if current else None
    return current["model_id"] if row and row["kind"] == TRAINED else None
