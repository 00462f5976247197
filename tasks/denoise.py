"""Denoise: drop product photos that do not look like the product's first photo.

For every product, each photo's L2-normalised ImageNet embedding is compared with the embedding
of the product's first photo (position 0, the main shot) by Euclidean distance; photos farther
than the threshold are dropped. Nothing is deleted: the decision for every current photo goes to
the ``denoise`` table, and later steps read kept photos through the ``denoise_current`` view, so a
rerun with another threshold is just a new run.

Reasons (one per photo):

==================  =====  ==============================================================
``anchor``          kept   the product's first photo: the reference (distance 0)
``substitute``      kept   photo 0 is missing/corrupt: the first usable photo is the reference
``near``            kept   distance to the reference <= threshold
``far``             drop   distance > threshold: noise (insole, size chart, box, other product)
``duplicate``       drop   the same picture (sha1) as an earlier photo of the same product
``bad_image``       drop   missing, corrupt or unreadable photo: nothing to compare
==================  =====  ==============================================================

A single-photo product keeps its photo (``anchor``). A photo shared by several products is
judged in each product on its own.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from core.errors import ShoesearchError
from serving.embedders import open_embedder
from tasks.embed import embed_images, load_embeddings
from warehouse import open_warehouse, start_run

KEPT_REASONS = ("anchor", "substitute", "near")
MAX_DISTANCE = 2.0  # between unit vectors


# --- the math: small pure functions ------------------------------------------------------------
def distances_to(reference: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of ``vectors`` to ``reference`` (both L2-normalised)."""
    return np.linalg.norm(vectors - reference[None, :], axis=1)


def threshold_for_drop_rate(distances: np.ndarray, drop_rate: float) -> float:
    """The threshold that drops the ``drop_rate`` fraction of ``distances`` with the largest values."""
    if not 0.0 <= drop_rate < 1.0:
        raise ShoesearchError(f"drop rate must be in [0, 1), got {drop_rate}")
    if len(distances) == 0:
        raise ShoesearchError("no photo distances to calibrate on: products need at least two usable photos")
    ordered = np.sort(np.asarray(distances, dtype=np.float64))
    n_drop = int(round(drop_rate * len(ordered)))
    return float(ordered[len(ordered) - n_drop - 1])


def decide_product(photos: list[dict], vectors: dict[str, np.ndarray], threshold: float) -> list[dict]:
    """Decisions for one product's photos (dicts with image_id, position, sha1, status).

    Returns one dict per photo: distance (None when undecidable), kept, reason.
    """
    photos = sorted(photos, key=lambda p: p["position"])
    usable = [p for p in photos if p["status"] == "ok" and p["sha1"] in vectors]
    usable_ids = {p["image_id"] for p in usable}
    reference = usable[0] if usable else None
    first_position = photos[0]["position"] if photos else None
    seen: set[str] = set()
    out = []
    for p in photos:
        if p["image_id"] not in usable_ids:
            out.append({"distance": None, "kept": False, "reason": "bad_image"})
            continue
        if p is reference:
            reason = "anchor" if p["position"] == first_position else "substitute"
            out.append({"distance": 0.0, "kept": True, "reason": reason})
        else:
            d = float(distances_to(vectors[reference["sha1"]], vectors[p["sha1"]][None, :])[0])
            if p["sha1"] in seen:
                out.append({"distance": d, "kept": False, "reason": "duplicate"})
            else:
                near = d <= threshold
                out.append({"distance": d, "kept": near, "reason": "near" if near else "far"})
        seen.add(p["sha1"])
    return [{**p, **decision} for p, decision in zip(photos, out)]


def candidate_distances(decisions: list[dict]) -> np.ndarray:
    """Distances that the threshold decides on (not references, duplicates or bad photos)."""
    return np.array([d["distance"] for d in decisions if d["reason"] in ("near", "far")], dtype=np.float64)


def apply_threshold(decisions: list[dict], threshold: float) -> list[dict]:
    """Re-decide near/far rows for a new threshold."""
    out = []
    for d in decisions:
        if d["reason"] in ("near", "far"):
            near = d["distance"] <= threshold
            d = {**d, "kept": near, "reason": "near" if near else "far"}
        out.append(d)
    return out


# --- the step ----------------------------------------------------------------------------------
def choose_threshold(settings, threshold: float | None, drop_rate: float | None) -> tuple[float | None, float | None]:
    """(absolute threshold, drop rate): explicit arguments win over settings; never both."""
    if threshold is not None and drop_rate is not None:
        raise ShoesearchError("give either a threshold or a drop rate, not both")
    if threshold is None and drop_rate is None:
        drop_rate = settings.denoise.drop_rate
        threshold = None if drop_rate is not None else settings.denoise.threshold
    if threshold is not None and not 0.0 <= threshold <= MAX_DISTANCE:
        raise ShoesearchError(f"threshold is a distance between unit vectors: it must be in [0, 2], got {threshold}")
    if drop_rate is not None and not 0.0 <= drop_rate < 1.0:
        raise ShoesearchError(f"drop rate must be in [0, 1), got {drop_rate}")
    return threshold, drop_rate


def denoise(settings, threshold: float | None = None, drop_rate: float | None = None,
            model_spec: str | None = None, embed_run_id: str | None = None) -> str:
    """Decide kept/dropped for every current photo; returns the denoise run id.

    Photos not yet embedded by the model are embedded first (incremental, cheap when none are).
    With ``drop_rate`` the threshold is calibrated as that quantile of the distances.
    """
    threshold, drop_rate = choose_threshold(settings, threshold, drop_rate)
    wh = open_warehouse(settings)
    photos = wh.query(
        "SELECT image_id, product_id, position, sha1, status, run_id FROM images_current ORDER BY image_id"
    ).to_pylist()
    if not photos:
        raise ShoesearchError("no product photos yet: crawl or ingest a catalogue first")
    model_id = open_embedder(settings, model_spec).model_id
    if embed_run_id is None:
        embed_run_id = embed_images(settings, model_spec)
    ids, matrix = load_embeddings(wh, model_id)
    by_sha1 = {}
    image_sha1 = {p["image_id"]: p["sha1"] for p in photos}
    for image_id, vec in zip(ids, matrix):
        by_sha1[image_sha1[image_id]] = vec
    products: dict[str, list[dict]] = defaultdict(list)
    for p in photos:
        products[p["product_id"]].append(p)
    decisions = [d for group in products.values()
                 for d in decide_product(group, by_sha1, threshold if threshold is not None else MAX_DISTANCE)]
    if drop_rate is not None:
        threshold = threshold_for_drop_rate(candidate_distances(decisions), drop_rate)
        decisions = apply_threshold(decisions, threshold)
    params = {"threshold": threshold, "drop_rate": drop_rate, "calibrated": drop_rate is not None,
              "model_spec": model_spec, "model_id": model_id}
    inputs = [embed_run_id, *sorted({p["run_id"] for p in photos})]
    rows = [{"image_id": d["image_id"], "product_id": d["product_id"], "position": d["position"],
             "sha1": d["sha1"], "distance": d["distance"], "threshold": threshold, "kept": d["kept"],
             "reason": d["reason"], "model_id": model_id} for d in decisions]
    with start_run(wh, step="denoise", params=params, inputs=inputs) as run:
        run.write("denoise", rows)
        kept = sum(r["kept"] for r in rows)
        how = f"calibrated for drop rate {drop_rate:g}" if drop_rate is not None else "given"
        run.message = f"threshold {threshold:.4f} ({how}): kept {kept} of {len(rows)} photos"
    return run.run_id


denoise_task = task(denoise, name="denoise", cache_policy=NONE)
