"""The on-disk index format and the ``CURRENT`` pointer: what a built index is, which one serves.

An index is a directory ``indexes/<index_id>/`` holding ``index.faiss``, ``mapping.parquet``
(faiss row -> image_id, product_id, photo path), ``products.parquet`` (what a result shows) and
``meta.json``. It is written under a temporary name and renamed into place, so a directory that
exists is complete. ``indexes/CURRENT`` names the index that searches use; it is replaced atomically
(temp file + ``os.replace``) only after the ``indexes`` row with status ``current`` is committed,
so searches never see a half-built index and a failed build leaves the previous one serving.
The ``indexes`` table is the truth; the pointer is the searches' fast path, repaired from the table.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import ShoesearchError
from warehouse import atomic_write_text, open_warehouse

POINTER = "CURRENT"
INDEX_FILE = "index.faiss"
MAPPING_FILE = "mapping.parquet"
PRODUCTS_FILE = "products.parquet"
META_FILE = "meta.json"


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


def current_index(settings) -> IndexInfo | None:
    """The current index per the ``indexes`` table; the ``CURRENT`` pointer (the searches' fast path)
    is rewritten when it is missing or names another index (a crash between commit and pointer write)."""
    pointer = settings.indexes_dir / POINTER
    row = current_index_row(open_warehouse(settings))
    if row is None:
        return None
    if not pointer.exists() or pointer.read_text().strip() != row["index_id"]:
        write_pointer(settings, row["index_id"])
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
