"""The second denoise pass: the rule on constructed vectors, and the step chained in real nightly flow runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.denoise_second import redecide, transferred_threshold
from tests.test_nightly import nightly_catalog  # noqa: F401 - the nightly tests' synthetic shop (a fixture)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def row(image_id: str, product: str, reason: str, distance: float | None, threshold: float = 1.0) -> dict:
    kept = reason in ("anchor", "substitute", "near")
    return {"image_id": image_id, "product_id": product, "reason": reason, "distance": distance,
            "threshold": threshold, "kept": kept, "model_id": "imagenet"}


def test_transferred_threshold_drops_as_many_as_the_first_pass():
    first = np.array([0.2, 0.5, 1.3, 1.5, 0.9])  # two beyond 1.0
    second = np.array([0.9, 0.1, 0.3, 0.2, 0.8])  # the two farthest here: 0.9 and 0.8
    t = transferred_threshold(first, 1.0, second)
    assert (second > t).sum() == 2 and set(np.where(second > t)[0]) == {0, 4}
    assert transferred_threshold(np.array([0.2, 0.3]), 1.0, np.array([1.9, 1.8])) == 2.0  # none dropped: none


def test_second_pass_swaps_what_the_trained_space_ranks_differently():
    # Product "new" (never trained on): ImageNet kept a box photo (b, 0.6) and dropped a sole view (s, 1.2). In the
    # trained space the sole is next to the front view and the box is far: the pass swaps the two decisions.
    # Product "old" (trained on) keeps its first-pass rows, however far its photos are in the trained space.
    front, sole, box, other = unit(1, 0, 0), unit(1, 0.2, 0), unit(0, 1, 0), unit(0, 0, 1)
    rows = [row("n0", "new", "anchor", 0.0), row("s", "new", "far", 1.2), row("b", "new", "near", 0.6),
            row("g", "new", "near", 0.3), row("d", "new", "duplicate", 0.3), row("x", "new", "other_product", 0.2),
            row("o0", "old", "anchor", 0.0), row("o1", "old", "near", 0.4)]
    vectors = {"n0": front, "s": sole, "b": box, "g": unit(1, 0.5, 0), "d": box, "x": box, "o0": front, "o1": other}
    out, threshold = redecide(rows, {"new": front, "old": front}, vectors, {"new"}, "trained-1")
    by_id = {r["image_id"]: r for r in out}
    assert by_id["s"]["kept"] and by_id["s"]["reason"] == "near" and by_id["s"]["model_id"] == "trained-1"
    assert not by_id["b"]["kept"] and by_id["b"]["reason"] == "far"
    assert by_id["g"]["kept"]
    assert by_id["b"]["distance"] == pytest.approx(float(np.linalg.norm(box - front)), abs=1e-6)
    assert sum(not by_id[i]["kept"] for i in ("s", "b", "g")) == 1  # as many far drops as the first pass made
    assert by_id["b"]["threshold"] == threshold < by_id["b"]["distance"]
    for same in ("n0", "d", "x", "o0", "o1"):  # anchors, duplicates, other_product, trained-on products: as they were
        assert by_id[same] == rows[[r["image_id"] for r in rows].index(same)]


def test_second_pass_with_nothing_to_rejudge_changes_nothing():
    rows = [row("o0", "old", "anchor", 0.0), row("o1", "old", "far", 1.4)]
    out, threshold = redecide(rows, {"old": unit(1, 0)}, {"o0": unit(1, 0), "o1": unit(1, 0)}, set(), "m")
    assert out == rows and threshold is None


@pytest.mark.e2e
def test_nightly_chains_the_second_pass_with_the_served_model(prefect_harness, tmp_path, nightly_catalog, monkeypatch):
    """Night 1 serves a trained model (baseline gate off); night 2 re-judges, with it, the products outside its
    train split: a second ``denoise`` run with lineage, equal to an independent computation from the stored
    embeddings, that training, evaluation and the index then read. At the default (off) the flow skips it."""
    from demo_shop.server import DemoShop, load_catalog
    from flows.nightly import nightly
    from tests.test_nightly import NIGHTLY_PRODUCTS, NIGHTLY_SETTINGS
    from warehouse import lineage, open_warehouse

    home = tmp_path / "home"
    monkeypatch.setenv("SHOESEARCH_HOME", str(home))
    overrides = {**NIGHTLY_SETTINGS, "schedule.baseline_gate": False, "denoise.second_pass": True}  # off by default
    with DemoShop(load_catalog(nightly_catalog)[:NIGHTLY_PRODUCTS], page_size=10) as shop:
        first = nightly(site=shop.url, home=str(home), overrides=overrides)
        second = nightly(site=shop.url, home=str(home), overrides=overrides)
    from core.settings import Settings

    wh = open_warehouse(Settings.load(home=home, overrides=overrides))
    assert first["status"] == "current" and pass_of(wh, first["steps"]["denoise"])["pass"] == 1  # nothing served yet
    run_id, model_id = second["steps"]["denoise"], first["model_id"]
    params = pass_of(wh, run_id)
    assert params["pass"] == 2 and params["model_id"] == model_id and model_id.startswith("netvlad")
    first_pass = params["first_run_id"]
    assert pass_of(wh, first_pass)["pass"] == 1
    steps = {r["run_id"]: r["step"] for r in lineage(wh, second["steps"]["index"])}
    assert run_id in steps and first_pass in steps and "train" in steps.values()

    train = {r["product_id"] for r in wh.query("SELECT product_id FROM splits WHERE run_id = ? AND split = 'train'",
                                               [first["steps"]["split"]]).to_pylist()}
    before = {r["image_id"]: r for r in wh.query("SELECT * FROM denoise WHERE run_id = ?", [first_pass]).to_pylist()}
    after = {r["image_id"]: r for r in wh.query("SELECT * FROM denoise_current").to_pylist()}
    assert set(after) == set(before) and 0 < len(train) < len({r["product_id"] for r in after.values()})
    for image_id, r in after.items():
        if r["product_id"] in train or r["reason"] not in ("near", "far"):
            assert (r["kept"], r["reason"], r["distance"]) == (before[image_id]["kept"], before[image_id]["reason"],
                                                              before[image_id]["distance"])
    # Independently: the trained model's stored vectors, distance to photo 0, the first pass's far-drop count.
    ids = wh.query("SELECT image_id, vector FROM embeddings WHERE model_id = ?", [model_id]).to_pylist()
    vec = {r["image_id"]: np.asarray(r["vector"], dtype=np.float32) for r in ids}
    anchor = {r["product_id"]: vec[i] for i, r in before.items() if r["reason"] == "anchor"}
    judged = [i for i, r in before.items() if r["product_id"] not in train and r["reason"] in ("near", "far")]
    assert judged, "the split left no photo to re-judge"
    n_far_first = sum(before[i]["reason"] == "far" for i in judged)
    assert n_far_first > 0, "the first pass dropped none of the re-judged photos: nothing to choose"
    d = {i: float(np.linalg.norm(vec[i] - anchor[before[i]["product_id"]])) for i in judged}
    n_far = sum(before[i]["reason"] == "far" for i in judged)
    assert sum(after[i]["reason"] == "far" for i in judged) == n_far
    assert {i for i in judged if after[i]["reason"] == "far"} == set(sorted(judged, key=d.get)[len(judged) - n_far:])
    assert all(after[i]["distance"] == pytest.approx(d[i], abs=1e-5) for i in judged)
    # Training reads the re-judged photos (denoise_current), and the index holds them.
    kept = sum(r["kept"] for r in after.values())
    index = wh.query("SELECT n_vectors FROM indexes WHERE index_id = ?", [second["index_id"]]).to_pylist()[0]
    assert index["n_vectors"] == kept

    # By hand: the denoise flow chains the second pass too (the served model); at the default (off) it does not.
    from flows.denoise import denoise_flow

    again = denoise_flow(home=str(home), overrides=overrides)
    assert pass_of(wh, again)["pass"] == 2 and pass_of(wh, pass_of(wh, again)["first_run_id"])["pass"] == 1
    assert pass_of(wh, denoise_flow(home=str(home), overrides=NIGHTLY_SETTINGS))["pass"] == 1
    # The command says what each pass did.
    from tests.test_cli_readonly import run_cli

    size = f"embed.image_size={NIGHTLY_SETTINGS['embed.image_size']}"
    res = run_cli("--set", size, "--set", "denoise.second_pass=true", "denoise", cwd=tmp_path, home=home, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    first_line, second_line, report = res.stdout.strip().splitlines()[-3:]
    assert "kept" in first_line and f"second pass with {model_id}" in second_line and report.startswith("report:")
    assert first_line.split(":")[0] in report


def pass_of(wh, run_id: str) -> dict:
    """A denoise run's parameters, with ``pass`` (1 unless the run says 2)."""
    params = json.loads(wh.query("SELECT parameters FROM runs WHERE run_id = ?", [run_id]).column(0)[0].as_py())
    return {"pass": 1, **params}
