"""Performance tables of bench/REPORT.md: warehouse, crawl, embedding, API search and load, faiss search, training,
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
    refresh = (f", materialised current views in {r['refresh_current_seconds']} s"
               if "refresh_current_seconds" in r else "")
    out = [f"`bench/results/warehouse.json`: {r['images']:,} images, {r['products']:,} products in {r['batches']} "
           f"batches (built in {r['build_seconds']} s{refresh}, snapshot in {r['snapshot_seconds']} s); "
           f"{r['result_rows']} result rows; target {r['target_ms']} ms", "",
           "| query | p50 ms | p90 ms | × baseline (p50) |", "|---|---:|---:|---:|"]
    out += [f"| {name} | {t['p50_ms']} | {t['p90_ms']} | {t['x_baseline']} |" for name, t in r["timings"].items()]
    if "target_met" in r:
        met = ", ".join(f"{k.replace('_', ' ')} {r['live_ms'][k]} ms ({'met' if ok else 'NOT met'})"
                        for k, ok in r["target_met"].items())
        out += ["", f"Target < {r['target_ms']} ms on the live views: {met}."]
    return out


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
    out = ["F: bare forward, tensors ready; D: decode + preprocess by the photo loader, no model; limit = "
           "1 / (1/F + 1/D); step: the embed step after its first batch; start-up: step start to its first batch "
           "(model, loader workers). All img/s, measured in one run.", "",
           "| JSON | run | photos | backbone, px | batch, workers, threads | F | D | limit | step | step / limit "
           "| start-up s | whole step (start-up incl.) | whole / F |", "|---|---|---:|---|---|" + "---:|" * 8]
    return out + [f"| `bench/results/{name}` | {what} | {r['photos']} of {r['photo_size']} px | {r['backbone']}, "
                  f"{r['image_size']} | {r['batch_size']}, {r['num_workers']}, {r['cpu_threads']} | "
                  f"{r['bare_forward_img_per_s']:.1f} | {_num(r.get('decode_img_per_s'))} | "
                  f"{_num(r.get('limit_img_per_s'))} | {_num(r.get('step_img_per_s'))} | "
                  f"{_num(r.get('ratio_vs_limit'), '.2f')} | {_num(r.get('step_start_s'))} | "
                  f"{r['embed_task_img_per_s']:.1f} | {r['task_vs_bare_ratio']:.2f} |"
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


@from_json("api.json")
def api_load(r: dict) -> list[str]:
    """Concurrent searches through the API against the bare search call of the same run."""
    i, v = r["index"], r["search_vectors"]
    out = [f"`bench/results/api.json` ({r['date'][:10]}, {r['machine']}): {i['photos']:,} photos ({i['catalog_photos']} "
           f"embedded, the rest noisy copies), {i['kind']} {i['dim']}-d; {r['query_px']} px JPEG queries, k = {r['k']}, "
           f"{r['requests_per_level']} requests per concurrency; client and server on the same cores", "",
           "| concurrency | API p50 ms | API p99 ms | API req/s | bare p50 ms | bare p99 ms | bare req/s | "
           "p50 API / bare | req/s API / bare |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["levels"]:
        a, b = x["api"], x["bare"]
        out.append(f"| {x['concurrency']} | {a['p50_ms']:.1f} | {a['p99_ms']:.1f} | {a['req_per_s']:.1f} | "
                   f"{b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['req_per_s']:.1f} | {x['p50_ratio']:.2f} | "
                   f"{x['req_per_s_ratio']:.2f} |")
    return out + ["", f"Bare: the header check, decode, embedding and faiss search in-process (`Searcher.search`); "
                  f"`search_vectors` alone (faiss + one result per product): p50 {v['p50_ms']:.2f} ms, p99 "
                  f"{v['p99_ms']:.2f} ms."]


@from_json("search.json")
def search(r: dict) -> list[str]:
    m, v = r["machine"], r["vectors"]
    out = [f"`bench/results/search.json`: {m['cpu_count']} CPUs, faiss {m['faiss']} ({m['faiss_threads']} threads); "
           f"{r['seconds']:.0f} s in all. Vectors ({v['dim']}-d) drawn from statistics fitted on {v['source']}: "
           f"median best same-product / other-product cosine and Recall@1 real {_neighbours(v['real'])}, synthetic "
           f"(same size) {_neighbours(v['synthetic'])}. Per index setting: the fastest row reaching recall@10 "
           f"{r['target_recall_at_10']} of exact, else its best recall."]
    if isinstance(r.get("args"), dict) and r["args"].get("note"):
        out[0] += f" Note: {r['args']['note']}."
    for size in r["sizes"]:
        out += ["", "| vectors | index | nprobe / efSearch | p50 ms | p99 ms | batched q/s | × exact (single / "
                "batched) | recall@10 | MB per million |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        out += [_search_row(x) for x in _search_best(size["rows"], r["target_recall_at_10"])]
        chosen, defaults = size.get("chosen"), size.get("defaults")
        out += ["", f"{_size(size['vectors'])}: chosen " + (_search_what(chosen) + f", p99 {chosen['p99_ms']:.2f} ms, "
                f"recall@10 {chosen['recall_at_10']:.3f}, {chosen['mb_per_million']:,.0f} MB per million photos"
                if chosen else "none reaches the target")]
        if defaults:
            out.append(f"{_size(size['vectors'])} with the project's defaults ({_search_what(defaults)}, built in "
                       f"{defaults['build_s']:.0f} s): p99 {defaults['p99_ms']:.2f} ms, batched "
                       f"{defaults['batch_qps']:,.0f} q/s, recall@10 {defaults['recall_at_10']:.3f}, "
                       f"{defaults['mb_per_million']:,.0f} MB per million photos")
    return out


def _neighbours(s: dict) -> str:
    return f"{s['right_median']:.3f} / {s['wrong_median']:.3f} / {s['recall_at_1']:.3f}"


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def _search_what(x: dict) -> str:
    if x["kind"] in ("flat_ip", "hnsw"):
        return SEARCH_KINDS[x["kind"]] + (f" M={x['hnsw_m']}" if x["kind"] == "hnsw" else "")
    rerank = f" + SQ8 re-rank ×{x['refine_factor']}" if x.get("refine") else ""
    return f"IVF{x['nlist']}-PQ{x['pq_bytes']}{rerank}, nprobe {x['nprobe']}"


def _search_best(rows: list[dict], target: float) -> list[dict]:
    """Per index setting (all but the query-time beam), the fastest row at the target recall, else the best recall."""
    groups: dict = {}
    for x in rows:
        groups.setdefault((x["kind"], x.get("nlist"), x.get("pq_bytes"), x.get("refine_factor")), []).append(x)
    best = []
    for group in groups.values():
        ok = [x for x in group if x["recall_at_10"] >= target]
        best.append(min(ok, key=lambda x: x["p99_ms"]) if ok else max(group, key=lambda x: x["recall_at_10"]))
    return best


def _search_row(x: dict) -> str:
    beam = x.get("ef_search") if x["kind"] == "hnsw" else x.get("nprobe")
    return (f"| {_size(x['vectors'])} | {_search_what(x).split(', nprobe')[0]} | {_num(beam, 'd')} | "
            f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['batch_qps']:,.0f} | {x['single_speedup_vs_exact']:.0f} / "
            f"{x['batch_speedup_vs_exact']:.1f} | {x['recall_at_10']:.3f} | {x['mb_per_million']:,.0f} |")


@from_json("train.json")
def train(r: dict) -> list[str]:
    c = r["config"]
    out = [f"`bench/results/train.json` ({c['date'][:10]}, {c['device_name']}, {c['threads']} threads, {c['device']}): "
           f"{c['backbone']} at {c['image_size']} px, K={c['clusters']}, {c['trainable_blocks']} trainable blocks, "
           f"tuples of {c['tuple']}, {c['batch_tuples']} tuples per step, {c['steps']} steps, {c['precision']}, "
           f"{c['train_photos']} training photos (frozen-stage cache built in {c['cache_s']} s)", "",
           "| path | images/s | vs bare |", "|---|---:|---:|"]
    out += [f"| {name} | {ips:.1f} | {r['ratio_vs_bare'][name]:.2f}x |" for name, ips in r["images_per_s"].items()]
    split = r.get("epoch_breakdown_s", {})
    if split:
        out += ["", f"Epoch / step ({c.get('num_workers', '-')} loader workers): the epoch's wall clock split into "
                "mining, steps and steps waiting for photos (loader starts included):", "",
                "| epoch | epoch / step | wall s | mining s | steps s | waiting s |", "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {k} | {r['epoch_vs_step'][k]:.2f} | {t['wall_s']:.2f} | {t['mine_s']:.2f} | {t['step_s']:.2f} | "
                f"{t['wait_s']:.2f} |" for k, t in split.items()]
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


def _not_measured(name: str, why: str) -> list[str]:
    return [f"Not measured yet: no `bench/results/{name}` ({why})."]


def scaling(results: Path) -> list[str]:
    """bench/scaling.py: seconds and peak memory per step and catalogue size, the growth exponents, the 500k
    extrapolation."""
    r = load(results, "scaling.json")
    if r is None:
        return _not_measured("scaling.json", "run `bench/scaling.py` on a quiet machine")
    sizes = [n for n in r["sizes"] if n]
    out = [f"`bench/results/scaling.json`: synthetic catalogs of {', '.join(f'{n:,}' for n in sizes)} photos "
           f"({r['photo_size']} px), {r['cpu_count']} CPUs, one epoch of {r['queries_per_epoch']} queries; seconds / "
           "peak MB of the step's process; exponents of a power-law fit (1 linear, 0 constant)", "",
           "| step | " + " | ".join(f"{n:,} photos" for n in sizes) + " | time exp. | memory exp. |",
           "|---|" + "---:|" * (len(sizes) + 2)]
    for name, g in r["growth"].items():
        cells = " | ".join(f"{s:.1f} s / {m:,.0f}" for s, m in zip(g["seconds"], g["self_peak_mb"]))
        out.append(f"| {name} | {cells} | {_num(g['time_exponent'], '.2f')} | {_num(g['memory_exponent'], '.2f')} |")
    out += ["", "| train.batch_size | " + " | ".join(f"{p} MB" for p in ("whitening", "epoch", "validation")) + " |",
            "|---:|---:|---:|---:|"]
    for b, run in r["batch_sweep"].items():
        t = run.get("steps", {}).get("train", {})
        out.append(f"| {b} | " + " | ".join(_num(t.get(p, {}).get("self_peak_mb"), ",.0f")
                                            for p in ("whitening", "epoch", "validation")) + " |")
    x = r["extrapolated_500k"]
    parts = ", ".join(f"{k} {v / 3600:.2f} h / {x['h100_seconds'].get(k, 0) / 3600:.2f} h"
                      for k, v in x["cpu_seconds"].items() if v is not None and k in x["h100_seconds"])
    return out + ["", f"Extrapolated to 500k photos (this CPU / one H100): {parts}; nightly with one epoch "
                  f"~{x['cpu_nightly_hours_1_epoch']} h / ~{x['h100_nightly_hours_1_epoch']} h. {x['note']}."]


def gpu(results: Path) -> list[str]:
    """bench/gpu.py on a lent GPU: each section's figure and its ratio to the H100 limit."""
    r = load(results, "gpu.json")
    if r is None:
        return _not_measured("gpu.json", "no GPU was lent yet; `bench/gpu.py --device cpu` proves the script runs")
    env = r["sections"].get("environment", {})
    out = [f"`bench/results/gpu.json`: {env.get('gpu', r['device'])}, torch {env.get('torch')}, faiss "
           f"{env.get('faiss')}; {r['seconds']} s in all", "", "| section | figure | value | × H100 limit |",
           "|---|---|---:|---:|"]
    keys = {"forward_lite0": "forward_lite0", "forward_vgg16": "forward_vgg16", "train_step_lite0": "train_step_lite0",
            "train_step_vgg16": "train_step_vgg16", "decode": "decode_nvjpeg", "embed_nvjpeg": "embed_nvjpeg_steady",
            "embed_cpu_decode": "embed_cpu_decode_steady", "search_torch": "search_exact_knn"}
    for name, sec in r["sections"].items():
        if "error" in sec or "skipped" in sec:
            out.append(f"| {name} | {'error' if 'error' in sec else 'skipped'} | {sec.get('error', sec.get('skipped'))} | - |")
            continue
        for k, v in sec.items():
            if k.endswith("_per_s") and isinstance(v, (int, float)):
                out.append(f"| {name} | {k} | {v:,.1f} | {_num(r['ratios'].get(keys.get(name, '')), '.2f')} |")
    return out
