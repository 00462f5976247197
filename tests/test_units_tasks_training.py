"""Unit tests of the k-means, train and evaluate steps (tasks/kmeans.py, tasks/train.py, tasks/evaluate.py) on a
tiny home: 6 synthetic products at 64 px (EfficientNet-Lite0 gives a 2x2 map: 4 local descriptors a photo).

k-means runs for real (well under a second here). Training itself is end to end (tests/test_train.py); here
train's bookkeeping and refusals are checked, and evaluate runs on a NetVLAD model at its k-means init.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

TINY = {
    "train.image_size": 64, "train.clusters": 4, "train.descriptor_dim": 0, "train.kmeans_descriptors": 64,
    "train.kmeans_images": 12, "train.kmeans_iterations": 3, "train.device": "cpu", "train.num_workers": 0,
    "train.batch_size": 4, "embed.image_size": 64, "embed.num_workers": 0, "embed.batch_size": 16,
}
TRAIN, VAL, TEST = 3, 1, 2  # products per split, in product id order


def load(home: Path, **more):
    from core.settings import Settings

    return Settings.load(home=home, overrides={**TINY, **more})


def write_split(settings, assignment: list[str]) -> str:
    """A split run assigning the products, in id order, to ``assignment``'s splits."""
    from warehouse import open_warehouse, start_run

    wh = open_warehouse(settings)
    products = wh.query("SELECT DISTINCT product_id FROM images_current ORDER BY product_id").column(
        "product_id").to_pylist()
    rows = [{"product_id": p, "split": s, "seed": 0} for p, s in zip(products, assignment)]
    with start_run(wh, step="split", params={"seed": 0}) as run:
        run.write("splits", rows)
    return run.run_id


@pytest.fixture(scope="module")
def split_home(tmp_path_factory):
    """(home, split run id): 6 products ingested, 3 train / 1 val / 2 test. Read-only: copy it to write."""
    from demo_shop.synthetic import generate_catalog
    from tasks.ingest import ingest_catalog

    root = tmp_path_factory.mktemp("tiny")
    catalog = generate_catalog(root / "shoes", TRAIN + VAL + TEST, noise_rate=0.0, seed=2, image_size=64)
    ingest_catalog(load(root / "home"), catalog, name="shoes")
    split = write_split(load(root / "home"), ["train"] * TRAIN + ["val"] * VAL + ["test"] * TEST)
    return root / "home", split


@pytest.fixture(scope="module")
def kmeans_home(tmp_path_factory, split_home):
    """(home, split run id, kmeans run id): ``split_home`` plus one real k-means run. Read-only."""
    from tasks.kmeans import kmeans_init

    home = tmp_path_factory.mktemp("kmeans") / "home"
    shutil.copytree(split_home[0], home)
    torch.set_num_threads(2)
    return home, split_home[1], kmeans_init(load(home), split_home[1])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, split_home):
    """(home, split run id): a copy of ``split_home`` for the refusal tests. They add split runs and failed runs
    only, so none of them sees another's work (no k-means or train run ever succeeds here)."""
    home = tmp_path_factory.mktemp("scratch") / "home"
    shutil.copytree(split_home[0], home)
    return home, split_home[1]


def test_local_descriptors_are_unit_columns_of_each_feature_map():
    from tasks.kmeans import sample_local_descriptors

    features = torch.randn(3, 8, 4, 5)
    out = sample_local_descriptors(features, 6, torch.Generator().manual_seed(0))
    assert out.shape == (3 * 6, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(18), atol=1e-5)
    columns = torch.nn.functional.normalize(features, dim=1).flatten(2).transpose(1, 2)  # B x 20 x D
    for b in range(3):
        picked = out[b * 6:(b + 1) * 6]
        match = torch.cdist(picked, columns[b]).lt(1e-5)  # each row is one column of its own image's map
        assert match.sum(dim=1).eq(1).all() and match.any(dim=0).sum() == 6  # six different positions


def test_local_descriptor_sampling_is_seeded_and_capped_at_the_map_size():
    from tasks.kmeans import sample_local_descriptors

    features = torch.randn(2, 4, 3, 3)
    same = [sample_local_descriptors(features, 5, torch.Generator().manual_seed(7)) for _ in range(2)]
    other = sample_local_descriptors(features, 5, torch.Generator().manual_seed(8))
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], other)
    everything = sample_local_descriptors(features, 100, torch.Generator().manual_seed(0))
    assert everything.shape == (2 * 9, 4)  # at most every position once


