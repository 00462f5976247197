"""Index step and search: faiss kinds and recall, atomic switching, the gate, search by photo, lineage."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from shoesearch.errors import ShoesearchError
from shoesearch.settings import IndexSettings
from tasks.index import (build_faiss, build_index, choose_kind, current_index, gate_decision, pq_subquantizers,
                         recall_vs_exact, switch_index)
from warehouse import lineage, open_warehouse


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_choose_kind_by_size():
    cfg = IndexSettings(exact_max_vectors=1_000)
    assert choose_kind(1_000, cfg) == "flat_ip"
    assert choose_kind(50_000, cfg) == "ivfpq"
    assert choose_kind(2_000, cfg) == "flat_ip"  # too few vectors to train 256 PQ codewords: stay exact
    assert choose_kind(2_000, replace(cfg, approximate="hnsw")) == "hnsw"
    with pytest.raises(ShoesearchError, match="ivfpq"):
        choose_kind(10, replace(cfg, approximate="lsh"))
    assert pq_subquantizers(512, 64) == 64 and pq_subquantizers(96, 64) == 48 and pq_subquantizers(7, 64) == 7


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_indexes_find_most_exact_neighbours(kind):
    vectors = clustered(12_000, 64, seed=1)
    cfg = IndexSettings(pq_bytes=16, nprobe=16, hnsw_m=16, hnsw_ef_construction=40)
    index = build_faiss(vectors, kind, cfg, use_gpu=False)
    assert index.ntotal == len(vectors)
    queries = vectors[:200]
    recall = recall_vs_exact(index, vectors, queries, 10)
    assert 0.5 < recall <= 1.0
    exact = build_faiss(vectors, "flat_ip", cfg, use_gpu=False)
    assert recall_vs_exact(exact, vectors, queries, 10) == 1.0
    _, ids = index.search(queries[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() > 0.8  # a stored vector finds itself


def test_index_built_switched_and_searchable(indexed_settings):
    from tasks.search import search

    settings = indexed_settings
    wh = open_warehouse(settings)
    info = current_index(settings)
    assert info is not None and info.kind == "flat_ip" and info.recall_vs_exact == 1.0
    assert (settings.indexes_dir / "CURRENT").read_text().strip() == info.index_id
    photos = wh.query("SELECT count(*) AS n FROM images_current WHERE status = 'ok'").column("n")[0].as_py()
    assert info.n_vectors == photos  # index_all_photos: every valid photo
    statuses = {r["status"] for r in wh.query("SELECT status FROM indexes WHERE index_id = ?", [info.index_id]).to_pylist()}
    assert statuses == {"built", "current"}
    steps = {r["step"] for r in lineage(wh, info.run_id)}
    assert {"index", "embed", "ingest"} <= steps

    # A product's front photo finds that product first; results are deduplicated by product.
    row = wh.query("""SELECT i.product_id, i.path FROM images_current i WHERE i.status = 'ok' AND i.position = 0
                      ORDER BY i.product_id LIMIT 1 OFFSET 3""").to_pylist()[0]
    hits = search(settings, settings.images_dir / row["path"], k=5)
    assert hits[0].product_id == row["product_id"] and hits[0].score > 0.99
    assert len({h.product_id for h in hits}) == len(hits) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].title and hits[0].photo_path
    # Even when the first photos fetched all belong to few products, k distinct products come back.
    from tasks.search import get_searcher

    searcher = get_searcher(settings)
    searcher.settings.index.photos_per_query = 1
    from PIL import Image

    deep = searcher.search_vectors(searcher.embed([Image.open(settings.images_dir / row["path"])]), 6)[0]
    assert len({h.product_id for h in deep}) == 6 and deep[0].product_id == row["product_id"]

    with pytest.raises(ShoesearchError, match="not_image"):
        search(settings, b"<html>not a photo</html>")


def test_rebuild_with_hnsw_records_recall_and_switches_atomically(indexed_settings):
    settings = indexed_settings
    old = current_index(settings)
    settings.index.exact_max_vectors = 10
    settings.index.approximate = "hnsw"
    new_id = build_index(settings)
    wh = open_warehouse(settings)
    built = wh.query("SELECT * FROM indexes WHERE index_id = ?", [new_id]).to_pylist()
    assert [r["status"] for r in built] == ["built"] and built[0]["kind"] == "hnsw"
    assert 0.5 <= built[0]["recall_vs_exact"] <= 1.0
    # Built but not switched: searches still use the old index.
    assert current_index(settings).index_id == old.index_id
    meta = json.loads((settings.indexes_dir / new_id / "meta.json").read_text())
    assert meta["kind"] == "hnsw" and meta["n_vectors"] == old.n_vectors
    assert not list(settings.indexes_dir.glob(".tmp-*"))
    switch_index(settings, new_id)
    assert current_index(settings).index_id == new_id
    # A crash after the `current` row was committed but before the pointer moved: the table wins.
    pointer = settings.indexes_dir / "CURRENT"
    pointer.write_text(old.index_id + "\n")
    assert current_index(settings).index_id == new_id and pointer.read_text().strip() == new_id
    with pytest.raises(ShoesearchError, match="no built index"):
        switch_index(settings, "index-does-not-exist")


def test_gate_refuses_a_worse_model(indexed_settings):
    wh = open_warehouse(indexed_settings)
    current = {"model_id": "m-old", "run_id": "r"}
    wh.write("train-x", {"models": [
        {"model_id": "m-old", "kind": "netvlad", "backbone": "b", "path": "p", "metrics": json.dumps({"test_recall_at_1": 0.8})},
        {"model_id": "m-new", "kind": "netvlad", "backbone": "b", "path": "p", "metrics": json.dumps({"test_recall_at_1": 0.7})},
    ]})
    ok, why = gate_decision(wh, "m-new", current, tolerance=0.0)
    assert not ok and "0.7000" in why and "0.8000" in why
    assert gate_decision(wh, "m-new", current, tolerance=0.15)[0]
    assert gate_decision(wh, "m-new", None, tolerance=0.0) == (True, "no current index")
