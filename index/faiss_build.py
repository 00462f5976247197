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


def match_calibration(index, vectors: np.ndarray, product_ids: list[str], sample: int, seed: int = 0,
                      depth: int = 64) -> dict:
    """The score above which a search result is a confident match, calibrated on the index's own photos.

    Each sampled photo queries the index (itself left out): its best score to another photo of its own
    product is a right-match score, its best score to *another* product's photo a wrong-match score. The
    threshold is where the two distributions cross (equal error rate: as many right matches fall below it
    as wrong ones rise above it), so a result above it is likelier the same product than not; a photo of
    something else (no shoe, another kind of object) scores far below both. With no right-match scores
    (one photo per product) it is the 95th percentile of the wrong ones. Returns the threshold and both
    error rates at it.
    """
    queries = sample_queries(np.arange(len(vectors)), sample, seed)
    scores, rows = index.search(np.ascontiguousarray(vectors[queries], dtype=np.float32), min(depth, len(vectors)))
    right, wrong = [], []
    for q, score_row, id_row in zip(queries, scores, rows):
        mine = [float(s) for s, r in zip(score_row, id_row) if r >= 0 and r != q and product_ids[r] == product_ids[q]]
        other = [float(s) for s, r in zip(score_row, id_row) if r >= 0 and product_ids[r] != product_ids[q]]
        right += mine[:1]
        wrong += other[:1]
    if not wrong:
        return {"match_threshold": None, "queries": len(queries)}
    right_a, wrong_a = np.array(right), np.array(wrong)
    if len(right_a) == 0:
        threshold = float(np.quantile(wrong_a, 0.95))
    else:
        candidates = np.unique(np.concatenate([right_a, wrong_a]))
        gap = [abs(np.mean(right_a < t) - np.mean(wrong_a >= t)) for t in candidates]
        threshold = float(candidates[int(np.argmin(gap))])
    return {"match_threshold": round(threshold, 4), "queries": len(queries), "rule": "equal error rate",
            "right_below": round(float(np.mean(right_a < threshold)), 4) if len(right_a) else None,
            "wrong_above": round(float(np.mean(wrong_a >= threshold)), 4),
            "right_median": round(float(np.median(right_a)), 4) if len(right_a) else None,
            "wrong_median": round(float(np.median(wrong_a)), 4)}