def test_kmeans_run_stores_centres_alpha_and_its_lineage(kmeans_home):
    from tasks.train import model_id_of_run
    from training.data import load_photos
    from warehouse import open_warehouse
    from warehouse.models_table import model_of_run, model_params

    home, split, run_id = kmeans_home
    settings = load(home)
    wh = open_warehouse(settings)
    row = model_of_run(wh, run_id)
    assert row["kind"] == "kmeans" and row["backbone"] == settings.train.backbone
    assert model_id_of_run(settings, run_id) == row["model_id"] and row["model_id"].startswith("kmeans-")
    saved = torch.load(home / row["path"], weights_only=False)
    assert saved["centroids"].shape[0] == settings.train.clusters and torch.isfinite(saved["centroids"]).all()
    assert saved["alpha"] > 0 and saved["backbone"] == settings.train.backbone
    train_ids = set(load_photos(wh, split, "raw", ("train",)).image_ids)
    assert len(saved["image_ids"]) == min(settings.train.kmeans_images, len(train_ids))
    assert set(saved["image_ids"]) <= train_ids  # only training photos
    params = model_params(row)
    assert params["images"] == len(saved["image_ids"]) and params["descriptors"] >= settings.train.clusters
    run = wh.query("SELECT input_run_ids FROM runs WHERE run_id = ?", [run_id]).to_pylist()[-1]
    assert split in run["input_run_ids"]


def test_kmeans_refuses_a_split_without_training_photos(scratch):
    from core.errors import ShoesearchError
    from tasks.kmeans import kmeans_init

    settings = load(scratch[0])
    split = write_split(settings, ["test"] * 6)
    with pytest.raises(ShoesearchError, match="no training photos"):
        kmeans_init(settings, split)


def test_kmeans_refuses_more_clusters_than_descriptors(scratch):
    from core.errors import ShoesearchError
    from tasks.kmeans import kmeans_init

    settings = load(scratch[0], **{"train.clusters": 500})
    with pytest.raises(ShoesearchError, match="local descriptors for 500 clusters"):
        kmeans_init(settings, scratch[1])


def test_training_refuses_a_split_with_one_training_product(scratch):
    from core.errors import ShoesearchError
    from tasks.train import train_model

    settings = load(scratch[0])
    split = write_split(settings, ["train"] + ["test"] * 5)
    with pytest.raises(ShoesearchError, match="at least 2 training products"):
        train_model(settings, split)


def test_training_needs_a_kmeans_run_or_a_model_to_start_from(scratch):
    from core.errors import ShoesearchError
    from tasks.train import _starting_model, train_model
    from warehouse import open_warehouse

    settings = load(scratch[0])
    with pytest.raises(ShoesearchError, match="no k-means run"):
        train_model(settings, scratch[1])
    with pytest.raises(ShoesearchError, match="no model 'netvlad-missing'"):
        _starting_model(settings, open_warehouse(settings), "netvlad-missing", None, n_train=21)


def test_a_cold_start_is_netvlad_at_the_latest_kmeans_centres(kmeans_home):
    from tasks.train import _starting_model
    from warehouse import open_warehouse

    home, _, kmeans_run = kmeans_home
    settings = load(home)
    parent, model = _starting_model(settings, open_warehouse(settings), None, None, n_train=21)
    assert parent["run_id"] == kmeans_run and parent["kind"] == "kmeans"
    saved = torch.load(home / parent["path"], weights_only=False)
    assert torch.equal(model.netvlad.centroids, saved["centroids"])
    assert (model.config.clusters, model.config.descriptor_dim) == (settings.train.clusters, 0)


def test_epoch_metrics_are_durable_while_the_run_is_open(scratch, caplog):
    """An epoch's ``train_metrics`` row is committed at once, and its line logged (the run's log in a flow run;
    here, outside one, the ``shoesearch.train`` logger)."""
    import logging

    from core.progress import run_logger
    from tasks.train import _metrics_row
    from warehouse import open_warehouse, start_run

    settings = load(scratch[0])
    wh = open_warehouse(settings)
    caplog.set_level(logging.INFO, logger="shoesearch.train")
    with pytest.raises(RuntimeError), start_run(wh, step="train", params={}) as run:
        _metrics_row(run, 10, run_logger("train"), {"model_id": "netvlad-x", "epoch": 2, "stale": 1, "best": 0.625},
                     0.25, 40.0, {"queries": 8, "recall_at_1": 0.5, "recall_at_5": 0.75}, 3.5)
        raise RuntimeError("killed after epoch 2")
    assert [r.getMessage() for r in caplog.records if r.name == "shoesearch.train"] == [
        "train: epoch 2/10: loss 0.2500, val R@1 0.500 (best 0.625, no gain for 1), 40 img/s, 4 s"]
    (row,) = wh.query("SELECT * FROM train_metrics WHERE model_id = 'netvlad-x'").to_pylist()
    assert (row["epoch"], row["loss"], row["val_recall_at_1"], row["val_recall_at_5"]) == (2, 0.25, 0.5, 0.75)
    assert (row["images_per_s"], row["seconds"], row["run_id"]) == (40.0, 3.5, run.run_id)


