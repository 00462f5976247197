"""Step ``denoise``: a kept/dropped decision for every current photo, as a warehouse run.

The rules (distance to the product's first photo, duplicates, pictures of another product) and their
reasons are ``denoising.rules``: small pure functions. This step reads the photos and their vectors
(embedding the missing ones first), applies the rules and commits one ``denoise`` row per photo. Nothing is
deleted: later steps read kept photos through the ``denoise_current`` view, so a rerun with another
threshold is just a new run.
"""

from __future__ import annotations

from collections import defaultdict

from prefect import task
from prefect.cache_policies import NONE

from core.errors import ShoesearchError
from core.finite import require_finite
from core.progress import run_logger
from denoising.rules import (
    MAX_DISTANCE,
    apply_threshold,
    candidate_distances,
    claim_shared_pictures,
    decide_product,
    threshold_for_drop_rate,
)
from embedding.embedders import model_id_of
from embedding.vectors import embed_images, load_embeddings
from warehouse import open_warehouse, start_run


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
        raise ShoesearchError("no product photos yet: crawl or ingest a catalog first")
    model_id = model_id_of(settings, model_spec)
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
    if settings.denoise.cross_product:
        decisions = claim_shared_pictures(decisions, by_sha1, settings.denoise.same_picture_distance, settings.index)
    params = {"threshold": threshold, "cross_product": settings.denoise.cross_product, "drop_rate": drop_rate,
              "calibrated": drop_rate is not None, "model_spec": model_spec, "model_id": model_id}
    inputs = [embed_run_id, *sorted({p["run_id"] for p in photos})]
    rows = [{"image_id": d["image_id"], "product_id": d["product_id"], "position": d["position"],
             "sha1": d["sha1"], "distance": d["distance"], "threshold": threshold, "kept": d["kept"],
             "reason": d["reason"], "model_id": model_id} for d in decisions]
    require_finite("denoise: distances", [r["distance"] for r in rows if r["distance"] is not None])  # never "far"
    with start_run(wh, step="denoise", params=params, inputs=inputs) as run:
        run.write("denoise", rows)
        kept = sum(r["kept"] for r in rows)
        how = f"calibrated for drop rate {drop_rate:g}" if drop_rate is not None else "given"
        claimed = sum(r["reason"] == "other_product" for r in rows)
        run.message = (f"threshold {threshold:.4f} ({how}): kept {kept} of {len(rows)} photos"
                       + (f"; {claimed} given to another product" if claimed else ""))
    reasons = defaultdict(int)
    for r in rows:
        reasons[r["reason"]] += 0 if r["kept"] else 1
    dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()) if n) or "none"
    run_logger("denoise").info("denoise %s: %s (dropped: %s)", run.run_id, run.message, dropped)
    return run.run_id


denoise_task = task(denoise, name="denoise", cache_policy=NONE)
