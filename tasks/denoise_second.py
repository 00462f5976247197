"""Second denoise pass: a trained model's descriptors re-judge the products it never trained on.

The first pass (``tasks.denoise``) compares ImageNet descriptors, which tell a shoe from a box but not one
shoe from another. A trained model's descriptors separate gallery noise better on products it never saw
(``bench/realshop.py``, last table) but worse on the ones it trained on: the first pass's leftover noise was
trained on as positives and now sits close to photo 0. So the second pass

* re-judges only the products outside the training splits of the model and its warm-start ancestors
  (val/test products, products new since it trained) and copies the first pass's decisions for the rest;
* keeps the design card's rule (distance to the product's first photo), in the trained space;
* needs no labels and no new setting for its threshold: it drops, among the re-judged products' candidate
  photos, as many as the first pass's threshold did (:func:`transferred_threshold`). The trained descriptors
  choose *which* photos are far; the ImageNet threshold, chosen on real catalogs, says how many.

Anchors, duplicates, unreadable photos and the cross-product rule's ``other_product`` drops (a question of
picture identity, decided on ImageNet copies) are carried over. The result is a new ``denoise`` run (params
``pass = 2``, inputs: the first-pass run, the model's train run, the embed run), so ``denoise_current`` and
everything downstream use it. The ``denoise`` flow (by hand, and inside ``nightly``) chains it after every
first pass when ``denoise.second_pass`` is on and a trained model serves.
"""

from __future__ import annotations

import json

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from core.errors import ShoesearchError
from denoising.rules import threshold_for_drop_rate
from embedding.vectors import embed_images, load_embeddings
from index.store import served_trained_model
from warehouse import open_warehouse, start_run
from warehouse.models_table import TRAINED, find_model, model_params, model_row

JUDGED = ("near", "far")  # first-pass reasons the threshold decided: the only rows a second pass re-decides


# --- the math: small pure functions ------------------------------------------------------------
def transferred_threshold(first: np.ndarray, first_threshold: float, second: np.ndarray) -> float:
    """The threshold on ``second`` distances that drops as many candidates as ``first_threshold`` dropped of
    ``first`` (the same photos' distances in the first pass's space); 2.0 (drop none) when it dropped none."""
    n_far = int((np.asarray(first) > first_threshold).sum())
    if n_far == 0 or len(second) == 0:
        return 2.0
    return threshold_for_drop_rate(np.asarray(second), n_far / len(second))


def redecide(rows: list[dict], anchors: dict[str, np.ndarray], vectors: dict[str, np.ndarray],
             judged_products: set[str], model_id: str) -> tuple[list[dict], float | None]:
    """Second-pass decisions for first-pass ``rows`` (one per photo, with image_id, product_id, distance,
    threshold, reason); ``anchors``: product -> its reference photo's trained vector; ``vectors``: image_id ->
    trained vector. Returns (rows, threshold in the trained space; None when nothing was re-judged)."""
    todo = [i for i, r in enumerate(rows) if r["product_id"] in judged_products and r["reason"] in JUDGED
            and r["product_id"] in anchors and r["image_id"] in vectors]
    if not todo:
        return [dict(r) for r in rows], None
    first = np.array([rows[i]["distance"] for i in todo], dtype=np.float64)
    second = np.linalg.norm(np.stack([vectors[rows[i]["image_id"]] for i in todo])
                            - np.stack([anchors[rows[i]["product_id"]] for i in todo]), axis=1).astype(np.float64)
    threshold = transferred_threshold(first, float(rows[todo[0]]["threshold"]), second)
    out = [dict(r) for r in rows]
    for i, d in zip(todo, second):
        near = bool(d <= threshold)
        out[i].update(distance=float(d), threshold=threshold, kept=near, reason="near" if near else "far",
                      model_id=model_id)
    return out, threshold


# --- reading the warehouse ---------------------------------------------------------------------
def trained_products(wh, model_id: str) -> set[str]:
    """Products in the train split of ``model_id`` and of every warm-start ancestor it continued from."""
    products: set[str] = set()
    row, seen = find_model(wh, model_id), set()
    while row is not None and row["kind"] == TRAINED and row["model_id"] not in seen:
        seen.add(row["model_id"])
        split_run = model_params(row).get("split_run_id")
        if split_run:
            products |= {r["product_id"] for r in wh.query(
                "SELECT product_id FROM splits WHERE run_id = ? AND split = 'train'", [split_run]).to_pylist()}
        row = find_model(wh, row["parent_model_id"])
    return products


def first_pass_run(wh, run_id: str | None) -> dict:
    """The first-pass denoise run to start from: ``run_id``, else the newest one; a second-pass run given
    here resolves to its own first pass (passes never compound)."""
    runs = wh.query("SELECT run_id, parameters FROM runs WHERE step = 'denoise' AND status = 'success' "
                    "AND (? IS NULL OR run_id = ?) ORDER BY finished_at DESC", [run_id, run_id]).to_pylist()
    for run in runs:
        params = json.loads(run["parameters"] or "{}")
        if params.get("pass", 1) == 1:
            return {"run_id": run["run_id"], "params": params}
        return first_pass_run(wh, params["first_run_id"])
    raise ShoesearchError(f"no denoise run {run_id}" if run_id
                          else "no denoise run yet: run `shoesearch denoise` first")


# --- the step ----------------------------------------------------------------------------------
def second_pass(settings, model_id: str, first_run_id: str | None = None) -> str:
    """Re-judge the products ``model_id`` never trained on with its descriptors; returns the new denoise run id."""
    wh = open_warehouse(settings)
    model = model_row(wh, model_id, TRAINED)
    first = first_pass_run(wh, first_run_id)
    rows = wh.query("SELECT d.* EXCLUDE (run_id) FROM denoise d JOIN images_current i ON i.image_key = d.image_key "
                    "AND i.sha1 IS NOT DISTINCT FROM d.sha1 WHERE d.run_id = ? ORDER BY d.image_id",
                    [first["run_id"]]).to_pylist()
    embed_run = embed_images(settings, model_id)
    ids, matrix = load_embeddings(wh, model_id)
    vectors = dict(zip(ids, matrix))
    anchors = {r["product_id"]: vectors[r["image_id"]] for r in rows
               if r["reason"] in ("anchor", "substitute") and r["image_id"] in vectors}
    judged = {r["product_id"] for r in rows} - trained_products(wh, model_id)
    decided, threshold = redecide(rows, anchors, vectors, judged, model_id)
    changed = sum(a["kept"] != b["kept"] for a, b in zip(rows, decided))
    params = {"pass": 2, "first_run_id": first["run_id"], "model_id": model_id, "threshold": threshold,
              "first_threshold": first["params"].get("threshold"), "judged_products": len(judged),
              "changed": changed}
    with start_run(wh, step="denoise", params=params, inputs=[first["run_id"], model["run_id"], embed_run]) as run:
        run.write("denoise", decided)
        run.message = (f"second pass with {model_id}: re-judged {len(judged)} products it never trained on"
                       + (f" at {threshold:.4f}" if threshold is not None else "")
                       + f"; {changed} decisions changed, kept {sum(r['kept'] for r in decided)} of {len(decided)}")
    return run.run_id


second_pass_task = task(second_pass, name="denoise-second-pass", cache_policy=NONE)
served_trained_model_task = task(served_trained_model, name="served-trained-model", cache_policy=NONE)