def add_trained_model(settings, model_id: str, parent_id: str, split: str) -> str:
    """A ``train`` run that wrote the ``models`` row of ``model_id`` (no checkpoint: nothing here loads it)."""
    from warehouse import open_warehouse, start_run
    from warehouse.models_table import model_record

    params = {"split_run_id": split, "photos": "raw", "init_path": f"models/{model_id}.init.pt"}
    with start_run(open_warehouse(settings), step="train", params=params, inputs=[split]) as run:
        run.write("models", [model_record(model_id, "netvlad", settings.train.backbone, f"models/{model_id}.pt",
                                          parent_id, params)])
    return run.run_id


@pytest.fixture(scope="module")
def eval_home(tmp_path_factory, kmeans_home):
    """(settings, split): ``kmeans_home`` plus the rows of ``netvlad-unit`` (from the k-means init),
    ``netvlad-warm`` (warm-started from it) and ``netvlad-elsewhere`` (another split).

    A whole evaluation (three embedders, the report's plot) is left to the e2e set (tests/test_train.py)."""
    from warehouse import open_warehouse
    from warehouse.models_table import model_of_run

    home = tmp_path_factory.mktemp("evaluate") / "home"
    shutil.copytree(kmeans_home[0], home)
    settings, split = load(home), kmeans_home[1]
    kmeans_id = model_of_run(open_warehouse(settings), kmeans_home[2])["model_id"]
    add_trained_model(settings, "netvlad-unit", kmeans_id, split)
    add_trained_model(settings, "netvlad-warm", "netvlad-unit", split)
    add_trained_model(settings, "netvlad-elsewhere", kmeans_id, "split-20260101T000000-cccccc")
    return settings, split


def test_variants_follow_the_models_parent(eval_home):
    from core.errors import ShoesearchError
    from tasks.evaluate import variant_embedders
    from warehouse import open_warehouse

    settings = eval_home[0]
    wh = open_warehouse(settings)
    _, _, cold = variant_embedders(settings, wh, "netvlad-unit", torch.device("cpu"))
    _, params, warm = variant_embedders(settings, wh, "netvlad-warm", torch.device("cpu"))
    assert [v[0] for v in cold] == ["kmeans_init", "trained"] and [v[0] for v in warm] == ["trained"]
    assert params["split_run_id"] == eval_home[1] and all(v[1] == "raw" and v[2] == "netvlad-warm" for v in warm)
    with pytest.raises(ShoesearchError, match="no trained model 'kmeans-"):
        variant_embedders(settings, wh, wh.query("SELECT model_id FROM models WHERE kind = 'kmeans'")
                          .column("model_id")[0].as_py(), torch.device("cpu"))


def test_evaluation_report_is_published_only_inside_a_flow(monkeypatch):
    import prefect.artifacts

    from tasks.evaluate import _artifact

    def publish(**kw):
        raise AssertionError("published outside a flow")

    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", publish)
    assert _artifact("| variant |", "evaluate-1") is None  # outside a flow: nothing to publish to


@pytest.mark.parametrize("call, message", [
    ({"protocol": "shop-to-shop"}, "unknown protocol"),
    ({"protocol": "consumer-to-shop"}, "domain 'user'"),
    ({"compare": ["netvlad-elsewhere"]}, "another split"),
])
def test_evaluation_refuses_what_cannot_be_compared(eval_home, call, message):
    from core.errors import ShoesearchError
    from tasks.evaluate import evaluate

    with pytest.raises(ShoesearchError, match=message):
        evaluate(eval_home[0], "netvlad-unit", **call)


def test_report_markdown_lists_each_variant_with_three_decimals():
    from tasks.evaluate import report_markdown
    from training.data import PhotoSet

    test = PhotoSet(["a#0", "a#1", "b#0"], ["a", "a", "b"], ["x", "y", "z"], ["test"] * 3, ["shop"] * 3,
                    "denoised", "denoise-1")
    rows = [{"variant": v, "photos": "denoised", "protocol": "all-vs-all", "queries": 2, "recall_at_1": r,
             "recall_at_5": 1.0, "recall_at_10": 1.0, "mean_ap": 0.75} for v, r in (("imagenet", 0.5),
                                                                                    ("trained", 2 / 3))]
    lines = report_markdown(rows, test).splitlines()
    assert lines[0] == "Test split: 2 products, 3 photos (denoised); protocol all-vs-all."
    assert lines[-2:] == ["| imagenet | - | 2 | 0.500 | 1.000 | 1.000 | 0.750 |",
                          "| trained | denoised | 2 | 0.667 | 1.000 | 1.000 | 0.750 |"]
