"""Benchmark: faiss search speed and approximate-vs-exact recall at 100k and 1M synthetic vectors.

For each gallery size it builds the exact inner-product index (the baseline) and the approximate
indexes the index step would choose above ``index.exact_max_vectors``, then measures single-query
latency (p50/p99, queries/s), batched throughput and recall@10 against exact search, and prints
ratios against the exact index measured in the same run. Vectors are L2-normalised, 512-d (like
PCA-whitened NetVLAD descriptors) and structured like a catalog: look-alike categories, products
within them, ~10 photos per product; queries are perturbed gallery vectors, as a new photo of a
cataloged product would be. Runs on CPU (faiss-cpu); with faiss-gpu and a
GPU it also times the exact index on the GPU.

    .venv/bin/python bench/search.py            # 100k and 1M, about 5 minutes on 2 cores

Query counts are sized for a 2-core machine (exact search at 1M x 512 answers ~10-20 batched
queries/s there): 50 timed single queries (so p99 is the second-slowest), 512 batched queries and
200 recall queries per index; raise them with the flags on a bigger machine.
    .venv/bin/python bench/search.py --sizes 20000 --single 50
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import write_result  # noqa: E402
from core.settings import IndexSettings  # noqa: E402
from index.faiss_build import build_faiss, gpu_count, ivf_lists, recall_vs_exact  # noqa: E402

DIM = 512
CATEGORIES = 2_000  # look-alike groups (a model line, a colourway family)
PHOTOS_PER_PRODUCT = 10  # a catalog is ~10 photos per product: 100k / 1M photos = 10k / 100k products
CATEGORY_SPREAD = 0.6  # products of a category around its centre (per dimension, relative)
PHOTO_SPREAD = 0.35  # a product's photos around the product (viewpoint, background)
QUERY_NOISE = 0.3  # a query is a gallery vector plus this much noise
RESULTS = Path(__file__).resolve().parent / "results" / "search.json"
# Measured elsewhere, printed for context only (../shared/reference/ecosystem.md, one H100):
GPU_REFERENCE = "exact kNN, 1M x 512 fp16 gallery, batched matmul+topk on one H100: 114,030 queries/s"


def synthetic_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` L2-normalised photo vectors: categories -> products -> ~10 photos each.

    Generated in chunks of whole products (the chunk size is a multiple of PHOTOS_PER_PRODUCT).
    """
    categories = rng.standard_normal((CATEGORIES, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        product = np.arange(start, start + m) // PHOTOS_PER_PRODUCT
        first = product[0]
        n_products = product[-1] - first + 1
        centres = categories[rng.integers(0, CATEGORIES, n_products)] + \
            CATEGORY_SPREAD * rng.standard_normal((n_products, dim), dtype=np.float32)
        block = centres[product - first] + PHOTO_SPREAD * rng.standard_normal((m, dim), dtype=np.float32)
        out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def make_queries(gallery: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    q = gallery[rng.integers(0, len(gallery), n)] + QUERY_NOISE / np.sqrt(gallery.shape[1]) * \
        rng.standard_normal((n, gallery.shape[1]), dtype=np.float32)
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def time_single(index, queries: np.ndarray, k: int) -> dict:
    latencies = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k)
        latencies.append(time.perf_counter() - t)
    lat = np.array(latencies) * 1000
    return {"single_qps": len(lat) / (lat.sum() / 1000), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def time_batch(index, queries: np.ndarray, k: int, batch: int) -> dict:
    t = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start:start + batch], k)
    seconds = time.perf_counter() - t
    return {"batch_qps": len(queries) / seconds, "batch_ms": 1000 * seconds / max(1, len(queries) // batch)}


def bench_size(n: int, args, rng: np.random.Generator) -> list[dict]:
    import faiss

    print(f"\n== {n:,} vectors x {DIM} dims ==", flush=True)
    t = time.perf_counter()
    gallery = synthetic_vectors(n, DIM, rng)
    single_q = make_queries(gallery, args.single, rng)
    batch_q = make_queries(gallery, args.batch_queries, rng)
    recall_q = make_queries(gallery, args.recall_queries, rng)
    print(f"generated in {time.perf_counter() - t:.1f} s", flush=True)

    # Bench-sized quantiser training (the defaults train on 200k vectors: minutes on 2 cores).
    cfg = replace(IndexSettings(), train_sample=args.train_sample, ivf_lists=args.ivf_lists)
    kinds = ["flat_ip", "ivfpq"] + (["hnsw"] if n <= args.hnsw_max else [])
    rows = []
    for kind in kinds:
        t = time.perf_counter()
        index = build_faiss(gallery, kind, cfg, use_gpu=False, seed=0)
        build_s = time.perf_counter() - t
        row = {"vectors": n, "dim": DIM, "kind": kind, "device": "cpu", "build_s": build_s,
               "ivf_lists": ivf_lists(n, cfg) if kind == "ivfpq" else None,
               "nprobe": cfg.nprobe if kind == "ivfpq" else None,
               "ef_search": cfg.hnsw_ef_search if kind == "hnsw" else None}
        row.update(time_single(index, single_q, args.k))
        row.update(time_batch(index, batch_q, args.k, args.batch))
        row["recall_at_10"] = 1.0 if kind == "flat_ip" else recall_vs_exact(index, gallery, recall_q, 10)
        row["memory_mb"] = faiss.serialize_index(index).nbytes / 1e6
        print(f"  {kind:8s} build {build_s:6.1f} s  single {row['single_qps']:8.1f} q/s "
              f"(p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms)  batch {row['batch_qps']:9.1f} q/s  "
              f"recall@10 {row['recall_at_10']:.3f}", flush=True)
        rows.append(row)
        del index
    if gpu_count() > 0:  # only with faiss-gpu on a GPU host
        resources = faiss.StandardGpuResources()
        cpu_flat = faiss.IndexFlatIP(DIM)
        cpu_flat.add(gallery)
        index = faiss.index_cpu_to_gpu(resources, 0, cpu_flat)
        row = {"vectors": n, "dim": DIM, "kind": "flat_ip", "device": "gpu", "build_s": None}
        row.update(time_single(index, single_q, args.k))
        row.update(time_batch(index, batch_q, args.k, args.batch))
        row["recall_at_10"] = 1.0
        rows.append(row)
    base = next(r for r in rows if r["kind"] == "flat_ip" and r["device"] == "cpu")
    for r in rows:
        r["single_speedup_vs_exact"] = r["single_qps"] / base["single_qps"]
        r["batch_speedup_vs_exact"] = r["batch_qps"] / base["batch_qps"]
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'vectors':>9} {'kind':8} {'dev':4} {'build s':>8} {'1q q/s':>9} {'p50 ms':>8} {'p99 ms':>8} " \
             f"{'batch q/s':>10} {'x exact 1q':>10} {'x exact batch':>13} {'recall@10':>9}"
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        build = f"{r['build_s']:.1f}" if r["build_s"] is not None else "-"
        print(f"{r['vectors']:>9,} {r['kind']:8} {r['device']:4} {build:>8} {r['single_qps']:>9.1f} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['batch_qps']:>10.1f} "
              f"{r['single_speedup_vs_exact']:>10.2f} {r['batch_speedup_vs_exact']:>13.2f} {r['recall_at_10']:>9.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--single", type=int, default=50, help="single queries timed per index")
    parser.add_argument("--batch", type=int, default=256, help="queries per batched call")
    parser.add_argument("--batch-queries", type=int, default=512, help="queries timed in batches per index")
    parser.add_argument("--recall-queries", type=int, default=200, help="queries for recall@10 vs exact")
    parser.add_argument("--train-sample", type=int, default=50_000, help="IVF/PQ training vectors")
    parser.add_argument("--ivf-lists", type=int, default=0, help="0: ~4*sqrt(n), at most train_sample/39 (as the index step)")
    parser.add_argument("--hnsw-max", type=int, default=0,
                        help="also build HNSW up to this size (slow on 2 cores: ~45 s per 20k vectors)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import faiss

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads on {os.cpu_count()} CPU cores; "
          f"per index: {args.single} single queries, {args.batch_queries} in batches of {args.batch}, "
          f"{args.recall_queries} recall queries (exact baseline on the same queries)", flush=True)
    rows = [r for n in args.sizes for r in bench_size(n, args, rng)]
    print_table(rows)
    if gpu_count() == 0:
        print(f"\nno GPU here; for context only (not measured in this run): {GPU_REFERENCE}")
    result = {
        "benchmark": "search", "rows": rows, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                    "faiss": faiss.__version__, "gpus": gpu_count(), "python": platform.python_version()},
        "seconds": time.perf_counter() - started,
    }
    write_result(result, args.out)
    print(f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
