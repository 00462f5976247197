"""The README's "Results" table, rendered from the committed bench/results/*.json (``bench/render_tables.py``).

The table sits between :data:`START` and :data:`END` in README.md; ``render_tables.py --write`` replaces what is
between them and ``--check`` (and ``tests/test_bench_report.py``) fails when the README differs from the rendering.
One row per figure a new user asks about first, each naming its JSON; a JSON not committed yet renders as
"not measured". Reads nothing but the JSON: the same files always give the same table.
"""

from __future__ import annotations

import json
from pathlib import Path

START = "<!-- results: rendered from bench/results/*.json by bench/render_tables.py --write; do not edit -->"
END = "<!-- results: end -->"
HEAD = ["| what | result | baseline or target | JSON |", "|---|---|---|---|"]


def _load(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


def _variant(r: dict, name: str) -> dict:
    return next(v for v in r["variants" if "variants" in r else "summary"] if v["variant"] == name)


def quality_rows(results: Path) -> list[str]:
    out = []
    r = _load(results, "realshop.json")
    if r:
        t, b, d = _variant(r, "trained"), _variant(r, "imagenet"), r["denoise"]
        out += [f"| `nightly` with default settings on real shoe photos ({r['catalog']}: {r['products']} products, "
                f"{d['photos']} photos, {d['noise']} labelled noise), one split | trained NetVLAD Recall@1 "
                f"**{t['recall_at_1']:.3f}**, mAP **{t['mean_ap']:.3f}** | ImageNet GeM: Recall@1 "
                f"{b['recall_at_1']:.3f}, mAP {b['mean_ap']:.3f} | `realshop.json` ({r['date'][:10]}) |",
                f"| denoise at the defaults (threshold {d['threshold']} + cross-product rule), same catalog | precision "
                f"**{d['precision']:.3f}**, recall **{d['recall']:.3f}** | {_one_threshold(results)} | `realshop.json` |",
                *_levels_row(r)]
    q = _load(results, "quality-footwear-dev.json")
    if q:
        t, b = _variant(q, "trained"), _variant(q, "imagenet")
        out.append(f"| trained NetVLAD on footwear-dev, {len(q['seeds'])} seeds, defaults | Recall@1 "
                   f"**{t['recall_at_1']:.3f} ± {t['recall_at_1_std']:.3f}**, mAP **{t['mean_ap']:.3f} ± "
                   f"{t['mean_ap_std']:.3f}** | ImageNet GeM: {b['recall_at_1']:.3f} ± {b['recall_at_1_std']:.3f}, "
                   f"{b['mean_ap']:.3f} ± {b['mean_ap_std']:.3f} | `quality-footwear-dev.json` ({q['date'][:10]}) |")
    return out


def _levels_row(r: dict) -> list[str]:
    """The served index's match levels on the real catalog: each threshold, its held-back precision / recall."""
    lv = r.get("match_levels")
    if not lv or lv.get("same") is None:
        return []
    cal = lv["calibration"]
    same = cal["held_back"]["same"]
    same_text = (f"same from {lv['same']:.3f}: precision **{_f3(same['precision'])}**, recall {_f3(same['recall'])}"
                 if cal.get("same_reached", True) else "same: **never** (no score reaches 0.95 precision)")
    sim = cal["held_back"]["similar"]
    return [f"| match levels of the served index, same catalog, {cal['held_back_photos']} held-back photos of "
            f"{cal['held_back_products']} products (top-1 product right?) | {same_text}; similar from "
            f"{lv['similar']:.3f}: precision **{_f3(sim['precision'])}**, recall {_f3(sim['recall'])} | same: "
            "precision ≥ 0.95 on calibration photos; similar: 95 % of them | `realshop.json` |"]


def _f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def api_rows(results: Path) -> list[str]:
    a = _load(results, "api.json")
    if not a or "levels" not in a:
        return []
    lv = {r["concurrency"]: r for r in a["levels"]}
    cells = ", ".join(f"{c}: {r['api']['p50_ms']:.0f} / {r['api']['p99_ms']:.0f} ms" for c, r in lv.items())
    top, ratios = lv[max(lv)], " / ".join(f"{r['p50_ratio']:.2f}" for r in lv.values())
    return [f"| search API on loopback (`POST /search`, {a['query_px']}-px JPEG, k={a['k']}), "
            f"{a['index']['photos']:,}-photo index | p50 / p99 at concurrency {cells}; **{top['api']['req_per_s']:.1f}"
            f" req/s** at {max(lv)} | the bare in-process call: API/bare p50 "
            f"{ratios}× | `api.json` |"]


def _one_threshold(results: Path) -> str:
    rules = (_load(results, "denoise_rules.json") or {}).get("rules", {})
    x = rules.get("global 1.0")
    return f"threshold 1.0 alone: {x['precision']:.3f} / {x['recall']:.3f} (`denoise_rules.json`)" if x else "-"


def speed_rows(results: Path) -> list[str]:
    out = []
    e = _load(results, "embed.json")
    if e and "ratio_vs_limit" in e:
        out.append(f"| embedding step, {e['photos']:,} photos of {e['photo_size']} px, {e['backbone']} "
                   f"{e['image_size']} px, CPU | **{e['step_img_per_s']:.1f} img/s = {e['ratio_vs_limit']:.2f}× the "
                   f"pipeline limit**; first batch after {e['step_start_s']:.1f} s | limit 1/(1/F+1/D) = "
                   f"{e['limit_img_per_s']:.1f} img/s (forward F {e['bare_forward_img_per_s']:.1f}, decode D "
                   f"{e['decode_img_per_s']:.0f}); target 0.9× | `embed.json` |")
    t = _load(results, "train.json")
    if t and "epoch_vs_step" in t:
        ips = t["images_per_s"]
        out.append(f"| training epoch vs its step rate (Lite0 224 px, K=64, 2 loader workers) | **"
                   f"{t['epoch_vs_step']['uncached']:.2f}×** uncached ({ips['train epoch']:.1f} vs "
                   f"{ips['train step']:.1f} img/s), **{t['epoch_vs_step']['cached']:.2f}×** with the frozen-stage "
                   f"cache | target 0.9× | `train.json` |")
    w = _load(results, "warehouse.json")
    if w and "live_ms" in w:
        live, snap = w["live_ms"], w["timings"]["analyst query (snapshot.duckdb)"]["p50_ms"]
        out.append(f"| analyst join (images × denoise × products) over {w['images']:,} photos, live views | **"
                   f"{live['materialised_warm']:.0f} ms** warm, {live['materialised_cold']:.0f} ms cold (new "
                   f"connection); snapshot {snap:.0f} ms | target < {w['target_ms']} ms; computed views "
                   f"{live['computed_warm']:.0f} ms | `warehouse.json` |")
    return out + _search_row(results)


def _search_row(results: Path) -> list[str]:
    s = _load(results, "search.json")
    if not s or "vectors" not in s:
        return []
    size = s["sizes"][-1]
    d = size.get("defaults") or size.get("chosen")
    if not d:
        return []
    exact = next((x for x in size["rows"] if x["kind"] == "flat_ip"), None)
    base = f"exact: p50 {exact['p50_ms']:.0f} ms, {exact['batch_qps']:,.0f} batched q/s" if exact else "-"
    return [f"| search, {size['vectors']:,} vectors shaped like trained descriptors, default index | p99 **"
            f"{d['p99_ms']:.1f} ms**, recall@10 **{d['recall_at_10']:.3f}** of exact, {d['batch_qps']:,.0f} batched "
            f"q/s, {d['mb_per_million']:,.0f} MB per million photos | targets p99 ≤ 5 ms, recall ≥ "
            f"{s['target_recall_at_10']}; {base} | `search.json` |"]


def scale_rows(results: Path) -> list[str]:
    out = []
    r = _load(results, "scaling.json")
    if r:
        x = r["extrapolated_500k"]
        out.append(f"| nightly at 500k photos, one training epoch (extrapolated from {', '.join(f'{n:,}' for n in r['sizes'] if n)} "
                   f"photos) | ~{x['cpu_nightly_hours_1_epoch']} h on this CPU, ~{x['h100_nightly_hours_1_epoch']} h "
                   f"on one H100 | growth per step and memory: docs/scale.md | `scaling.json` |")
    g = _load(results, "gpu.json")
    out.append(f"| GPU (`bench/gpu.py`, one command on a lent machine) | "
               + (f"measured on {g['sections'].get('environment', {}).get('gpu', g.get('device'))} | ratios to the "
                  "H100 limits in bench/REPORT.md | `gpu.json` |" if g else
                  "**not measured**: no GPU was lent to this work | `bench/gpu.py --device cpu` runs in the tests | - |"))
    return out


def readme_block(results: Path) -> str:
    """The rendered table between the markers (markers included)."""
    rows = quality_rows(results) + speed_rows(results) + api_rows(results) + scale_rows(results)
    return "\n".join([START, *HEAD, *rows, END])


def splice(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block``; a README without them is an error."""
    if START not in readme or END not in readme:
        raise ValueError(f"README.md has no results markers ({START!r} ... {END!r})")
    before, rest = readme.split(START, 1)
    return before + block + rest.split(END, 1)[1]
