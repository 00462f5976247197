"""An index updated instead of rebuilt: the current index of the same model, plus the photos added since, minus
the photos removed or changed since.

faiss appends new vectors to any index kind (flat, IVF-PQ with its trained quantisers, HNSW), but only some
kinds can delete; so a removed photo's row stays in the faiss file and is marked ``removed`` in the mapping,
which search skips (a tombstone). The update is written as a NEW index directory and switched in like a
rebuild, so a search sees the old index or the new one, never half of an update. The deltas accumulate from
the last full build (``meta.json``: ``full_build``); once the rows added and removed since exceed
``index.max_delta_fraction`` of what that build held, or the model or index kind changes, the step rebuilds
(quantisers retrained, tombstones dropped, recall re-measured).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index.store import INDEX_FILE, MAPPING_FILE, META_FILE


def photo_keys(mapping: pa.Table) -> list[tuple[str, str]]:
    """(image id, stored path) per mapping row: a re-crawled photo with new content has a new path."""
    return list(zip(mapping.column("image_id").to_pylist(), mapping.column("path").to_pylist()))


def removed_flags(mapping: pa.Table) -> list[bool]:
    return mapping.column("removed").to_pylist() if "removed" in mapping.column_names else [False] * mapping.num_rows


def plan(base: pa.Table, wanted: pa.Table) -> tuple[list[int], list[int]]:
    """(positions in ``wanted`` of the photos ``base`` lacks, rows of ``base`` whose photo is no longer wanted)."""
    live = {key: row for key, row, gone in zip(photo_keys(base), base.column("row").to_pylist(), removed_flags(base))
            if not gone}
    keys = photo_keys(wanted)
    wanted_keys = set(keys)
    return [k for k, key in enumerate(keys) if key not in live], [row for key, row in live.items()
                                                                  if key not in wanted_keys]


def update_reason(base_meta: dict, model_id: str, kind: str, n_added: int, n_removed: int,
                  max_fraction: float) -> str | None:
    """Why this update must be a full rebuild instead, or None when it may be incremental."""
    if base_meta.get("model_id") != model_id:
        return f"the model changed ({base_meta.get('model_id')} -> {model_id})"
    if base_meta.get("kind") != kind:
        return f"the index kind changed ({base_meta.get('kind')} -> {kind})"
    full = full_build_of(base_meta)
    delta = full["added"] + full["removed"] + n_added + n_removed
    if delta > max_fraction * max(full["n_vectors"], 1):
        return (f"{delta} photos added or removed since the last full build of {full['n_vectors']} "
                f"(> index.max_delta_fraction {max_fraction:g})")
    return None


def read_base(directory: Path):
    """(faiss index, mapping, meta) of an index directory."""
    import faiss

    meta = json.loads((directory / META_FILE).read_text())
    return faiss.read_index(str(directory / INDEX_FILE)), pq.read_table(directory / MAPPING_FILE).sort_by("row"), meta


def apply(index, base: pa.Table, wanted: pa.Table, vectors: np.ndarray, added: list[int],
          removed: list[int]) -> pa.Table:
    """Append ``vectors[added]`` to ``index`` (in place) and return the new mapping: the base rows (``removed``
    set on the removed ones) followed by the added photos' rows."""
    gone = set(removed)
    flags = [flag or row in gone for row, flag in zip(base.column("row").to_pylist(), removed_flags(base))]
    old = base.select(["image_id", "product_id", "path", "row"]).append_column("removed", pa.array(flags))
    if added:
        index.add(np.ascontiguousarray(vectors[added], dtype=np.float32))
    new = wanted.take(pa.array(added, pa.int64())).select(["image_id", "product_id", "path"])
    start = base.num_rows
    new = new.append_column("row", pa.array(np.arange(start, start + len(added), dtype=np.int64)))
    new = new.append_column("removed", pa.array([False] * len(added)))
    return pa.concat_tables([old, new.cast(old.schema)])


def full_build(index_id: str | None, n_vectors: int) -> dict:
    """The ``full_build`` record of an index built afresh: nothing added or removed since."""
    return {"index_id": index_id, "n_vectors": n_vectors, "added": 0, "removed": 0}


def full_build_of(meta: dict) -> dict:
    """An index's ``full_build`` record; an index from before updates existed counts as its own full build."""
    return meta.get("full_build") or full_build(meta.get("index_id"), meta.get("n_vectors", 0))


def full_build_after(base_meta: dict, n_added: int, n_removed: int) -> dict:
    """The ``full_build`` record of an update: the base's full build with this update's deltas added."""
    full = full_build_of(base_meta)
    return {**full, "added": full["added"] + n_added, "removed": full["removed"] + n_removed}
