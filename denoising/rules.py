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
``other_product``   drop   the same picture (or a near-identical copy) is in another product whose
                           first photo it is closer to: it is that product's photo (``cross_product``)
``bad_image``       drop   missing, corrupt or unreadable photo: nothing to compare
==================  =====  ==============================================================

A single-photo product keeps its photo (``anchor``). A picture shared by several products (the same
sha1, or copies closer than ``denoise.same_picture_distance``) is kept only where it is closest to the
product's first photo; ties keep it everywhere. The threshold cannot catch another product's photo
(it is a shoe too); this rule, still a distance to a first photo, can — when that product is in the
catalog.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from core.errors import ShoesearchError

KEPT_REASONS = ("anchor", "substitute", "near")
MAX_DISTANCE = 2.0  # between unit vectors


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


def same_pictures(matrix: np.ndarray, radius: float, index_cfg, k: int = 16) -> list[np.ndarray]:
    """For each row of ``matrix`` (unit vectors, one per distinct picture), the other rows closer than
    ``radius``: its near-identical copies. A faiss index of the size-chosen kind finds the ``k`` nearest
    (exact below ``index.exact_max_vectors``); distances are then checked exactly."""
    from index.faiss_build import build_faiss, choose_kind

    n = len(matrix)
    if n < 2:
        return [np.empty(0, dtype=np.int64) for _ in range(n)]
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    index = build_faiss(matrix, choose_kind(n, index_cfg), index_cfg)
    _, neighbours = index.search(matrix, min(k, n))
    out = []
    for i, row in enumerate(neighbours):
        row = row[(row >= 0) & (row != i)]
        close = np.linalg.norm(matrix[row] - matrix[i], axis=1) < radius
        out.append(np.sort(row[close]))
    return out


def claim_shared_pictures(decisions: list[dict], vectors: dict[str, np.ndarray], radius: float,
                          index_cfg) -> list[dict]:
    """The cross-product rule: a kept ``near`` photo whose picture (or a copy of it) is also in another
    product, and is closer to that product's reference photo than to its own, becomes ``other_product``."""
    reference = {d["product_id"]: vectors[d["sha1"]] for d in decisions if d["reason"] in ("anchor", "substitute")}
    sha1s = sorted({d["sha1"] for d in decisions if d["sha1"] in vectors})
    row_of = {s: i for i, s in enumerate(sha1s)}
    products_of: dict[str, set[str]] = defaultdict(set)
    for d in decisions:
        if d["sha1"] in row_of and d["reason"] != "bad_image":
            products_of[d["sha1"]].add(d["product_id"])
    copies = same_pictures(np.stack([vectors[s] for s in sha1s]), radius, index_cfg) if sha1s else []
    out = []
    for d in decisions:
        if d["reason"] == "near":
            own = d["product_id"]
            picture = vectors[d["sha1"]]
            copy_rows = copies[row_of[d["sha1"]]]
            holders = set(products_of[d["sha1"]]).union(*(products_of[sha1s[j]] for j in copy_rows))
            closer = [p for p in holders - {own} if p in reference
                      and np.linalg.norm(picture - reference[p]) < d["distance"]]
            if closer:
                d = {**d, "kept": False, "reason": "other_product"}
        out.append(d)
    return out
