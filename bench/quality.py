"""Retrieval quality on real shoe photos (../shared/data), mean and spread over seeds: the real claim.

For each dataset (a catalog folder: each folder is a product, its first sorted photo is photo 0;
``labels.csv`` may mark gallery noise): ingest into a scratch home, embed + denoise once (the project's
ImageNet denoise step, default threshold); then per seed a new product-level split (``train.seed``),
k-means + training on each requested photo set (``--photos``: ``denoised`` is what ``nightly`` trains on,
``raw`` the photos as crawled), and scoring on the *genuine* test photos (noise removed by the labels, not
by denoise; every photo when there are no labels):

* (a) ``imagenet``: the off-the-shelf ImageNet descriptor of the backbone (GeM), no training;
* (b) ``kmeans_init``: NetVLAD with k-means centroids and PCA whitening, before training;
* (c) ``trained``: NetVLAD after training.

Every setting is the pipeline default unless given with ``--set key=value`` (printed and stored). Prints
one table per dataset (mean +- std over the seeds, and every seed) and writes
``bench/results/quality-<dataset>.json``, one file per dataset run. Sizes are flags: the default run (footwear-dev,
seed 0, the denoised photos) takes 15-17 minutes on 2 CPU cores at the defaults (ingest + embed + denoise
~2 min, k-means + training 13-15 min per seed and photo set); ``--seeds 0 1 2`` gives the spread the README
quotes (~42 min), ``--datasets footwear-dev footwear-dev-noisy --photos raw denoised`` the raw-vs-denoised check.

    .venv/bin/python bench/quality.py [--datasets footwear-dev] [--seeds 0] [--photos denoised]
                                      [--set train.epochs=4 ...] [--tag T]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

from bench.realshop import variant_rows  # noqa: E402
from bench.results_io import write_result  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "mean_ap", "product_recall_at_5")


def prepare(name: str, overrides: dict, home: Path) -> tuple[dict, dict]:
    """Ingest + embed + denoise once; (noise labels by image id, denoise summary)."""
    from core.settings import Settings
    from tasks.denoise import denoise
    from tasks.ingest import ingest_catalog
    from warehouse import open_warehouse

    settings = Settings.load(home=home, overrides=overrides)
    ingest_catalog(settings, DATA / name, name=name)
    run = denoise(settings)
    rows = open_warehouse(settings).query(
        "SELECT d.image_id, d.kept, d.threshold, i.is_noise FROM denoise d JOIN images_current i USING (image_id) "
        "WHERE d.run_id = ? AND d.reason IS DISTINCT FROM 'bad_image'", [run]).to_pylist()
    labels = {r["image_id"]: bool(r["is_noise"]) for r in rows}  # no label = genuine
    dropped = {r["image_id"] for r in rows if not r["kept"]}
    noise = {i for i, n in labels.items() if n}
    hits = len(dropped & noise)
    summary = {"photos": len(rows), "kept": len(rows) - len(dropped), "labelled_noise": len(noise),
               "threshold": rows[0]["threshold"] if rows else None,
               "precision": round(hits / len(dropped), 4) if dropped and noise else None,
               "recall": round(hits / len(noise), 4) if noise else None}
    return labels, summary


def one_seed(overrides: dict, home: Path, seed: int, photo_sets: list[str], labels: dict) -> dict:
    """A split with ``seed``; train on each photo set; score every variant on the genuine test photos."""
    from core.settings import Settings
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split
    from tasks.train import model_id_of_run, train_model
    from warehouse import open_warehouse

    settings = Settings.load(home=home, overrides={**overrides, "train.seed": seed})
    wh = open_warehouse(settings)
    split = make_split(settings)
    rows, seconds = [], {}
    for k, photos in enumerate(photo_sets):
        t0 = time.perf_counter()
        km = kmeans_init(settings, split, photos)
        model = model_id_of_run(settings, train_model(settings, split, kmeans_run_id=km, photos=photos))
        seconds[f"kmeans+train {photos}"] = round(time.perf_counter() - t0, 1)
        curve = [{key: round(v, 4) if isinstance(v, float) else v for key, v in e.items()} for e in wh.query(
            "SELECT epoch, loss, val_recall_at_1 FROM train_metrics WHERE model_id = ? ORDER BY epoch",
            [model]).to_pylist()]  # the schedule question: where validation Recall@1 peaked
        for row in variant_rows(settings, wh, model, labels, baseline_too=k == 0):
            rows.append({**row, "photos": None if row["variant"] == "imagenet" else photos, "seed": seed,
                         "epochs": None if row["variant"] == "imagenet" else len(curve),
                         **({"per_epoch": curve} if row["variant"] == "trained" else {})})
    return {"seed": seed, "rows": rows, "seconds": seconds}


def summarise(per_seed: list[dict]) -> list[dict]:
    """Mean and (sample) standard deviation over seeds of each (variant, photos) row."""
    groups: dict[tuple, list[dict]] = {}
    for run in per_seed:
        for r in run["rows"]:
            groups.setdefault((r["variant"], r["photos"]), []).append(r)
    out = []
    for (variant, photos), rows in groups.items():
        entry = {"variant": variant, "photos": photos, "seeds": len(rows), "queries": [r["queries"] for r in rows]}
        for m in METRICS:
            values = [r[m] for r in rows]
            entry[m] = round(statistics.fmean(values), 4)
            entry[m + "_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def print_table(result: dict) -> None:
    d = result["denoise"]
    print(f"\nquality: {result['dataset']}, seeds {result['seeds']}, settings changed: {result['settings_changed'] or 'none'}")
    print(f"denoise: {d['photos']} photos, kept {d['kept']}, precision {d['precision']}, recall {d['recall']}")
    print(f"{'variant':<12} {'trained on':<10} " + " ".join(f"{m:>15}" for m in ("R@1", "R@5", "R@10", "mAP", "product R@5")))
    for r in result["summary"]:
        cells = " ".join(f"{r[m]:>7.3f} ±{r[m + '_std']:.3f}" for m in METRICS)
        print(f"{r['variant']:<12} {r['photos'] or '-':<10} {cells}")
    for run in result["per_seed"]:
        print(f"seed {run['seed']}: " + "; ".join(
            f"{r['variant']}{'/' + r['photos'] if r['photos'] else ''} R@1 {r['recall_at_1']:.3f} mAP {r['mean_ap']:.3f}"
            for r in run["rows"]) + f"  ({run['seconds']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["footwear-dev"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="splits to train and score (default: 0; "
                    "the README's spread: 0 1 2)")
    ap.add_argument("--photos", nargs="+", default=["denoised"], choices=["raw", "denoised"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting (default: none)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (quality-<dataset>[-tag].json)")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    missing = [name for name in args.datasets if not (DATA / name).is_dir()]
    if missing:
        print(f"quality: skipped, no {', '.join(missing)} under {DATA} (../shared/data is not on this machine)")
        return 0
    from core.settings import Settings

    for name in args.datasets:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"quality-{name}-") as tmp:
            home = Path(tmp) / "home"
            labels, denoise_summary = prepare(name, overrides, home)
            train_settings = json.loads(Settings.load(home=home, overrides=overrides).section_json("train"))
            per_seed = [one_seed(overrides, home, seed, args.photos, labels) for seed in args.seeds]
        result = {"bench": "quality", "dataset": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}",
                  "seeds": args.seeds, "photo_sets": args.photos, "settings_changed": overrides,
                  "train_settings": train_settings,
                  "denoise": denoise_summary, "summary": summarise(per_seed), "per_seed": per_seed,
                  "total_seconds": round(time.perf_counter() - started, 1)}
        print_table(result)
        write_result(result, f"quality-{name}{'-' + args.tag if args.tag else ''}.json")  # one file per dataset run: no read-modify-write of a shared file
    return 0


if __name__ == "__main__":
    sys.exit(main())
