"""End to end on a small synthetic catalogue: split -> k-means -> train -> evaluate (CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

TRAIN_PRODUCTS = 24
TRAIN_IMAGE_SIZE = 96  # EfficientNet-Lite0 gives a 3x3 local map: 9 descriptors per photo
SMALL = {  # tiny but real: every code path of the defaults runs
    "train.image_size": TRAIN_IMAGE_SIZE, "train.clusters": 8, "train.descriptor_dim": 32,
    "train.kmeans_descriptors": 900, "train.kmeans_images": 100, "train.kmeans_iterations": 10,
    "train.epochs": 3, "train.batch_size": 4, "train.lr": 1e-3, "train.negatives_pool": 64,
    "train.hard_negatives": 4, "train.max_positives": 2, "train.cache_refresh_queries": 64,
    "train.num_workers": 0, "train.device": "cpu", "embed.image_size": TRAIN_IMAGE_SIZE,
    "embed.num_workers": 0,
}


@pytest.fixture(scope="module")
def train_home(tmp_path_factory):
    """A home with a 24-product synthetic catalogue ingested (raw photos: no denoise run)."""
    from crawlers.demo_shop.synthetic import generate_catalog
    from shoesearch.settings import Settings
    from tasks.ingest import ingest_catalog

    root = tmp_path_factory.mktemp("train")
    catalog = generate_catalog(root / "shoes", TRAIN_PRODUCTS, noise_rate=0.1, seed=1, image_size=TRAIN_IMAGE_SIZE)
    home = root / "home"
    ingest_catalog(Settings.load(home=home), catalog, name="shoes")
    return home


@pytest.fixture(scope="module")
def trained(train_home):
    """split -> kmeans -> train, run as plain functions; returns (settings, run ids)."""
    from shoesearch.settings import Settings
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split
    from tasks.train import train_model

    settings = Settings.load(home=train_home, overrides=SMALL)
    torch.set_num_threads(2)
    split = make_split(settings)
    km = kmeans_init(settings, split)
    run = train_model(settings, split, kmeans_run_id=km)
    return settings, split, km, run


def test_split_is_product_level_and_deterministic(trained):
    from tasks.split import make_split
    from warehouse import open_warehouse

    settings, split, _, _ = trained
    wh = open_warehouse(settings)
    again = make_split(settings)
    a = wh.query("SELECT product_id, split FROM splits WHERE run_id = ? ORDER BY 1", [split]).to_pylist()
    b = wh.query("SELECT product_id, split FROM splits WHERE run_id = ? ORDER BY 1", [again]).to_pylist()
    assert a == b and len(a) == TRAIN_PRODUCTS
    assert {r["split"] for r in a} == {"train", "val", "test"}


def test_kmeans_model_has_lineage(trained):
    from warehouse import lineage, open_warehouse

    settings, split, km, _ = trained
    wh = open_warehouse(settings)
    row = wh.query("SELECT * FROM models WHERE run_id = ?", [km]).to_pylist()[0]
    assert row["kind"] == "kmeans" and row["backbone"] == "efficientnet_lite0"
    stored = torch.load(settings.home / row["path"], weights_only=False)
    assert stored["centroids"].shape == (8, 1280) and stored["alpha"] > 0
    assert len(stored["image_ids"]) > 0
    assert split in [r["run_id"] for r in lineage(wh, km)]


def test_training_lowers_loss_and_beats_kmeans_init(trained):
    """The trained model: lower loss on fixed mined tuples, higher test Recall@1 than k-means init."""
    from models.loss import WeakTripletLoss
    from models.netvlad_model import load_checkpoint
    from tasks.train import TupleDataset, mine_chunk, query_indices, tuple_loss
    from tasks.train_data import PhotoDataset, load_photos
    from warehouse import open_warehouse

    settings, split, _, run = trained
    wh = open_warehouse(settings)
    row = wh.query("SELECT * FROM models WHERE run_id = ?", [run]).to_pylist()[0]
    params, metrics = json.loads(row["params"]), json.loads(row["metrics"])
    trained_model, _ = load_checkpoint(settings.home / row["path"])
    init_model, _ = load_checkpoint(settings.home / params["init_path"])

    # fixed tuples mined with the initial model; the same tuples scored by both models
    photos = load_photos(wh, split, "auto", ("train",))
    ds = PhotoDataset(settings, photos.paths, TRAIN_IMAGE_SIZE, init_model.backbone.mean, init_model.backbone.std)
    tuples = mine_chunk(init_model, settings, photos, ds, query_indices(photos), torch.Generator().manual_seed(5),
                        torch.device("cpu"))
    batch = torch.stack([TupleDataset(ds, tuples)[i] for i in range(len(tuples))])
    crit = WeakTripletLoss(settings.train.margin)
    with torch.no_grad():
        before = float(tuple_loss(init_model.eval(), batch, crit, settings.train.max_positives, torch.device("cpu")))
        after = float(tuple_loss(trained_model.eval(), batch, crit, settings.train.max_positives, torch.device("cpu")))
    assert after < before * 0.9, (before, after)

    # test Recall@1: trained > k-means init, measured by the evaluate step on the same test photos
    from tasks.evaluate import evaluate

    ev = evaluate(settings, row["model_id"])
    rows = {r["variant"]: r for r in wh.query("SELECT * FROM evaluations WHERE run_id = ?", [ev]).to_pylist()}
    assert set(rows) == {"imagenet", "kmeans_init", "trained"}
    assert rows["trained"]["recall_at_1"] > rows["kmeans_init"]["recall_at_1"], rows
    assert rows["trained"]["recall_at_1"] == pytest.approx(metrics["recall_at_1"])
    assert (settings.reports_dir / f"{ev}.md").exists() and (settings.reports_dir / f"{ev}.png").exists()

    # per-epoch metrics in the warehouse
    epochs = wh.query("SELECT epoch, loss, val_recall_at_1 FROM train_metrics WHERE model_id = ? ORDER BY epoch",
                      [row["model_id"]]).to_pylist()
    assert [e["epoch"] for e in epochs] == list(range(1, params["epochs_run"] + 1))
    assert all(math.isfinite(e["loss"]) for e in epochs)
