"""Threshold study for denoise: distances to the first photo, genuine views vs injected noise.

Real multi-view photos (``../shared/data/{eth80,coil100}``, one folder per object): per object the
first view is the anchor, ``--views`` other views are genuine, and photos of objects from other
categories are injected as noise (``--noise-rate``). Prints precision/recall of the dropped set at
candidate thresholds and writes bench/results/denoise_threshold.json.

    .venv/bin/python bench/denoise_threshold.py [--data ../shared/data] [--views 8]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/ (bench/warehouse.py)

from bench.results_io import write_result  # noqa: E402

THRESHOLDS = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2)


def groups(root: Path) -> dict[str, list[tuple[str, str]]]:
    out = defaultdict(list)
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["group_id"]].append((row["image"], row.get("category") or row["group_id"]))
    return {g: sorted(v) for g, v in out.items()}


def study(root: Path, views: int, noise_rate: float, seed: int, settings) -> dict:
    from models.embedder_spec import load_embedder
    from photos.transforms import preprocess_path

    rng = random.Random(seed)
    embedder = load_embedder(None, settings)
    data = groups(root)
    genuine, noise = [], []
    for gid, items in data.items():
        category = items[0][1]
        chosen = [items[0]] + rng.sample(items[1:], min(views, len(items) - 1))
        n_noise = max(1, round(noise_rate * len(chosen) / (1 - noise_rate)))
        others = [g for g, v in data.items() if v[0][1] != category] or [g for g in data if g != gid]
        injected = [rng.choice(data[rng.choice(others)]) for _ in range(n_noise)]
        x = torch.stack([preprocess_path(root / p, embedder.image_size, embedder.mean, embedder.std)
                         for p, _ in chosen + injected])
        with torch.inference_mode():
            v = embedder(x).numpy()
        d = np.linalg.norm(v[1:] - v[0], axis=1)
        genuine += d[: len(chosen) - 1].tolist()
        noise += d[len(chosen) - 1:].tolist()
    g, n = np.array(genuine), np.array(noise)
    rows = []
    for t in THRESHOLDS:
        tp, fp = int((n > t).sum()), int((g > t).sum())
        rows.append({"threshold": t, "precision": tp / max(tp + fp, 1), "recall": tp / len(n)})
    return {"dataset": root.name, "model_id": embedder.model_id, "genuine": len(g), "noise": len(n),
            "genuine_quantiles": {q: float(np.quantile(g, q)) for q in (0.5, 0.9, 0.95, 0.99)},
            "noise_quantiles": {q: float(np.quantile(n, q)) for q in (0.01, 0.05, 0.1, 0.5)},
            "at_threshold": rows}


def main() -> None:
    from core.settings import Settings

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--datasets", default="eth80,coil100")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--noise-rate", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = args.datasets.split(",")
    missing = [n for n in names if not (Path(args.data) / n).is_dir()]
    if missing:
        print(f"denoise_threshold: skipped, no {', '.join(missing)} under {args.data} (../shared/data is not here)")
        return
    settings = Settings.load(home=Path("/tmp/shoesearch-threshold-study"))
    results = [study(Path(args.data) / name, args.views, args.noise_rate, args.seed, settings)
               for name in args.datasets.split(",")]
    for r in results:
        print(f"\n{r['dataset']}: {r['genuine']} genuine, {r['noise']} noise ({r['model_id']})")
        print("genuine quantiles", {k: round(v, 3) for k, v in r["genuine_quantiles"].items()})
        print("noise quantiles  ", {k: round(v, 3) for k, v in r["noise_quantiles"].items()})
        print(f"{'threshold':>10}{'precision':>11}{'recall':>8}")
        for row in r["at_threshold"]:
            print(f"{row['threshold']:>10.2f}{row['precision']:>11.2f}{row['recall']:>8.2f}")
    write_result(results, "denoise_threshold.json")


if __name__ == "__main__":
    main()
