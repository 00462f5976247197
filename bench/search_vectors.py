"""Benchmark vectors shaped like real descriptors, for ``bench/search.py``: fit on a real catalog, generate 1M.

Real descriptors (the trained model's output, what the index stores) are not isotropic: a few directions carry
most of the variance, every photo shares a large common component, and each product is a tight bunch of ~4-5
views among look-alike products. That is what makes approximate search lose neighbours, and what synthetic
Gaussian clusters miss. ``fit_stats`` measures it on real descriptors, in their principal axes:

* ``mean_norm``: length of the mean descriptor (the component all photos share);
* ``between_var`` / ``within_var``: per principal axis, the variance of product means (what tells products
  apart) and of photos around their product (viewpoint, background);
* ``family_share``: the fraction of the between-product variance that look-alike products share (several
  colourways of one model), fitted so that a same-size synthetic catalog has the real nearest-other-product
  similarity;
* ``spread_quantiles``: how much each product's own spread varies (relative RMS, quantiles);
* ``photos_per_product``: the histogram of photos per product.

``generate`` draws a catalog from those statistics: families -> products -> photos, rotated into random
coordinates (the real descriptor's axes are not its principal axes either: its covariance is far from diagonal)
and L2-normalised, as the index sees them. ``queries`` draws new photos of cataloged products. The committed
statistics (``search_vectors.json``, a few KB) were fitted on the trained model's descriptors of
``../shared/data/footwear-dev``; ``bench/search.py --refit MODEL.pt`` refits them from a model checkpoint and a
catalog folder (which stays outside the project).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

STATS = Path(__file__).resolve().parent / "search_vectors.json"
FAMILY_SIZE = 4  # mean products per look-alike family (a model line in a few colourways)
CHUNK = 100_000  # rows generated at a time (whole products)


def load_stats(path: Path = STATS) -> dict:
    return json.loads(Path(path).read_text())


def embed_catalog(catalog: Path, checkpoint: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """The trained model's descriptors of every photo in ``catalog`` (``labels.csv``: image, group_id)."""
    import torch

    from models.netvlad_model import load_trained_embedder
    from photos.transforms import preprocess_path

    with open(catalog / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    embedder = load_trained_embedder(checkpoint, checkpoint.stem)
    out = []
    for start in range(0, len(rows), 32):
        x = torch.stack([preprocess_path(catalog / r[0], embedder.image_size, embedder.mean, embedder.std)
                         for r in rows[start:start + 32]])
        out.append(embedder(x).float().numpy())
    return np.concatenate(out), [r[1] for r in rows], [r[0] for r in rows]


def fit_stats(x: np.ndarray, groups: list[str], source: str) -> dict:
    """Spectrum and product structure of real descriptors ``x`` (n x d, L2-normalised), see the module doc."""
    x = np.asarray(x, dtype=np.float64)
    _, product = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.bincount(product)
    means = np.stack([x[product == p].mean(0) for p in range(len(counts))])
    resid = x - means[product]
    _, axes = np.linalg.eigh(np.cov(x.T))
    axes = axes[:, ::-1]  # principal axes, largest variance first
    centred = (means - x.mean(0)) @ axes
    # product means of k photos carry 1/k of the within variance: take it out of the between estimate
    within = (resid @ axes) ** 2
    within_var = within.sum(0) / (len(x) - len(counts))
    between_var = np.maximum(centred.var(0) - within_var * np.mean(1 / counts), 0.0)
    # each photo's distance to its product, relative (k/(k-1) undoes the mean's pull towards the photo)
    spread = np.sqrt(within.sum(1) * (counts / (counts - 1))[product] / within_var.sum())
    stats = {"source": source, "photos": len(x), "products": len(counts), "dim": x.shape[1],
             "mean_norm": float(np.linalg.norm(x.mean(0))),
             "photos_per_product": {str(k): int(v) for k, v in enumerate(np.bincount(counts)) if v},
             "spread_quantiles": _round(np.quantile(spread[counts[product] > 1], np.linspace(0, 1, 21))),
             "between_var": _round(between_var), "within_var": _round(within_var), "view_share": 0.0,
             "family_share": 0.0}
    stats["real"] = neighbour_stats(x.astype(np.float32), product)
    stats["view_share"], stats["family_share"] = _fit_shares(stats)
    stats["synthetic"] = _synthetic(stats, 100)
    return stats


def _round(a) -> list[float]:
    return [float(f"{v:.4g}") for v in np.asarray(a, dtype=np.float64)]


def _synthetic(stats: dict, seed: int) -> dict:
    """``neighbour_stats`` of a synthetic catalog as large as the real one."""
    x, product, _ = generate(stats, stats["photos"], np.random.default_rng(seed))
    return neighbour_stats(x, product)


def _fit_shares(stats: dict) -> tuple[float, float]:
    """The view and family shares whose same-size synthetic catalogs (median of 3) have the real median best
    same-product and best other-product similarities."""
    real, best = stats["real"], (np.inf, 0.0, 0.0)
    for view in np.linspace(0.0, 0.9, 10):
        for family in np.linspace(0.0, 0.9, 10):
            trial = {**stats, "view_share": float(view), "family_share": float(family)}
            got = [_synthetic(trial, seed) for seed in range(3)]
            miss = sum(abs(np.median([g[key] for g in got]) - real[key]) for key in ("right_median", "wrong_median"))
            best = min(best, (miss, round(float(view), 3), round(float(family), 3)))
    return best[1], best[2]


def neighbour_stats(x: np.ndarray, product: np.ndarray) -> dict:
    """Median best same-product and best other-product cosine of each photo, and product Recall@1 (small n)."""
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    same = product[:, None] == product[None, :]
    right = np.where(same, sim, -np.inf).max(1)
    wrong = np.where(~same, sim, -np.inf).max(1)
    ok = np.isfinite(right)
    return {"right_median": round(float(np.median(right[ok])), 4), "wrong_median": round(float(np.median(wrong)), 4),
            "recall_at_1": round(float(np.mean(product[sim.argmax(1)] == product)), 4)}


class Catalog:
    """Products drawn from fitted statistics; ``photos`` and ``queries`` draw photos of them."""

    def __init__(self, stats: dict, n_products: int, rng: np.random.Generator):
        d = stats["dim"]
        self.rng = rng
        self.rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        self.offset = np.zeros(d, np.float32)
        self.offset[0] = stats["mean_norm"]  # along a random direction once rotated
        between = np.asarray(stats["between_var"], np.float32)
        self.within_sd = np.sqrt(np.asarray(stats["within_var"], np.float32))
        share = stats["family_share"]
        n_families = max(1, n_products // FAMILY_SIZE)
        families = np.sqrt(share * between) * rng.standard_normal((n_families, d), dtype=np.float32)
        self.centres = families[rng.integers(0, n_families, n_products)] + \
            np.sqrt((1 - share) * between) * rng.standard_normal((n_products, d), dtype=np.float32)
        self.spread_quantiles = np.asarray(stats["spread_quantiles"], np.float32)
        self.view_share = stats["view_share"]  # photos of a product along its own direction (a turntable)
        views = rng.standard_normal((n_products, d), dtype=np.float32) * self.within_sd
        self.views = views / np.sqrt((views ** 2).sum(1, keepdims=True) / (self.within_sd ** 2).sum())

    def photos(self, product: np.ndarray) -> np.ndarray:
        """One new photo of each product in ``product`` (ids), L2-normalised, rotated, float32."""
        noise = self.rng.standard_normal((len(product), len(self.within_sd)), dtype=np.float32)
        q = self.spread_quantiles
        spread = np.interp(self.rng.random(len(product)), np.linspace(0, 1, len(q)), q).astype(np.float32)
        view = self.rng.standard_normal((len(product), 1), dtype=np.float32) * self.views[product]
        within = np.sqrt(1 - self.view_share) * self.within_sd * noise + np.sqrt(self.view_share) * view
        z = self.offset + self.centres[product] + spread[:, None] * within
        z = z @ self.rotation
        return np.ascontiguousarray(z / np.linalg.norm(z, axis=1, keepdims=True), dtype=np.float32)


def photo_counts(stats: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """Photos per product, drawn from the fitted histogram, for ``n`` photos in all."""
    hist = {int(k): v for k, v in stats["photos_per_product"].items()}
    sizes, weights = np.array(list(hist)), np.array(list(hist.values()), float)
    counts = rng.choice(sizes, size=n // max(1, int(sizes.min())) + 1, p=weights / weights.sum())
    end = int(np.searchsorted(np.cumsum(counts), n))
    counts = counts[:end + 1].copy()
    counts[-1] -= int(counts.sum()) - n
    return counts[counts > 0]


def generate(stats: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Catalog]:
    """``n`` gallery photos (float32, n x dim), their product ids, and the catalog (to draw queries from)."""
    counts = photo_counts(stats, n, rng)
    catalog = Catalog(stats, len(counts), rng)
    product = np.repeat(np.arange(len(counts)), counts)
    out = np.empty((n, stats["dim"]), np.float32)
    for start in range(0, n, CHUNK):
        out[start:start + CHUNK] = catalog.photos(product[start:start + CHUNK])
    return out, product, catalog


def queries(catalog: Catalog, n: int) -> np.ndarray:
    """``n`` new photos of random cataloged products (a shopper's photo of a product the shop sells)."""
    return catalog.photos(catalog.rng.integers(0, len(catalog.centres), n))
