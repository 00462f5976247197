"""Issue 27: an index updated instead of rebuilt (``index.incremental``): the plan, the update, when to rebuild."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from index import incremental


def _mapping(keys: list[tuple[str, str]], products: list[str]) -> pa.Table:
    return pa.table({"image_id": [k[0] for k in keys], "product_id": products, "path": [k[1] for k in keys],
                     "row": pa.array(np.arange(len(keys)), pa.int64())})


def _unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_an_update_appends_new_photos_and_tombstones_removed_and_changed_ones():
    import faiss

    base_keys = [("a#0", "p/a0"), ("a#1", "p/a1"), ("b#0", "p/b0"), ("c#0", "p/c0")]
    base = _mapping(base_keys, ["a", "a", "b", "c"])
    vectors = _unit(6)
    index = faiss.IndexFlatIP(8)
    index.add(vectors[:4])
    # Now: b is gone, a#1 was re-crawled with new content (new path), d is new.
    wanted = _mapping([("a#0", "p/a0"), ("a#1", "p/a1-new"), ("c#0", "p/c0"), ("d#0", "p/d0")], ["a", "a", "c", "d"])
    wanted_vectors = np.stack([vectors[0], vectors[4], vectors[3], vectors[5]])
    added, removed = incremental.plan(base, wanted)
    assert added == [1, 3] and sorted(removed) == [1, 2]
    mapping = incremental.apply(index, base, wanted, wanted_vectors, added, removed)
    assert index.ntotal == mapping.num_rows == 6 and mapping.column("row").to_pylist() == list(range(6))
    live = {(i, p) for i, p, gone in zip(mapping.column("image_id").to_pylist(), mapping.column("path").to_pylist(),
                                         mapping.column("removed").to_pylist()) if not gone}
    assert live == set(incremental.photo_keys(wanted))
    _, rows = index.search(wanted_vectors[3:], 1)
    assert mapping.column("image_id")[int(rows[0][0])].as_py() == "d#0"  # the new vector is searchable
    # A second update on top: nothing changed, nothing added or removed (tombstones stay tombstones).
    assert incremental.plan(mapping, wanted) == ([], [])


def test_rebuild_when_the_model_or_kind_changes_or_the_delta_outgrows_the_full_build():
    meta = {"model_id": "m", "kind": "flat_ip", "n_vectors": 100,
            "full_build": {"index_id": "i0", "n_vectors": 100, "added": 10, "removed": 5}}
    assert incremental.update_reason(meta, "m", "flat_ip", 3, 2, 0.2) is None  # 20 of 100: at the limit
    assert "photos added or removed" in incremental.update_reason(meta, "m", "flat_ip", 3, 3, 0.2)
    assert "model changed" in incremental.update_reason(meta, "other", "flat_ip", 0, 0, 0.2)
    assert "kind changed" in incremental.update_reason(meta, "m", "ivfpq", 0, 0, 0.2)
    full = incremental.full_build_after(meta, 3, 2)
    assert full == {"index_id": "i0", "n_vectors": 100, "added": 13, "removed": 7}
    # An index built before updates existed counts as its own full build.
    assert incremental.full_build_after({"index_id": "old", "n_vectors": 40}, 1, 0)["index_id"] == "old"


@pytest.mark.parametrize("gone", [True, False])
def test_search_skips_removed_rows(tmp_path, gone):
    import pyarrow.parquet as pq

    from serving.search import _read_mapping

    table = _mapping([("a#0", "p/a0"), ("b#0", "p/b0")], ["a", "b"]).append_column("removed", pa.array([gone, False]))
    pq.write_table(table, tmp_path / "mapping.parquet")
    _, products, _ = _read_mapping(tmp_path / "mapping.parquet")
    assert products == [None if gone else "a", "b"]
