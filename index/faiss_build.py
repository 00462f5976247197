"""faiss index construction: the kind by size, IVF-PQ / HNSW parameters, GPU build, recall vs exact.

Vectors are L2-normalised, so inner product = cosine similarity. The kind is chosen by size: exact
inner product up to ``index.exact_max_vectors``, then IVF-PQ (with SQ8 refinement) or HNSW. Training
and adding run on a GPU when faiss-gpu and a GPU are both present; the stored index is always a CPU
index. Pure functions over numpy arrays: no warehouse, no files.
"""

from __future__ import annotations

import math

import numpy as np

from core.errors import ShoesearchError

KINDS = ("flat_ip", "ivfpq", "hnsw")
PQ_MIN_POINTS_PER_CODEWORD = 39  # faiss' k-means minimum per centroid (it warns below)


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA runtime means "no GPU", not a failed build
        return 0


def choose_kind(n_vectors: int, cfg) -> str:
    """``flat_ip`` up to ``cfg.exact_max_vectors``, else ``cfg.approximate`` (ivfpq | hnsw).

    IVF-PQ needs enough vectors to train its 2**pq_bits codewords; below that, search stays exact.
    """
    if cfg.approximate not in ("ivfpq", "hnsw"):
        raise ShoesearchError(f"index.approximate must be 'ivfpq' or 'hnsw', got {cfg.approximate!r}")
    if n_vectors <= cfg.exact_max_vectors:
        return "flat_ip"
    if cfg.approximate == "ivfpq" and n_vectors < PQ_MIN_POINTS_PER_CODEWORD * 2 ** cfg.pq_bits:
        return "flat_ip"
    return cfg.approximate


