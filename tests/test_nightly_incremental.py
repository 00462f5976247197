"""Issue 27: the nightly's work grows with what changed. With few products added or removed since the serving
model was trained, the nightly trains nothing, embeds only the new photos and updates the index in place of a
rebuild; search finds the new products and no longer the removed ones."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.test_nightly import NIGHTLY_IMAGE_SIZE, NIGHTLY_SETTINGS

pytestmark = pytest.mark.e2e
BASE_PRODUCTS, ADDED, REMOVED = 12, 5, 2
# Changes count from the model's training split: 5 new products on 12 is 42 %, then 2 removed makes 58 %: above
# the default retrain_change (10 %, which the test checks it would retrain at) and below this test's 75 %, so the
# small catalog the test can afford exercises the no-train path; likewise the index's delta (default 20 % of the
# full build, tests/test_index_incremental.py; here 90 %).
OVERRIDES = {**NIGHTLY_SETTINGS, "schedule.retrain_change": 0.75, "index.max_delta_fraction": 0.9}


def _folder(src, dst, products: list[str]):
    """A catalog folder holding only ``products`` of ``src`` (their labels and metadata too)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in products:
        shutil.copytree(src / name, dst / name)
    meta = json.loads((src / "products.json").read_text())
    (dst / "products.json").write_text(json.dumps({k: v for k, v in meta.items() if k in products}))
    lines = (src / "labels.csv").read_text().splitlines()
    (dst / "labels.csv").write_text("\n".join([lines[0]] + [line for line in lines[1:]
                                                            if line.split("/", 1)[0] in products]) + "\n")
    return dst


def _runs(wh, step: str) -> list[dict]:
    return wh.query("SELECT run_id, parameters, message FROM runs WHERE step = ? AND status = 'success' "
                    "ORDER BY finished_at", [step]).to_pylist()


def _top(settings, photo) -> str:
    from serving.search import search

    return search(settings, photo, k=1)[0].product_id


def test_a_night_with_few_changes_trains_nothing_and_updates_the_index(prefect_harness, tmp_path, monkeypatch):
    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from flows.nightly import nightly
    from tasks.ingest import ingest_catalog
    from tasks.nightly import retrain_decision
    from warehouse import open_warehouse

    home = tmp_path / "home"
    monkeypatch.setenv("SHOESEARCH_HOME", str(home))
    full = generate_catalog(tmp_path / "all", BASE_PRODUCTS + ADDED, noise_rate=0.0, seed=3,
                            image_size=NIGHTLY_IMAGE_SIZE)
    names = sorted(p.name for p in full.iterdir() if p.is_dir())
    settings = Settings.load(home=home, overrides=OVERRIDES)
    ingest_catalog(settings, _folder(full, tmp_path / "shop", names[:BASE_PRODUCTS]), name="shop")
    first = nightly(crawl=False, home=str(home), overrides=OVERRIDES)
    wh = open_warehouse(settings)
    assert first["status"] == "current" and "train" in first["steps"]

    ingest_catalog(settings, _folder(full, tmp_path / "shop", names), name="shop")  # 5 products more
    assert retrain_decision(Settings.load(home=home))["train"]  # the default 10 % would retrain
    embeds_before = len(_runs(wh, "embed"))
    second = nightly(crawl=False, home=str(home), overrides=OVERRIDES)
    assert "train" not in second["steps"] and second["training"].startswith("no training: 5 products added")
    assert len(_runs(wh, "train")) == 1
    new_photos = sum(len(list((full / n).glob("*.jpg"))) for n in names[BASE_PRODUCTS:])
    embedded = [json.loads(r["parameters"])["to_embed"] for r in _runs(wh, "embed")[embeds_before:]]
    # The ImageNet embedding (denoise) takes exactly the new photos; the served model's (the index) at most those
    # (none more when the ImageNet descriptor serves: those vectors are already there).
    assert embedded[0] == new_photos and all(n <= new_photos for n in embedded[1:])
    index = wh.query("SELECT * FROM indexes WHERE index_id = ? AND status = 'built'",
                     [second["index_id"]]).to_pylist()[0]
    assert index["note"].startswith(f"incremental on {first['index_id']}: +")
    for name in names[BASE_PRODUCTS:]:
        assert _top(settings, sorted((full / name).glob("*.jpg"))[0]) == f"shop:{name}"

    gone = names[:REMOVED]
    ingest_catalog(settings, _folder(full, tmp_path / "shop", names[REMOVED:]), name="shop")
    third = nightly(crawl=False, home=str(home), overrides=OVERRIDES)
    assert "train" not in third["steps"] and "2 removed" in third["training"]
    note = wh.query("SELECT note FROM indexes WHERE index_id = ? AND status = 'built'", [third["index_id"]]).to_pylist()[0]["note"]
    assert note.startswith(f"incremental on {second['index_id']}: +0 / -")
    for name in gone:
        assert _top(settings, sorted((full / name).glob("*.jpg"))[0]) not in {f"shop:{n}" for n in gone}
    assert _top(settings, sorted((full / names[-1]).glob("*.jpg"))[0]) == f"shop:{names[-1]}"
