"""Benchmark: approximate search tuned on realistic vectors; a sweep of IVF-PQ and HNSW settings at 100k and 1M.

The gallery is drawn by ``bench/search_vectors.py`` from statistics fitted on real descriptors (the trained
model's, of ``../shared/data/footwear-dev``): their principal-axis spectrum, the component all photos share,
look-alike product families and ~4-5 views per product; queries are new photos of cataloged products. Unlike
isotropic clusters, such vectors make approximate search lose neighbours.

For each gallery size it measures the exact inner-product index (the baseline: ground truth, p99, batched
queries/s), then sweeps IVF-PQ (``nlist`` x PQ code size, each at every ``nprobe``, with and without the SQ8
re-rank at several re-rank factors) and, up to ``--hnsw-max`` vectors, HNSW ``efSearch``. Each setting gets
single-query p50/p99, batched queries/s, recall@10 against exact search and index bytes per million vectors.
The chosen setting at the largest size is the lowest p99 with recall@10 >= ``--target`` (among p99 within 10 %
of it, the smallest index); it is then rebuilt through ``index.faiss_build.build_faiss`` with the project's
defaults (``core/sections.py`` ``IndexSettings``) and measured the same way, so the JSON shows the defaults
meeting the target or not. CPU only (faiss-cpu); timings on a shared machine are noisy.

    .venv/bin/python bench/search.py                      # 100k and 1M, ~15 min on 2 quiet cores
    .venv/bin/python bench/search.py --sizes 100000       # ~2 min
    .venv/bin/python bench/search.py --refit MODEL.pt [--catalog DIR]   # refit search_vectors.json first
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

from bench import search_vectors  # noqa: E402
from bench.results_io import write_result  # noqa: E402
from core.settings import IndexSettings  # noqa: E402
from index.faiss_build import build_faiss, ivf_lists, pq_subquantizers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "search.json"
CATALOG = Path(__file__).resolve().parents[2] / "shared" / "data" / "footwear-dev"
K = 10


def time_single(index, queries: np.ndarray) -> dict:
    latencies = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], K)
        latencies.append(time.perf_counter() - t)
    lat = np.array(latencies) * 1000
    return {"single_qps": round(len(lat) / (lat.sum() / 1000), 1), "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3)}


def time_batch(index, queries: np.ndarray, batch: int) -> dict:
    t = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start:start + batch], K)
    return {"batch_qps": round(len(queries) / (time.perf_counter() - t), 1)}


def recall(index, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, K)
    return round(float(np.mean([len(set(t) & set(f)) / K for t, f in zip(truth, found)])), 4)


def measure(index, qs: dict, truth: np.ndarray, args) -> dict:
    return {**time_single(index, qs["single"]), **time_batch(index, qs["batch"], args.batch),
            "recall_at_10": recall(index, qs["recall"], truth)}


def bytes_per_million(index, n: int) -> float:
    import faiss

    return round(faiss.serialize_index(index).nbytes / n, 1)  # bytes per vector = MB per million


def trained_ivf(gallery: np.ndarray, nlist: int, args, rng) -> tuple:
    """A coarse quantizer of ``nlist`` cells (trained as the index step trains it) and every vector's cell."""
    import faiss

    dim = gallery.shape[1]
    size = min(len(gallery), max(args.train_per_list * nlist, args.train_min))
    sample = gallery[np.sort(rng.choice(len(gallery), size, replace=False))]
    t = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT).train(sample)  # trains the quantizer
    _, assign = quantizer.search(gallery, 1)
    return quantizer, np.ascontiguousarray(assign[:, 0]), sample, time.perf_counter() - t


def ivfpq_on(quantizer, assign: np.ndarray, gallery: np.ndarray, sample: np.ndarray, pq_bytes: int):
    """IVF-PQ over a trained quantizer, its vectors added with their precomputed cells (no re-assignment)."""
    import faiss

    n, dim = gallery.shape
    index = faiss.IndexIVFPQ(quantizer, dim, quantizer.ntotal, pq_subquantizers(dim, pq_bytes), 8,
                             faiss.METRIC_INNER_PRODUCT)
    index.train(sample)  # the quantizer is trained: only the PQ codebooks are
    for start in range(0, n, 100_000):
        x, a = gallery[start:start + 100_000], assign[start:start + 100_000]
        index.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(a))
    return index