def ivf_lists(n_vectors: int, cfg) -> int:
    """Number of IVF cells: the setting, or ~4*sqrt(n) (faiss guideline), with >= 39 training points each."""
    if cfg.ivf_lists > 0:
        return cfg.ivf_lists
    return max(1, min(int(4 * math.sqrt(n_vectors)), min(n_vectors, cfg.train_sample) // 39))


def pq_subquantizers(dim: int, pq_bytes: int) -> int:
    """The largest divisor of ``dim`` not above ``pq_bytes`` (PQ needs dim % m == 0)."""
    for m in range(min(pq_bytes, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _train_sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    if len(vectors) <= size:
        return vectors
    rng = np.random.default_rng(seed)
    return vectors[np.sort(rng.choice(len(vectors), size, replace=False))]


def build_faiss(vectors: np.ndarray, kind: str, cfg, use_gpu: bool | None = None, seed: int = 0):
    """Build (train + add) a faiss inner-product index of ``kind`` over ``vectors`` (n x d float32).

    ``use_gpu=None`` uses a GPU when faiss-gpu sees one. Returns a CPU index.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "flat_ip":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        m = pq_subquantizers(dim, cfg.pq_bytes)
        index = faiss.IndexIVFPQ(quantizer, dim, ivf_lists(n, cfg), m, cfg.pq_bits, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = cfg.nprobe
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.hnsw.efSearch = cfg.hnsw_ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}; kinds: {', '.join(KINDS)}")

    gpu = (gpu_count() > 0) if use_gpu is None else use_gpu
    sample = _train_sample(vectors, cfg.train_sample, seed)
    if gpu and kind != "hnsw":  # faiss has no GPU HNSW; IVF-PQ and flat train/add on the GPU
        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True  # 64 PQ sub-quantizers need fp16 lookup tables to fit shared memory
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
        if not gpu_index.is_trained:
            gpu_index.train(sample)
        gpu_index.add(vectors)
        index = faiss.index_gpu_to_cpu(gpu_index)
    else:
        if not index.is_trained:
            index.train(sample)
        index.add(vectors)
    if kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = cfg.nprobe
        if cfg.refine:
            index = _with_refinement(index, vectors, sample, cfg)
    return index


def _with_refinement(base, vectors: np.ndarray, sample: np.ndarray, cfg):
    """Re-rank ``refine_factor * k`` PQ candidates with finer codes (``cfg.refine``, e.g. SQ8 or Flat)."""
    import faiss

    refine = faiss.index_factory(vectors.shape[1], cfg.refine, faiss.METRIC_INNER_PRODUCT)
    if not refine.is_trained:
        refine.train(sample)
    refine.add(vectors)
    index = faiss.IndexRefine(base, refine)
    index.k_factor = cfg.refine_factor
    index.own_fields = True  # the refine index frees its parts; Python must not free them too
    base.this.disown()
    refine.this.disown()
    return index


def recall_vs_exact(index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-``k`` (inner product over ``vectors``) that ``index`` also returns."""
    import faiss

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    hits = [len(set(t[t >= 0]) & set(f[f >= 0])) / k for t, f in zip(truth, found)]
    return float(np.mean(hits)) if hits else 1.0


def sample_queries(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Up to ``size`` stored vectors to use as recall queries (photos searching for themselves)."""
    return _train_sample(vectors, size, seed)


# Match levels: what a search result's score means (``match_levels``; docs/search-and-api.md "Match levels").
SAME_PRECISION = 0.95  # "same": a top-1 at or above it is the right product this often (calibration photos)
SIMILAR_QUANTILE = 0.05  # "similar": this share of the catalog's own photos score below it (the rest above)
SAME_CONFIDENCE_Z = 1.28  # "same" holds its precision with 90 % one-sided confidence on the calibration photos
NEAR_IDENTICAL = 0.9999  # "same" when no lower score reaches SAME_PRECISION: only a copy of a catalog photo
LEVELS = ("same", "similar", "none")


def top1_of_photos(index, queries: np.ndarray, self_rows: list[int], product_ids: list, depth: int = 64
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(best score, whether its product is the photo's own) for catalog photos searching the index: each query
    ``queries[i]`` is the photo at faiss row ``self_rows[i]``, left out of its own results, as are removed rows
    (``product_ids[row] is None``). A photo with no other result scores -1 (wrong)."""
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(depth, index.ntotal))
    best, right = np.full(len(queries), -1.0), np.zeros(len(queries), dtype=bool)
    for i, (me, score_row, id_row) in enumerate(zip(self_rows, scores, rows)):
        for score, row in zip(score_row, id_row):
            if row >= 0 and row != me and product_ids[row] is not None:
                best[i], right[i] = float(score), product_ids[row] == product_ids[me]
                break
    return best, right


def same_threshold(scores: np.ndarray, right: np.ndarray, target: float = SAME_PRECISION,
                   z: float = SAME_CONFIDENCE_Z) -> float:
    """The lowest score at or above which the top-1 product is right for at least ``target`` of the photos, by
    the one-sided lower confidence bound of that precision (Wilson score interval, ``z``): a precision measured
    on a few photos promises little. ``NEAR_IDENTICAL`` when no score reaches it (look-alike products, such as
    colourways of one model, scoring as high as the product itself)."""
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], np.cumsum(right[order])
    n = np.arange(1, len(s) + 1)
    p, z2 = hits / n, z * z
    lower = (p + z2 / (2 * n) - z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))) / (1 + z2 / n)
    last_of_tie = np.append(s[1:] != s[:-1], True)  # a threshold takes every photo at its score
    ok = np.flatnonzero((lower >= target) & last_of_tie)
    return float(s[ok[-1]]) if len(ok) else NEAR_IDENTICAL


def level_of(score: float, levels: dict | None) -> str | None:
    """``same`` / ``similar`` / ``none`` for a result's score under an index's ``levels`` (None: not calibrated)."""
    if levels is None:
        return None
    if levels.get("same") is not None and score >= levels["same"]:
        return "same"
    return "similar" if levels.get("similar") is not None and score >= levels["similar"] else "none"


def levels_of_meta(meta: dict) -> dict | None:
    """An index meta's ``{"same", "similar"}`` thresholds: ``match_levels``; an index built before levels has one
    ``match_threshold``, read as ``same`` with no ``similar``; None when it has neither."""
    levels = meta.get("match_levels")
    if levels and levels.get("same") is not None:
        return {"same": float(levels["same"]), "similar": None if levels.get("similar") is None
                else float(levels["similar"])}
    old = meta.get("match_threshold")
    return None if old is None else {"same": float(old), "similar": None}


def match_levels(index, queries: np.ndarray, self_rows: list[int], product_ids: list, sample: int, seed: int = 0,
                 depth: int = 64) -> dict:
    """Two score thresholds, ``same`` and ``similar``, calibrated on the index's own photos.

    Up to ``sample`` catalog photos search the index, each left out of its own results (``top1_of_photos``): the
    best result's score, and whether that product is the photo's own. The photos are split by product (``seed``):
    half the products calibrate, the other half's photos are held back and report what each level does.

    * ``same`` promises precision: the lowest score at or above which the top-1 product is right for at least
      ``SAME_PRECISION`` of the calibration photos, with 90 % confidence (``same_threshold``; at the plain
      95 % point, half the held-back samples would fall short of it). One threshold at the equal-error point
      mixes "probably right" with "close call"; this one says "the same product" only where that is nearly
      always true, and only a copy of a catalog photo where nothing is (``same_reached`` false).
    * ``similar`` promises recall of shoes: the ``SIMILAR_QUANTILE`` quantile of the calibration photos' best
      scores, right or wrong (capped at ``same``). A photo of a shoe like the catalog's scores above it nearly
      always, whether or not its product is cataloged; a photo of something else (a landscape, text, a chart)
      scores below what almost any catalog photo does, so it gets ``none``.

    Held-back figures are product-level (is the top-1 product right?): per level, ``photos`` at or above it,
    ``precision`` (top-1 right among them) and ``recall`` (top-1 right and at or above it, among the photos
    whose product has another photo to find). Returns ``{"same", "similar", "calibration"}``; both thresholds
    None when there is nothing to calibrate on (fewer than two products).
    """
    picked = sample_queries(np.arange(len(queries)), sample, seed)
    rows = [self_rows[i] for i in picked]
    own = np.array([str(product_ids[r]) for r in rows])
    if len(set(own)) < 2:
        return {"same": None, "similar": None, "calibration": {"photos": len(picked), "rule": "too few products"}}
    scores, right = top1_of_photos(index, queries[picked], rows, product_ids, depth)
    findable = _findable([p for p in product_ids if p is not None], own)
    products = np.unique(own)
    cal_products = calibration_products(products, seed)
    cal = np.array([p in cal_products for p in own])
    same = round(same_threshold(scores[cal], right[cal]), 4)  # as stored, and so as search compares
    similar = min(round(float(np.quantile(scores[cal], SIMILAR_QUANTILE)), 4), same)
    held = ~cal
    figures = {name: _level_figures(scores[held], right[held], findable[held], t)
               for name, t in (("same", same), ("similar", similar))}
    return {"same": same, "similar": similar, "calibration": {
        "rule": f"same: top-1 precision >= {SAME_PRECISION} on the calibration photos (90 % lower bound); similar: "
                f"the {SIMILAR_QUANTILE:g} quantile of their best scores", "same_reached": same < NEAR_IDENTICAL,
        "photos": len(picked), "calibration_photos": int(cal.sum()), "held_back_photos": int(held.sum()),
        "held_back_products": len(products) - len(cal_products), "held_back": figures,
        "held_back_none": int((scores[held] < similar).sum()),
        "right_median": _median(scores[right]), "wrong_median": _median(scores[~right])}}


def calibration_products(products, seed: int) -> set[str]:
    """The half of ``products`` (distinct ids) whose photos calibrate the levels; the other half's are held back."""
    products = np.unique(np.asarray(products, dtype=str))
    return set(np.random.default_rng(seed).permutation(products)[: len(products) // 2].tolist())


def _findable(live: list, own: np.ndarray) -> np.ndarray:
    """Whether each query's product has another (live) photo in the index: a right answer to find."""
    values, counts = np.unique(np.array([str(p) for p in live]), return_counts=True)
    many = set(values[counts > 1])
    return np.array([p in many for p in own])


def _level_figures(scores: np.ndarray, right: np.ndarray, findable: np.ndarray, threshold: float) -> dict:
    at = scores >= threshold
    return {"photos": int(at.sum()), "precision": round(float(right[at].mean()), 4) if at.any() else None,
            "recall": round(float((right & at)[findable].mean()), 4) if findable.any() else None}


def _median(x: np.ndarray) -> float | None:
    return round(float(np.median(x)), 4) if len(x) else None
