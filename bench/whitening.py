"""Which whitening for NetVLAD at k-means init: measured on real shoe photos (../shared/data/footwear-dev).

NetVLAD's K x D vector (64 x 1280 = 81,920 dims for EfficientNet-Lite0) is reduced by PCA whitening fitted
on the training photos. A catalog has few photos per split (hundreds), so a full-rank whitening (dim ~ N)
divides by the variance of directions estimated from a handful of samples and amplifies noise. This bench
embeds the raw NetVLAD vectors of a product-level split once and scores, on the test photos (each query
ranks the other test photos), the ImageNet GeM descriptor, the raw vector, PCA projections and PCA
whitening at several dimensions, and whitening with shrunk variances (``var + beta * mean(var)``).

    .venv/bin/python bench/whitening.py [--dataset footwear-dev] [--seeds 0 1 2] [--set key=value ...]
Writes bench/results/whitening[-TAG].json (``--tag``; e.g. one per backbone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

from bench.results_io import write_result  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DIMS = (32, 64, 128, 256)
SHRINK = (0.1, 0.5, 1.0)


def project(fit, test, dim: int, whiten: bool, shrink: float = 0.0):
    """``test`` on the top ``dim`` axes of ``fit`` (``models.functional.pca`` of the training vectors, computed
    once), whitened as the pipeline whitens (``whitening_projection``) or only projected."""
    import torch

    from models import functional

    mean, var, axes = fit
    proj = functional.whitening_projection(var, axes, dim, shrink=shrink) if whiten else axes[:dim]
    return torch.nn.functional.normalize(((test.double() - mean) @ proj.T).float(), dim=1)


def variants(train, test) -> dict:
    import torch

    from models import functional
    from models.whitening import Whitening

    n = train.shape[0]
    out = {"raw NetVLAD (K*D)": torch.nn.functional.normalize(test, dim=1)}
    module = Whitening(train.shape[1], n - 1)  # what the pipeline runs (float32), at its capped default dim
    module.fit(train)
    with torch.no_grad():
        out[f"pipeline Whitening module {n - 1}"] = module(test)
    fit = functional.pca(train)  # one SVD for every variant below
    for d in (*DIMS, n - 1):
        out[f"PCA {d}"] = project(fit, test, d, whiten=False)
        out[f"PCA-whitened {d}"] = project(fit, test, d, whiten=True)
        for beta in SHRINK:
            out[f"PCA-whitened {d}, shrink {beta}"] = project(fit, test, d, whiten=True, shrink=beta)
    return out


def one_split(home: Path, seed: int, overrides: dict) -> dict:

    from core.settings import Settings
    from embedding.embedders import open_embedder
    from models import functional
    from models.device import pick_device
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split
    from training.data import PhotoDataset, embed_dataset, load_photos
    from training.start import kmeans_model
    from warehouse import open_warehouse
    from warehouse.models_table import model_of_run

    settings = Settings.load(home=home, overrides={**overrides, "train.seed": seed, "train.descriptor_dim": 0})
    wh, device = open_warehouse(settings), pick_device(settings.train.device)
    split = make_split(settings)
    model = kmeans_model(settings, model_of_run(wh, kmeans_init(settings, split, "raw")), 0).to(device).eval()
    sets = {name: load_photos(wh, split, "raw", (name,)) for name in ("train", "test")}
    size, cfg = settings.train.image_size, settings.train
    vlad = {name: embed_dataset(lambda x: model(x, whiten=False), PhotoDataset(
        settings, s.paths, size, model.backbone.mean, model.backbone.std), cfg.batch_size * 4, cfg.num_workers, device,
        name) for name, s in sets.items()}
    imagenet = open_embedder(settings, f"imagenet:{cfg.backbone}").to(device)
    test = sets["test"]
    descs = {"ImageNet GeM (no training)": embed_dataset(imagenet, PhotoDataset(
        settings, test.paths, settings.embed.image_size, imagenet.mean, imagenet.std), cfg.batch_size * 4,
        cfg.num_workers, device, "imagenet"), **variants(vlad["train"], vlad["test"])}
    labels = test.labels()
    rows = {name: functional.recall_and_map(d, labels) for name, d in descs.items()}
    return {"seed": seed, "train_photos": len(sets["train"]), "test_photos": len(test),
            "rows": {k: {m: round(float(v[m]), 4) for m in ("recall_at_1", "recall_at_5", "mean_ap")}
                     for k, v in rows.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="footwear-dev")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (whitening[-tag].json)")
    args = ap.parse_args()
    if not (DATA / args.dataset).is_dir():
        print(f"whitening: skipped, no {args.dataset} under {DATA} (../shared/data is not on this machine)")
        return 0
    from core.settings import Settings
    from tasks.ingest import ingest_catalog

    overrides = dict(kv.split("=", 1) for kv in args.set)
    with tempfile.TemporaryDirectory(prefix="whitening-") as tmp:
        home = Path(tmp) / "home"
        ingest_catalog(Settings.load(home=home, overrides=overrides), DATA / args.dataset, name=args.dataset)
        runs = [one_split(home, seed, overrides) for seed in args.seeds]
    names = list(runs[0]["rows"])
    summary = {n: {m: (round(statistics.fmean(r["rows"][n][m] for r in runs), 4),
                       round(statistics.pstdev(r["rows"][n][m] for r in runs), 4)) for m in ("recall_at_1", "mean_ap")}
               for n in names}
    print(f"\nwhitening on {args.dataset}, seeds {args.seeds} (test photos, mean ± std)")
    print(f"{'descriptor':<36} {'R@1':>14} {'mAP':>14}")
    for n in names:
        print(f"{n:<36} {summary[n]['recall_at_1'][0]:>7.3f} ±{summary[n]['recall_at_1'][1]:.3f}"
              f" {summary[n]['mean_ap'][0]:>7.3f} ±{summary[n]['mean_ap'][1]:.3f}")
    write_result({"bench": "whitening", "dataset": args.dataset, "seeds": args.seeds, "settings_changed": overrides,
                  "summary": summary, "runs": runs}, f"whitening{'-' + args.tag if args.tag else ''}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
