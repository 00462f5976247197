"""Performance tables of bench/REPORT.md: warehouse, crawl, embedding, API search, faiss search, training,
whitening and the denoise threshold study.

Every function renders markdown lines from the committed JSON under a results folder (``bench/results``);
``bench/render_tables.py`` assembles them into the report.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from bench.report_quality import load

# What each committed embed JSON measured: this checkout, and the commit before the hardening of issue 25 (run from a
# `git archive` of it, its embed.json renamed) as the baseline.
EMBED_RUNS = (("embed.json", "this checkout"), ("embed-f16d00e.json", "before hardening (commit f16d00e)"))
SEARCH_KINDS = {"flat_ip": "exact (flat IP)", "ivfpq": "IVF-PQ + SQ8 refine", "hnsw": "HNSW"}
# The NetVLAD row the pipeline's defaults give at k-means init (256 dims, shrinkage 0.1), quoted per backbone.
WHITENING_DEFAULT = "PCA-whitened 256, shrink 0.1"


def _num(x, spec: str = ".1f") -> str:
    """``x`` formatted by ``spec``, or "-" where the JSON holds none."""
    return "-" if x is None else format(x, spec)


def missing(name: str) -> list[str]:
    return [f"No `bench/results/{name}` committed."]


def from_json(name: str):
    """Render a section from one committed JSON: the function gets its data; a missing file renders a notice."""
    def wrap(render):
        @functools.wraps(render)
        def section(results: Path) -> list[str]:
            r = load(results, name)
            return missing(name) if r is None else render(r)
        return section
    return wrap


@from_json("warehouse.json")
def warehouse(r: dict) -> list[str]:
    out = [f"`bench/results/warehouse.json`: {r['images']:,} images, {r['products']:,} products in {r['batches']} "
           f"batches (built in {r['build_seconds']} s, snapshot in {r['snapshot_seconds']} s); {r['result_rows']} "
           f"result rows; target {r['target_ms']} ms", "",
           "| query | p50 ms | p90 ms | × baseline (p50) |", "|---|---:|---:|---:|"]
    return out + [f"| {name} | {t['p50_ms']} | {t['p90_ms']} | {t['x_baseline']} |" for name, t in r["timings"].items()]


@from_json("crawl.json")
def crawl(r: dict) -> list[str]:
    c, ceiling, ratio = r["crawl"], r["shop_ceiling"], r["ratio_vs_ceiling"]
    return [f"`bench/results/crawl.json`: {r['products']} products, photos of {r['image_size']} px, concurrency "
            f"{r['concurrency']}; the crawl fetched {c['pages']} pages and {c['images']} images in {c['duration_s']} s",
            "", "| fetcher | pages/s | item pages/s | images/s |", "|---|---:|---:|---:|",
            f"| spider | {c['pages_per_s']:.1f} | {c['item_pages_per_s']:.1f} | {c['images_per_s']:.1f} |",
            f"| shop ceiling (thread pool) | {ceiling['pages_per_s']:.1f} | - | {ceiling['images_per_s']:.1f} |",
            f"| spider / ceiling | {ratio['pages']:.2f} | - | {ratio['images']:.2f} |"]


def embed(results: Path) -> list[str]:
    rows = [(name, what, load(results, name)) for name, what in EMBED_RUNS]
    rows = [x for x in rows if x[2] is not None]
    if not rows:
        return missing("embed.json")
    out = ["| JSON | run | photos | backbone, px | batch, workers, threads | embed task img/s | bare forward img/s "
           "| task / bare |", "|---|---|---:|---|---|---:|---:|---:|"]
    return out + [f"| `bench/results/{name}` | {what} | {r['photos']} of {r['photo_size']} px | {r['backbone']}, "
                  f"{r['image_size']} | {r['batch_size']}, {r['num_workers']}, {r['cpu_threads']} | "
                  f"{r['embed_task_img_per_s']:.1f} | {r['bare_forward_img_per_s']:.1f} | "
                  f"{r['task_vs_bare_ratio']:.2f} |"
                  for name, what, r in rows]


@from_json("embed-engines.json")
def embed_engines(r: dict) -> list[str]:
    return [f"`bench/results/embed-engines.json`: {r['photos']} photos, {r['backbone']}, {r['machine']}; the same "
            f"photos embedded by each engine in one run (vectors equal within {r['max_abs_diff']:.1e})", "",
            "| engine | img/s | start-up s |", "|---|---:|---:|",
            f"| local (DataLoader workers) | {r['local_img_per_s']:.1f} | - |",
            f"| Ray Data, local cluster of {r['ray_cpus']} CPUs | {r['ray_img_per_s']:.1f} | {r['ray_start_s']:.1f} |"]


@from_json("api_search.json")
def api_search(r: dict) -> list[str]:
    out = [f"`bench/results/api_search.json`: {r['products']} products, {r['photos']} photos, {r['rounds']} rounds "
           f"alternated, {r['machine']}, {r['cpus']} CPUs; this checkout's p50 / the baseline's: {r['p50_ratio']:.3f}",
           "", "| server | queries | p50 ms | p90 ms | mean ms | queries/s |", "|---|---:|---:|---:|---:|---:|"]
    return out + [f"| {name} | {s['queries']} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['mean_ms']:.1f} | "
                  f"{s['queries_per_s']:.1f} |" for name, s in r["servers"].items()]


@from_json("search.json")
def search(r: dict) -> list[str]:
    m = r["machine"]
    out = [f"`bench/results/search.json`: {m['cpu_count']} CPUs, faiss {m['faiss']} ({m['faiss_threads']} threads), "
           f"{m['gpus']} GPUs, python {m['python']}; {r['seconds']:.0f} s in all", "",
           "| vectors | index | device | build s | single q/s | p50 ms | p99 ms | batched q/s | × exact (single / "
           "batched) | recall@10 vs exact |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        size = f"{x['vectors'] // 1_000_000}M" if x["vectors"] % 1_000_000 == 0 else f"{x['vectors'] // 1000}k"
        out.append(f"| {size} | {SEARCH_KINDS.get(x['kind'], x['kind'])} | {x['device']} | {_num(x['build_s'])} | "
                   f"{x['single_qps']:,.1f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['batch_qps']:,.0f} | "
                   f"{x['single_speedup_vs_exact']:.0f} / {x['batch_speedup_vs_exact']:.1f} | "
                   f"{x['recall_at_10']:.3f} |")
    return out


@from_json("train.json")
def train(r: dict) -> list[str]:
    c = r["config"]
    out = [f"`bench/results/train.json` ({c['date'][:10]}, {c['device_name']}, {c['threads']} threads, {c['device']}): "
           f"{c['backbone']} at {c['image_size']} px, K={c['clusters']}, {c['trainable_blocks']} trainable blocks, "
           f"tuples of {c['tuple']}, {c['batch_tuples']} tuples per step, {c['steps']} steps, {c['precision']}, "
           f"{c['train_photos']} training photos (frozen-stage cache built in {c['cache_s']} s)", "",
           "| path | images/s | vs bare |", "|---|---:|---:|"]
    out += [f"| {name} | {ips:.1f} | {r['ratio_vs_bare'][name]:.2f}x |" for name, ips in r["images_per_s"].items()]
    return out + ["", f"Reference, not measured here: {r['reference_h100_img_s']:,} img/s, VGG16 conv5 + NetVLAD "
                  "training at 224 px, bf16, one H100."]


def whitening(results: Path) -> list[str]:
    """Every whitening JSON side by side (one column pair per file), then the pipeline default's row per backbone."""
    paths = sorted(results.glob("whitening*.json"), key=lambda p: (p.name != "whitening.json", p.name))  # default first
    runs = [(p.name, json.loads(p.read_text())) for p in paths]
    if not runs:
        return missing("whitening.json")
    out = [f"`bench/results/{name}`: {r['dataset']}, seeds {r['seeds']}, settings changed: "
           f"{r['settings_changed'] or 'none'}" for name, r in runs]
    out += ["", "Mean Recall@1 / mAP on the test photos (± std where more than one seed):", "",
            "| descriptor | " + " | ".join(f"`{name}`" for name, _ in runs) + " |", "|---|" + "---:|" * len(runs)]
    rows = list(dict.fromkeys(k for _, r in runs for k in r["summary"]))
    out += [f"| {row} | " + " | ".join(_whitening_cell(r["summary"].get(row)) for _, r in runs) + " |" for row in rows]
    out += ["", "| backbone | JSON (`bench/results/`) | ImageNet GeM R@1 | mAP | NetVLAD k-means init R@1 | mAP |",
            "|---|---|---:|---:|---:|---:|"]
    for name, r in runs:
        gem, vlad = r["summary"].get("ImageNet GeM (no training)"), r["summary"].get(WHITENING_DEFAULT)
        if gem and vlad:
            backbone = r["settings_changed"].get("train.backbone", "default")
            out.append(f"| {backbone} | `{name}` | {gem['recall_at_1'][0]:.3f} | {gem['mean_ap'][0]:.3f} | "
                       f"{vlad['recall_at_1'][0]:.3f} | {vlad['mean_ap'][0]:.3f} |")
    return out


def _whitening_cell(row: dict | None) -> str:
    """``mean R@1 / mean mAP`` of one summary row ([mean, std] per metric), the std added where it is not 0."""
    if row is None:
        return "-"
    return " / ".join(f"{m:.3f}" + (f" ± {s:.3f}" if s else "") for m, s in (row["recall_at_1"], row["mean_ap"]))


def denoise_threshold(results: Path) -> list[str]:
    runs = load(results, "denoise_threshold.json")
    if not runs:
        return missing("denoise_threshold.json")
    out: list[str] = []
    for r in runs:
        quantiles = "; ".join(f"{who} q{q} {d:.3f}" for who in ("genuine", "noise")
                              for q, d in r[f"{who}_quantiles"].items())
        out += [*([""] if out else []),
                f"`bench/results/denoise_threshold.json`, {r['dataset']} ({r['model_id']}): {r['genuine']} genuine "
                f"views, {r['noise']} injected noise photos; distances to the first view: {quantiles}", "",
                "| threshold | precision | recall |", "|---:|---:|---:|"]
        out += [f"| {t['threshold']:.2f} | {t['precision']:.2f} | {t['recall']:.2f} |" for t in r["at_threshold"]]
    return out
