"""The nightly flow end to end on a tiny synthetic shop, under Prefect's test harness."""

from __future__ import annotations

import pytest

from tests.fixtures_crawl import FAST_CRAWL

NIGHTLY_PRODUCTS = 8  # first night; the second night's shop has NEW_PRODUCTS more
CATALOG_SEED = 3  # its 8 products split 7 train / 1 test (no val product: no per-epoch validation pass)
NEW_PRODUCTS = 2
NIGHTLY_IMAGE_SIZE = 64  # tiny photos: the wiring, not the pixels, is under test
NIGHTLY_SETTINGS = {
    **FAST_CRAWL,
    "crawl.keywords": "鞋", "crawl.categories": "",
    "embed.image_size": NIGHTLY_IMAGE_SIZE, "embed.batch_size": 32,  # loader workers: the default (2)
    "train.image_size": NIGHTLY_IMAGE_SIZE, "train.clusters": 4, "train.descriptor_dim": 16,
    "train.kmeans_descriptors": 200, "train.kmeans_images": 20, "train.kmeans_iterations": 3,
    "train.epochs": 1, "train.batch_size": 8, "train.negatives_pool": 8, "train.hard_negatives": 2,
    "train.max_positives": 2, "train.cache_refresh_queries": 64, "train.device": "cpu",
    "schedule.task_retries": 0, "schedule.retry_delay_s": 0,
}
TABLES = ["products", "images", "embeddings", "denoise", "splits", "models", "train_metrics", "evaluations",
          "indexes", "runs"]


@pytest.fixture(scope="module")
def nightly_catalog(tmp_path_factory):
    from crawlers.demo_shop.synthetic import generate_catalog

    out = tmp_path_factory.mktemp("nightly") / "catalog"
    return generate_catalog(out, NIGHTLY_PRODUCTS + NEW_PRODUCTS, noise_rate=0.2, seed=CATALOG_SEED,
                            image_size=NIGHTLY_IMAGE_SIZE)


def test_nightly_end_to_end_incremental_and_gated(prefect_harness, tmp_path, nightly_catalog, monkeypatch):
    from crawlers.demo_shop.server import DemoShop, load_catalog
    from flows.nightly import nightly
    from tasks.index import current_index
    from tasks.search import search
    from warehouse import lineage, open_warehouse
    from shoesearch.settings import Settings

    home = tmp_path / "home"
    monkeypatch.setenv("SHOESEARCH_HOME", str(home))
    products = load_catalog(nightly_catalog)

    # Night 1: cold start (k-means), every table filled, the index switched in.
    with DemoShop(products[:NIGHTLY_PRODUCTS], page_size=10) as shop:
        first = nightly(site=shop.url, home=str(home), overrides=NIGHTLY_SETTINGS)
    settings = Settings.load(home=home, overrides=NIGHTLY_SETTINGS)
    wh = open_warehouse(settings)
    assert first["status"] == "current" and "kmeans" in first["steps"]
    splits = {r["split"]: r["n"] for r in wh.query("SELECT split, count(*) AS n FROM splits WHERE run_id = ? "
                                                   "GROUP BY split", [first["steps"]["split"]]).to_pylist()}
    assert splits == {"train": 7, "test": 1}
    assert {e["variant"] for e in first["evaluations"]} == {"imagenet", "kmeans_init", "trained"}
    for table in TABLES:
        n = wh.query(f"SELECT count(*) AS n FROM {'runs_log' if table == 'runs' else table}").column("n")[0].as_py()
        assert n > 0, f"table {table} is empty after a nightly run"
    info = current_index(settings)
    assert info.index_id == first["index_id"] and info.model_id == first["model_id"]
    assert info.model_id.startswith("netvlad")
    steps = {r["step"] for r in lineage(wh, info.run_id)}
    assert {"index", "embed", "train", "kmeans", "split", "denoise", "crawl"} <= steps
    kept = wh.query("SELECT count(*) AS n FROM denoise_current WHERE kept").column("n")[0].as_py()
    assert info.n_vectors == kept

    # A catalogued product's front photo finds that product first.
    front = wh.query("SELECT product_id, path FROM images_current WHERE position = 0 AND status = 'ok' "
                     "ORDER BY product_id LIMIT 1").to_pylist()[0]
    assert search(settings, settings.images_dir / front["path"], k=3)[0].product_id == front["product_id"]

    # Night 2: two new products; only their photos are embedded. The gate is forced to demand an
    # impossible gain (tolerance -1: Recall@1 must rise by more than 1), so the new index is refused.
    old_photos = wh.query("SELECT count(*) AS n FROM images_current WHERE status = 'ok'").column("n")[0].as_py()
    with DemoShop(products, page_size=10) as shop:
        second = nightly(site=shop.url, home=str(home), overrides={**NIGHTLY_SETTINGS, "schedule.gate_tolerance": -1.0})
    new_photos = wh.query("SELECT count(*) AS n FROM images_current WHERE status = 'ok'").column("n")[0].as_py() - old_photos
    assert new_photos > 0
    embed_params = wh.query("SELECT parameters FROM runs WHERE run_id = ?", [second["steps"]["embed"]]).column(0)[0].as_py()
    import json

    assert json.loads(embed_params)["to_embed"] == new_photos  # the ImageNet pass: only the new photos
    assert "kmeans" not in second["steps"]  # warm start from the current model
    parent = wh.query("SELECT parent_model_id FROM models WHERE model_id = ?", [second["model_id"]]).column(0)[0].as_py()
    assert parent == first["model_id"]
    assert second["status"] == "refused" and "refused" in second["note"]
    assert current_index(settings).index_id == first["index_id"]  # the previous index keeps serving
    refused = wh.query("SELECT * FROM indexes WHERE status = 'refused'").to_pylist()
    assert [r["index_id"] for r in refused] == [second["index_id"]]
