"""Quality tables of bench/REPORT.md: real catalog, retrieval quality runs, denoise rules, re-ranking.

Every function renders markdown lines from the committed JSON under a results folder (``bench/results``);
``bench/render_tables.py`` assembles them into the report.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

QUALITY_METRICS = ("recall_at_1", "recall_at_5", "mean_ap", "product_recall_at_5")


def load(results: Path, name: str) -> dict | list | None:
    """The JSON ``results/name``, or None when it is not committed."""
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


def realshop(results: Path) -> list[str]:
    r = load(results, "realshop.json")
    if r is None:
        return ["No `bench/results/realshop.json` committed."]
    d = r["denoise"]
    out = [f"`bench/results/realshop.json` ({r['date'][:10]}, {r['machine']}): {r['catalog']}, "
           f"{r['products']} products",
           "", "| stage | seconds | photos | photos/s |", "|---|---:|---:|---:|"]
    out += [f"| {s['stage']} | {s['seconds']} | {s['photos'] or ''} | {s['photos_per_s'] or ''} |" for s in r["stages"]]
    t = r["train"]
    out += ["", f"Training: {t['epochs']} epochs, {t['seconds_per_epoch']} s/epoch. Denoise at threshold "
            f"{d['threshold']}: precision {d['precision']}, recall {d['recall']} ({d['dropped']} dropped, "
            f"{d['noise']} labelled noise).", "",
            "| variant | queries | Recall@1 | Recall@5 | Recall@10 | mAP | product R@5 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {v['variant']} | {v['queries']} | {v['recall_at_1']:.3f} | {v['recall_at_5']:.3f} | "
            f"{v['recall_at_10']:.3f} | {v['mean_ap']:.3f} | {v.get('product_recall_at_5', float('nan')):.3f} |"
            for v in r["variants"]]
    if r.get("served"):
        out += ["", f"Served by the nightly (baseline gate): {r['served']}."]
    return out + match_levels(r.get("match_levels")) + _realshop_denoise(r)


def match_levels(levels: dict | None) -> list[str]:
    """The served index's match levels: each threshold and, on the calibration's held-back photos, how many
    reach it and how often their top-1 product is right (product-level precision and recall)."""
    if not levels or levels.get("same") is None:
        return []
    cal = levels["calibration"]
    same_note = "" if cal.get("same_reached", True) else " (precision never reached 0.95: a copy of a catalog photo)"
    out = ["", f"Match levels of the served index ({levels['model_id']}): {cal['rule']}. Calibrated on "
           f"{cal['calibration_photos']} of the index's photos; held back: {cal['held_back_photos']} photos of "
           f"{cal['held_back_products']} other products.", "",
           "| level | from score | held-back photos at or above | top-1 precision | recall |", "|---|---:|---:|---:|---:|"]
    for name in ("same", "similar"):
        f = cal["held_back"][name]
        out.append(f"| {name} | {levels[name]:.4f}{same_note if name == 'same' else ''} | {f['photos']} | "
                   f"{_num3(f['precision'])} | {_num3(f['recall'])} |")
    return out + [f"| none | below {levels['similar']:.4f} | {cal['held_back_none']} | - | - |"]


def _num3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _realshop_denoise(r: dict) -> list[str]:
    """The noise-separation table and the second denoise pass, where the run measured them."""
    out = []
    if r.get("denoise_separation"):
        out += ["", "| descriptor | products | photos | noise | AUC | best precision | best recall |",
                "|---|---|---:|---:|---:|---:|---:|"]
        out += [f"| {x['descriptor']} | {x['products']} | {x['photos']} | {x['noise']} | {x['auc']:.3f} | "
                f"{x['best_precision']:.3f} | {x['best_recall']:.3f} |" for x in r["denoise_separation"]]
    if r.get("second_pass"):
        sp = r["second_pass"]
        out += ["", f"Second pass: {sp['message']}.", "", "| photos of | pass | photos | noise | dropped | precision "
                "| recall |", "|---|---|---:|---:|---:|---:|---:|"]
        out += [f"| {part} | {which} | {x['photos']} | {x['noise']} | {x['dropped']} | {x['precision']} | "
                f"{x['recall']} |" for part in ("all", "rejudged") for which, x in sp[part].items()]
    return out


def quality(name: str, r: dict) -> list[str]:
    """One quality run (``bench/results/<name>``): mean ± std over its seeds per variant and photo set."""
    out = [f"`bench/results/{name}` ({r['date'][:10]}, {r['machine']}): seeds {r['seeds']}, "
           f"settings changed: {r['settings_changed'] or 'none'}; {r['total_seconds']:.0f} s", "",
           "| variant | trained on | Recall@1 | Recall@5 | mAP | product R@5 |", "|---|---|---:|---:|---:|---:|"]
    for s in r["summary"]:
        cells = " | ".join(f"{s[m]:.3f} ± {s[m + '_std']:.3f}" if m in s else "-" for m in QUALITY_METRICS)
        out.append(f"| {s['variant']} | {s['photos'] or '-'} | {cells} |")
    return out


def multi_seed_runs(results: Path) -> list[str]:
    """The full table of every footwear-dev quality run over three or more seeds (splits), by file name."""
    out: list[str] = []
    for path in sorted(results.glob("quality-*.json")):
        r = json.loads(path.read_text())
        if len(r["seeds"]) >= 3:
            out += [*([""] if out else []), *quality(path.name, r)]
    return out or ["No quality run over three or more seeds committed."]


NOISY_DEFAULT_RUNS = ("quality-footwear-dev-noisy.json", "quality-footwear-dev-noisy-seeds12.json")


def raw_vs_denoised(results: Path) -> list[str]:
    """footwear-dev-noisy at the defaults, raw vs denoised training, pooled over the seeds of ``NOISY_DEFAULT_RUNS``
    (runs of the same code and settings on different splits): mean ± sample std, then trained denoised − raw
    per seed."""
    runs = [r for r in (load(results, n) for n in NOISY_DEFAULT_RUNS) if r is not None]
    if not runs or any(_differences(r["train_settings"], runs[0]["train_settings"]) for r in runs):
        return ["No footwear-dev-noisy runs at one set of settings committed."]
    seeds = [s for r in runs for s in r["per_seed"]]
    out = [f"{', '.join(f'`bench/results/{n}`' for n in NOISY_DEFAULT_RUNS)}: seeds {[s['seed'] for s in seeds]}, "
           "genuine test photos, mean ± std over the seeds", "",
           "| variant | trained on | Recall@1 | Recall@5 | mAP | product R@5 |", "|---|---|---:|---:|---:|---:|"]
    for variant, photos in (("imagenet", None), ("kmeans_init", "raw"), ("trained", "raw"),
                            ("kmeans_init", "denoised"), ("trained", "denoised")):
        rows = [x for s in seeds for x in s["rows"] if x["variant"] == variant and x.get("photos") == photos]
        cells = " | ".join(_mean_std([x[m] for x in rows]) for m in QUALITY_METRICS)
        out.append(f"| {variant} | {photos or '-'} | {cells} |")
    out += ["", "| seed | trained denoised − raw: Recall@1 | mAP |", "|---|---:|---:|"]
    for s in seeds:
        tr = {x.get("photos"): x for x in s["rows"] if x["variant"] == "trained"}
        out.append(f"| {s['seed']} | {tr['denoised']['recall_at_1'] - tr['raw']['recall_at_1']:+.3f} | "
                   f"{tr['denoised']['mean_ap'] - tr['raw']['mean_ap']:+.3f} |")
    return out


def _differences(a: dict, b: dict) -> set[str]:
    """Settings two runs both recorded with different values, the split seed aside (a later run may record a
    setting added since, at its default)."""
    return {k for k in a.keys() & b.keys() if k != "seed" and a[k] != b[k]}


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def denoise_rules(results: Path) -> list[str]:
    r = load(results, "denoise_rules.json")
    if r is None:
        return ["No `bench/results/denoise_rules.json` committed."]
    out = [f"`bench/results/denoise_rules.json`: {r['catalog']}", "",
           "| rule | dropped | genuine dropped | precision | recall | recall by noise kind |",
           "|---|---:|---:|---:|---:|---|"]
    for name, v in r["rules"].items():
        kinds = ", ".join(f"{k} {x:.2f}" for k, x in v.get("recall_by_kind", {}).items())
        out.append(f"| {name} | {v['dropped']} | {v.get('genuine_dropped', '')} | {v['precision']} | "
                   f"{v['recall']} | {kinds} |")
    return out


def rerank(results: Path) -> list[str]:
    r = load(results, "rerank.json")
    if r is None:
        return ["No `bench/results/rerank.json` committed."]
    out = [f"`bench/results/rerank.json` ({r['date'][:10]}): {r['dataset']}, {r['photos']} genuine photos, mean over "
           f"seeds {r['seeds']}", "", "| re-ranking | Recall@1 | Recall@5 | mAP | product R@1 | product R@5 |",
           "|---|---:|---:|---:|---:|---:|"]
    return out + [f"| {name} | {m['recall_at_1']:.3f} | {m['recall_at_5']:.3f} | {m['mean_ap']:.3f} | "
                  f"{m['product_recall_at_1']:.3f} | {m['product_recall_at_5']:.3f} |"
                  for name, m in r["summary"].items()]


# Runs made before quality.py recorded its effective train settings: what they ran at.
RECORDED_AT = {"quality-footwear-dev-blocks1.json": {"trainable_blocks": 1},  # the default until 2026-12-02
               "quality-footwear-dev-blocks2-3seeds.json": {"trainable_blocks": 2}}  # the default until 2026-12-04
# The 3-seed run at each number of trainable blocks: the sweep compares a one-seed run with it on the same seed.
REFERENCE_BY_BLOCKS = {1: "quality-footwear-dev-blocks1.json", 2: "quality-footwear-dev-blocks2-3seeds.json",
                       3: "quality-footwear-dev.json"}


def recipe(results: Path) -> list[str]:
    """One row per footwear-dev quality run: what was changed, the seeds, trained vs ImageNet (mean), and the
    3-seed run at the same number of trainable blocks (``REFERENCE_BY_BLOCKS``) on the same seeds (splits): the
    sweep's comparison."""
    out = ["| run (JSON) | trainable blocks | changed | denoise kept | seeds | ImageNet R@1 / mAP | "
           "trained R@1 / mAP | trained - ImageNet | 3-seed run at these blocks, on these seeds: trained R@1 / mAP |",
           "|---|---:|---|---|---|---|---|---|---|"]
    for path in sorted(results.glob("quality-footwear-dev*.json")):
        r = json.loads(path.read_text())
        train = r.get("train_settings") or RECORDED_AT.get(path.name, {})
        rows = {s["variant"]: s for s in r["summary"] if s["photos"] in (None, "denoised")}
        if "trained" not in rows:
            continue
        base, tr = rows["imagenet"], rows["trained"]
        blocks = train.get("trainable_blocks") or r["settings_changed"].get("train.trainable_blocks", "?")
        same = _reference_on_seeds(results, r, int(blocks)) if str(blocks).isdigit() else None
        kept = f"{r['denoise']['kept']} of {r['denoise']['photos']}" if r.get("denoise") else "?"
        out.append(f"| {path.name} | {blocks} | {r['settings_changed'] or 'none'} | {kept} | "
                   f"{r['seeds']} | {base['recall_at_1']:.3f} / {base['mean_ap']:.3f} | "
                   f"{tr['recall_at_1']:.3f} / {tr['mean_ap']:.3f} | "
                   f"{tr['recall_at_1'] - base['recall_at_1']:+.3f} / {tr['mean_ap'] - base['mean_ap']:+.3f} | "
                   f"{'%.3f / %.3f' % same if same else '-'} |")
    return out


def _reference_on_seeds(results: Path, run: dict, blocks: int) -> tuple[float, float] | None:
    """The 3-seed reference run at ``blocks`` on ``run``'s seeds, where one exists for the same dataset."""
    ref = load(results, REFERENCE_BY_BLOCKS.get(blocks, "-"))
    return _trained_on_seeds(ref, run["seeds"]) if ref is not None and ref["dataset"] == run["dataset"] else None


def _trained_on_seeds(run: dict, seeds: list[int]) -> tuple[float, float] | None:
    """Mean trained (denoised) Recall@1 and mAP of ``run`` over ``seeds``; None when it lacks one of them."""
    rows = [x for s in run["per_seed"] if s["seed"] in seeds for x in s["rows"]
            if x["variant"] == "trained" and x.get("photos") in (None, "denoised")]
    if len(rows) != len(seeds):
        return None
    return (sum(x["recall_at_1"] for x in rows) / len(rows), sum(x["mean_ap"] for x in rows) / len(rows))
