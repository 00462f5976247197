"""Training throughput: the real training epoch vs the same model's bare forward+backward loop.

Rows (images/s, an image = one photo of a tuple of 1 query + P positives + N negatives):

* ``bare``: forward + loss + backward + Adam step on random tensors of the tuple batch shape, every member
  back-propagated, with glibc's default allocator (the limit before this project's two CPU step savings);
* ``bare, memory kept``: the same after ``models.device.keep_freed_memory`` (what ``pick_device`` sets on the
  CPU): glibc stops unmapping and page-faulting the activations in again every step;
* ``train step``: the trainer's ``train_epoch`` on mined tuples of real photos, the step time only
  (what ``train_metrics.images_per_s`` records), photos decoded every step (``frozen_cache_mb=0``);
* ``train epoch``: the same, wall clock of the whole epoch (mining, decoding, steps); its split (mining, steps,
  steps waiting for photos) is ``epoch_breakdown_s``, and ``epoch_vs_step`` the epoch's rate over the step's;
* ``cached epoch`` / ``cached step``: the trainer's default where it fits in ``train.frozen_cache_mb``:
  the frozen stages' output is cached once per run (``cache_s`` in the config line, not included:
  it is paid once, the epochs reuse it), then mining and steps run the trainable block + NetVLAD only.

Prints a table, writes bench/results/train.json. On a GPU host (``--device cuda``: bf16 autocast,
channels_last) compare ``bare`` with the measured limit for VGG16 conv5 + NetVLAD at 224 px.

    .venv/bin/python bench/train.py [--device cpu|cuda] [--image-size 224] [--steps 6] [--backbone efficientnet_lite0]
        [--num-workers N (default: the trainer's train.num_workers)] [--out train.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

from bench.results_io import write_result  # noqa: E402

H100_LIMIT_IMG_S = 3300  # measured: VGG16 conv5 + NetVLAD, 224 px, bf16, one H100 (shared/reference)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--products", type=int, default=8)
    # 20 steps of 2 tuples: one mining refresh (40 queries, a pool of 32) embeds the 43 training photos for 280
    # trained photos (0.15 per trained photo), as the trainer's defaults do (a refresh per 1,000 queries with a
    # pool of 1,000, tuples of 16: ~0.125). 6 steps (before issue 28) embedded 43 per 84 (0.51): mining was 18 %
    # of the epoch.
    ap.add_argument("--steps", type=int, default=20, help="training steps per measured epoch (at most 21 here)")
    ap.add_argument("--batch-size", type=int, default=2, help="tuples per step")
    ap.add_argument("--positives", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--clusters", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=None, help="photo loader workers (default: the trainer's)")
    ap.add_argument("--out", default="train.json", help="result file (a name resolves under bench/results/)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()

    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from models.device import keep_freed_memory
    from models.loss import WeakTripletLoss
    from tasks.ingest import ingest_catalog
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split
    from training.data import PhotoDataset, load_photos
    from training.start import model_from_kmeans
    from warehouse import open_warehouse
    from warehouse.models_table import model_of_run

    device = torch.device(args.device)
    tuple_size = 1 + args.positives + args.negatives
    overrides = {
        "train.backbone": args.backbone, "train.device": args.device, "train.image_size": args.image_size,
        "train.clusters": args.clusters, "train.kmeans_images": 40, "train.kmeans_iterations": 5,
        "train.kmeans_descriptors": 40 * 49, "train.descriptor_dim": 0, "train.batch_size": args.batch_size,
        "train.max_positives": args.positives, "train.hard_negatives": args.negatives,
        "train.negatives_pool": 32, "train.cache_refresh_queries": args.steps * args.batch_size,
        "train.queries_per_epoch": args.steps * args.batch_size, "train.frozen_cache_mb": 0,
        **({} if args.num_workers is None else {"train.num_workers": args.num_workers}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        catalog = generate_catalog(Path(tmp) / "cat", args.products, noise_rate=0.0, seed=0, image_size=256)
        settings = Settings.load(home=Path(tmp) / "home", overrides=overrides)
        ingest_catalog(settings, catalog, name="bench")
        wh = open_warehouse(settings)
        split = make_split(settings)
        km = kmeans_init(settings, split)
        photos = load_photos(wh, split, "raw", ("train",))
        model = model_from_kmeans(settings, model_of_run(wh, km), photos, device).to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        crit = WeakTripletLoss(settings.train.margin)
        ds = PhotoDataset(settings, photos.paths, args.image_size, model.backbone.mean, model.backbone.std)

        # bare: random tensors, same model, same loss, same optimizer, every member back-propagated
        x = torch.randn(args.batch_size, tuple_size, 3, args.image_size, args.image_size)
        glibc_default_allocator()  # kmeans_init's pick_device set the kept-memory one
        bare = bare_images_per_s(model, optimizer, crit, x, args.positives, args.steps, device)
        keep_freed_memory()
        bare_kept = bare_images_per_s(model, optimizer, crit, x, args.positives, args.steps, device)

        rows, cache_s, split = trainer_images_per_s(model, optimizer, crit, settings, photos, ds, device)
        rows = {"bare": bare, "bare, memory kept": bare_kept, **rows}

    config = {"device": str(device), "device_name": torch.cuda.get_device_name() if device.type == "cuda" else
              platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "backbone": args.backbone, "image_size": args.image_size, "clusters": args.clusters,
              "tuple": f"1+{args.positives}+{args.negatives}", "batch_tuples": args.batch_size,
              "steps": args.steps, "num_workers": settings.train.num_workers, "train_photos": len(photos),
              "cache_s": round(cache_s, 2),
              "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
              "trainable_blocks": settings.train.trainable_blocks,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    report(config, rows, device, args.out, split)


def trainer_images_per_s(model, optimizer, crit, settings, photos, ds, device) -> tuple[dict, float, dict]:
    """The trainer's rows (uncached step and epoch, then cached step and epoch when the cache fits), the
    seconds the frozen-stage cache took to build, and each epoch's split (mining, steps, waiting for photos)."""
    from models.netvlad_model import NetVLADFromFrozenFeatures
    from training.fit import train_epoch
    from training.mining import frozen_cache

    t0, split = time.perf_counter(), {"uncached": {}, "cached": {}}
    _, step_ips = train_epoch(model, optimizer, crit, settings, photos, ds, 0, device, timings=split["uncached"])
    _sync(device)
    split["uncached"]["wall_s"] = time.perf_counter() - t0
    images = round(step_ips * split["uncached"]["step_s"])  # trained, as counted by the trainer (<= the asked)
    rows = {"train step": step_ips, "train epoch": images / split["uncached"]["wall_s"]}
    settings.set("train.frozen_cache_mb", 8192)
    t0 = time.perf_counter()
    cache = frozen_cache(model, settings, ds, device)
    cache_s = time.perf_counter() - t0
    if cache is not None:
        t0 = time.perf_counter()
        net = NetVLADFromFrozenFeatures(model)
        _, cached_step_ips = train_epoch(net, optimizer, crit, settings, photos, cache, 1, device,
                                         timings=split["cached"])
        _sync(device)
        split["cached"]["wall_s"] = time.perf_counter() - t0
        rows["cached epoch"] = round(cached_step_ips * split["cached"]["step_s"]) / split["cached"]["wall_s"]
        rows["cached step"] = cached_step_ips
    for t in split.values():
        if t:
            t["wait_s"] = t["wall_s"] - t["mine_s"] - t["step_s"]  # steps waiting for photos, loader starts
    return rows, cache_s, {k: {n: round(v, 3) for n, v in t.items()} for k, t in split.items() if t}


