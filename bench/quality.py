"""Retrieval quality ablation on real photo datasets (../shared/data), as the NetVLAD paper's figure.

For each dataset (a catalog folder: each object is a product, the first sorted file its photo 0):
ingest into a scratch home, embed + denoise (the project's ImageNet denoise step), one product-level
split, then k-means + training twice, on the raw photos and on the photos denoise kept. The evaluate
step scores, on the same test photos (all test photos, raw), (a) the off-the-shelf ImageNet global
descriptor, (b) NetVLAD at k-means init, (c) trained NetVLAD, (b)/(c) for both photo sets.

CPU-sized by default (128 px, 4 epochs, K=32, 256-d); every choice is a flag and printed. Prints a
table per dataset and writes bench/results/quality-<dataset>.json. A dataset takes ~5-15 min on 2 CPU cores.

    .venv/bin/python bench/quality.py [--datasets eth80 coil100] [--epochs 4] [--image-size 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_dataset(name: str, args, home: Path) -> dict:
    from shoesearch.settings import Settings
    from tasks.denoise import denoise
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest_catalog
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split
    from tasks.train import model_id_of_run, train_model
    from warehouse import open_warehouse

    overrides = {
        "embed.image_size": args.image_size, "train.image_size": args.image_size, "train.device": args.device,
        "train.epochs": args.epochs, "train.clusters": args.clusters, "train.descriptor_dim": args.dim,
        "train.queries_per_epoch": args.queries, "train.kmeans_images": 300, "train.kmeans_descriptors": 20_000,
        "train.max_positives": args.positives, "train.hard_negatives": args.negatives,
        "train.negatives_pool": args.pool, "train.cache_refresh_queries": args.refresh, "train.lr": args.lr,
        "train.num_workers": 0, "embed.num_workers": 0,
    }
    settings = Settings.load(home=home, overrides=overrides)
    times = {}
    t0 = time.perf_counter()
    ingest_catalog(settings, DATA / name, name=name)
    den = denoise(settings)  # embeds every photo with the ImageNet model first
    times["ingest+embed+denoise"] = time.perf_counter() - t0
    wh = open_warehouse(settings)
    kept = wh.query("SELECT count(*) FILTER (WHERE kept) AS k, count(*) AS n FROM denoise WHERE run_id = ?",
                    [den]).to_pylist()[0]
    split = make_split(settings)
    models = {}
    for photos in ("raw", "denoised"):
        t0 = time.perf_counter()
        km = kmeans_init(settings, split, photos)
        models[photos] = model_id_of_run(settings, train_model(settings, split, kmeans_run_id=km, photos=photos))
        times[f"kmeans+train ({photos})"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluate(settings, models["raw"], compare=[models["denoised"]], photos="raw")
    times["evaluate"] = time.perf_counter() - t0
    rows = wh.query("SELECT variant, photos, queries, recall_at_1, recall_at_5, recall_at_10, mean_ap "
                    "FROM evaluations WHERE run_id = ?", [ev]).to_pylist()
    epochs = {p: wh.query("SELECT epoch, loss, val_recall_at_1 FROM train_metrics WHERE model_id = ? ORDER BY epoch",
                          [m]).to_pylist() for p, m in models.items()}
    test_products = wh.query("SELECT count(*) AS n FROM splits WHERE run_id = ? AND split = 'test'",
                             [split]).column("n")[0].as_py()
    return {"dataset": name, "denoise_kept": kept["k"], "photos": kept["n"], "test_products": test_products,
            "rows": rows, "epochs": epochs, "seconds": {k: round(v, 1) for k, v in times.items()}}


def table(result: dict) -> str:
    lines = [f"{result['dataset']}: {result['photos']} photos, denoise kept {result['denoise_kept']}; "
             f"test: {result['test_products']} products, {result['rows'][0]['queries']} query photos (raw)",
             "| variant | trained on | Recall@1 | Recall@5 | Recall@10 | mAP |", "|---|---|---:|---:|---:|---:|"]
    names = {"imagenet": "(a) ImageNet global", "kmeans_init": "(b) NetVLAD k-means init",
             "trained": "(c) NetVLAD trained"}
    for r in result["rows"]:
        on = "-" if r["variant"] == "imagenet" else r["photos"]
        lines.append(f"| {names[r['variant']]} | {on} | {r['recall_at_1']:.3f} | {r['recall_at_5']:.3f} | "
                     f"{r['recall_at_10']:.3f} | {r['mean_ap']:.3f} |")
    for photos, eps in result["epochs"].items():
        lines.append(f"epochs ({photos}): " + ", ".join(
            f"{e['epoch']}: loss {e['loss']:.4f} val R@1 {e['val_recall_at_1']:.3f}" for e in eps))
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["eth80", "coil100"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--clusters", type=int, default=32)
    ap.add_argument("--dim", type=int, default=256, help="PCA-whitened descriptor size")
    ap.add_argument("--queries", type=int, default=600, help="queries per epoch (0 = all training photos)")
    ap.add_argument("--positives", type=int, default=3)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--pool", type=int, default=300, help="random negatives per query before the hardest")
    ap.add_argument("--refresh", type=int, default=200, help="queries between descriptor-cache refreshes")
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()

    import torch

    config = {k: v for k, v in vars(args).items() if k != "datasets"}
    config["backbone"] = "efficientnet_lite0 (train.backbone default; last block trained, rest frozen)"
    config["threads"] = torch.get_num_threads()
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    missing = [name for name in args.datasets if not (DATA / name).is_dir()]
    if missing:
        print(f"quality: skipped, no {', '.join(missing)} under {DATA} (../shared/data is not on this machine)")
        return
    for name in args.datasets:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"quality-{name}-") as tmp:
            result = run_dataset(name, args, Path(tmp) / "home")
        result["config"], result["total_s"] = config, round(time.perf_counter() - started, 1)
        print(table(result))
        print(f"total {result['total_s']} s\n")
        out = Path(__file__).resolve().parent / "results" / f"quality-{name}.json"  # one file per dataset run:
        out.parent.mkdir(exist_ok=True)  # no read-modify-write of a shared file (two runs would race)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"dataset": name, "result": result}, indent=2, default=str))
        tmp.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