def sweep_ivfpq(gallery, qs, truth, args, rng) -> list[dict]:
    import faiss

    n, rows = len(gallery), []
    sq8 = faiss.IndexScalarQuantizer(gallery.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(gallery[:100_000])
    sq8.add(gallery)
    for nlist in [v for v in args.nlist if n >= 39 * v]:
        quantizer, assign, sample, train_s = trained_ivf(gallery, nlist, args, rng)
        print(f"  nlist {nlist}: quantizer trained and {n:,} vectors assigned in {train_s:.0f} s", flush=True)
        for pq_bytes in args.pq_bytes:
            t = time.perf_counter()
            base = ivfpq_on(quantizer, assign, gallery, sample, pq_bytes)
            build_s = train_s + time.perf_counter() - t
            refined = faiss.IndexRefine(base, sq8)
            memory = {0: bytes_per_million(base, n), 1: bytes_per_million(refined, n)}
            for factor in args.refine_factor:
                index = refined if factor else base
                if factor:
                    refined.k_factor = factor
                for nprobe in args.nprobe:
                    base.nprobe = nprobe
                    row = {"vectors": n, "kind": "ivfpq", "nlist": nlist, "pq_bytes": pq_bytes, "nprobe": nprobe,
                           "refine": "SQ8" if factor else "", "refine_factor": factor or None,
                           "build_s": round(build_s, 1), "mb_per_million": memory[bool(factor)],
                           **measure(index, qs, truth, args)}
                    _print_row(row)
                    rows.append(row)
            del refined, base
    return rows


def sweep_hnsw(gallery, qs, truth, args) -> list[dict]:
    cfg = IndexSettings()
    t = time.perf_counter()
    index = build_faiss(gallery, "hnsw", cfg, use_gpu=False)
    build_s, rows = time.perf_counter() - t, []
    memory = bytes_per_million(index, len(gallery))
    for ef in args.ef_search:
        index.hnsw.efSearch = ef
        row = {"vectors": len(gallery), "kind": "hnsw", "hnsw_m": cfg.hnsw_m,
               "ef_construction": cfg.hnsw_ef_construction, "ef_search": ef, "build_s": round(build_s, 1),
               "mb_per_million": memory, **measure(index, qs, truth, args)}
        _print_row(row)
        rows.append(row)
    return rows


def exact_row(gallery, qs, args) -> tuple[dict, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    _, truth = index.search(qs["recall"], K)
    row = {"vectors": len(gallery), "kind": "flat_ip", "build_s": 0.0,
           "mb_per_million": bytes_per_million(index, len(gallery)),
           **time_single(index, qs["single"][:args.exact_single]), **time_batch(index, qs["batch"], args.batch),
           "recall_at_10": 1.0}
    _print_row(row)
    return row, truth


def choose(rows: list[dict], target: float) -> dict | None:
    """Lowest p99 with recall@10 >= ``target``; among p99 within 10 % of it, the smallest index, then best recall."""
    ok = [r for r in rows if r["kind"] != "flat_ip" and r["recall_at_10"] >= target]
    if not ok:
        return None
    fastest = min(r["p99_ms"] for r in ok)
    near = [r for r in ok if r["p99_ms"] <= 1.1 * fastest]
    return min(near, key=lambda r: (r["mb_per_million"], -r["recall_at_10"], r["p99_ms"]))


def default_row(gallery, qs, truth, args) -> dict:
    """The index the index step builds at this size with the project's defaults (bench-sized training sample)."""
    cfg = replace(IndexSettings(), train_sample=min(IndexSettings().train_sample, len(gallery)))
    t = time.perf_counter()
    index = build_faiss(gallery, cfg.approximate, cfg, use_gpu=False, seed=0)
    row = {"vectors": len(gallery), "kind": f"default ({cfg.approximate})", "nlist": ivf_lists(len(gallery), cfg),
           "pq_bytes": cfg.pq_bytes, "nprobe": cfg.nprobe, "refine": cfg.refine, "refine_factor": cfg.refine_factor,
           "train_sample": cfg.train_sample, "build_s": round(time.perf_counter() - t, 1),
           "mb_per_million": bytes_per_million(index, len(gallery)), **measure(index, qs, truth, args)}
    _print_row(row)
    return row


def bench_size(n: int, stats: dict, args) -> dict:
    rng = np.random.default_rng(args.seed)
    print(f"\n== {n:,} vectors x {stats['dim']} dims ==", flush=True)
    t = time.perf_counter()
    gallery, _, catalog = search_vectors.generate(stats, n, rng)
    qs = {name: search_vectors.queries(catalog, count) for name, count in
          (("single", args.single), ("batch", args.batch_queries), ("recall", args.recall_queries))}
    print(f"generated in {time.perf_counter() - t:.1f} s", flush=True)
    exact, truth = exact_row(gallery, qs, args)
    rows = [exact] + sweep_ivfpq(gallery, qs, truth, args, rng)
    if n <= args.hnsw_max:
        rows += sweep_hnsw(gallery, qs, truth, args)
    for r in rows:
        r["single_speedup_vs_exact"] = round(r["single_qps"] / exact["single_qps"], 1)
        r["batch_speedup_vs_exact"] = round(r["batch_qps"] / exact["batch_qps"], 1)
    result = {"vectors": n, "dim": stats["dim"], "rows": rows, "chosen": choose(rows, args.target)}
    if args.check_defaults and n == max(args.sizes) and n > IndexSettings().exact_max_vectors:
        result["defaults"] = default_row(gallery, qs, truth, args)
    return result


def _print_row(r: dict) -> None:
    what = {"flat_ip": "exact", "hnsw": f"hnsw ef {r.get('ef_search')}"}.get(r["kind"]) or (
        f"{r['kind']} nlist {r['nlist']} pq {r['pq_bytes']} nprobe {r['nprobe']} "
        f"{'SQ8x' + str(r['refine_factor']) if r.get('refine') else 'no re-rank'}")
    print(f"  {what:<44} p50 {r['p50_ms']:7.2f} p99 {r['p99_ms']:7.2f} ms  batch {r['batch_qps']:8.0f} q/s  "
          f"recall@10 {r['recall_at_10']:.3f}  {r['mb_per_million']:6.0f} MB/M", flush=True)


def refit(args) -> dict:
    """Refit ``search_vectors.json`` from a trained model's descriptors of ``args.catalog`` (stays outside)."""
    x, groups, _ = search_vectors.embed_catalog(args.catalog, args.refit)
    stats = search_vectors.fit_stats(x, groups, f"{args.refit.name} on {args.catalog.name}: {len(x)} photos")
    search_vectors.STATS.write_text(__import__("json").dumps(stats, indent=1) + "\n")
    print(f"refitted {search_vectors.STATS}: real {stats['real']}, synthetic {stats['synthetic']}")
    return stats


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--nlist", type=int, nargs="+", default=[1024, 4096],
                   help="IVF cells (skipped below 39 vectors each)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--pq-bytes", type=int, nargs="+", default=[32, 64], help="PQ code bytes per vector")
    p.add_argument("--refine-factor", type=int, nargs="+", default=[0, 8, 16, 32], help="SQ8 re-rank factors (0: none)")
    p.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--hnsw-max", type=int, default=100_000,
                   help="HNSW only up to this size (build ~1-2k vectors/s here)")
    p.add_argument("--train-per-list", type=int, default=39, help="quantizer training vectors per IVF cell")
    p.add_argument("--train-min", type=int, default=50_000, help="at least this many training vectors (PQ codebooks)")
    p.add_argument("--target", type=float, default=0.95, help="recall@10 vs exact the chosen setting must reach")
    p.add_argument("--single", type=int, default=200, help="single queries timed per setting (p99 = 3rd slowest)")
    p.add_argument("--exact-single", type=int, default=30, help="single queries timed on the exact index")
    p.add_argument("--batch", type=int, default=256, help="queries per batched call")
    p.add_argument("--batch-queries", type=int, default=1024, help="queries timed in batches per setting")
    p.add_argument("--recall-queries", type=int, default=500, help="queries for recall@10 vs exact")
    p.add_argument("--no-check-defaults", dest="check_defaults", action="store_false",
                   help="skip rebuilding the largest size with the project's defaults")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refit", type=Path, help="trained model checkpoint (.pt): refit search_vectors.json first")
    p.add_argument("--catalog", type=Path, default=CATALOG, help="catalog folder the refit embeds (labels.csv)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import faiss

    stats = refit(args) if args.refit else search_vectors.load_stats()
    started = time.perf_counter()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads on {os.cpu_count()} CPU cores; vectors "
          f"fitted on {stats['source']}; per setting {args.single} single queries, {args.batch_queries} in batches "
          f"of {args.batch}, {args.recall_queries} recall queries", flush=True)
    sizes = [bench_size(n, stats, args) for n in args.sizes]
    for s in sizes:
        print(f"\n{s['vectors']:,}: chosen {s['chosen']}")
        if "defaults" in s:
            print(f"  defaults: {s['defaults']}")
    result = {"benchmark": "search", "sizes": sizes, "target_recall_at_10": args.target,
              "vectors": {k: stats[k] for k in ("source", "photos", "products", "dim", "mean_norm", "view_share",
                                                "family_share", "real", "synthetic")},
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": {"cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                          "faiss": faiss.__version__, "python": platform.python_version()},
              "seconds": round(time.perf_counter() - started)}
    write_result(result, args.out)
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