def bare_images_per_s(model, optimizer, crit, x: torch.Tensor, positives: int, steps: int, device) -> float:
    """Images/s of forward + loss + backward (every member) + Adam on the tuple batch ``x`` (B x T x 3 x S x S)."""
    from models.device import forward

    model.train()
    for i in range(steps + 1):  # the first step warms up
        if i == 1:
            _sync(device)
            t0 = time.perf_counter()
        d = forward(model, x.flatten(0, 1), device).view(x.shape[0], x.shape[1], -1)
        loss = crit(d[:, 0], d[:, 1:1 + positives], d[:, 1 + positives:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * x.shape[0] * x.shape[1] / (time.perf_counter() - t0)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def report(config: dict, rows: dict, device, out: str = "train.json", split: dict | None = None) -> None:
    """Print the table and write ``bench/results/train.json``."""
    bare = rows["bare"]
    ratios = {k: rows[f"{k.replace('uncached', 'train')} epoch"] / rows[f"{k.replace('uncached', 'train')} step"]
              for k in (split or {})}
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    print(f"{'path':<18} {'images/s':>10} {'vs bare':>8}")
    for name, v in rows.items():
        print(f"{name:<18} {v:>10.1f} {v / bare:>7.2f}x")
    print(f"reference: VGG16 conv5 + NetVLAD, 224 px, bf16 on one H100: ~{H100_LIMIT_IMG_S:,} img/s (bare limit)")
    if device.type == "cuda":
        print(f"bare / H100 reference: {bare / H100_LIMIT_IMG_S:.2f} (same backbone only if --backbone vgg16)")
    for k, t in (split or {}).items():
        print(f"{k} epoch / step: {ratios[k]:.2f}; epoch {t['wall_s']:.2f} s = mining {t['mine_s']:.2f} + steps "
              f"{t['step_s']:.2f} + waiting for photos {t['wait_s']:.2f}")
    write_result({"config": config, "images_per_s": rows, "ratio_vs_bare": {k: v / bare for k, v in rows.items()},
                  "epoch_vs_step": ratios, "epoch_breakdown_s": split or {},
                  "reference_h100_img_s": H100_LIMIT_IMG_S}, out)


def glibc_default_allocator() -> None:
    """glibc's defaults back (mmap for big blocks, trim at 128 KB): the baseline of ``bare``."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to reset
        return
    libc.mallopt(-4, 65536)  # M_MMAP_MAX
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


if __name__ == "__main__":
    main()
