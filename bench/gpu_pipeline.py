"""bench/gpu.py's sections that run the pipeline's own steps on a synthetic catalog: decode, embed (nvjpeg and
CPU decoding), the k-means step and the trainer's epoch. Not a benchmark itself (``make bench`` runs it as a
script: it does nothing).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import gpu_sections as gs  # noqa: E402
from bench.scale_common import photo_count, synthetic_home  # noqa: E402


def pipeline_sections(run, tmp: Path, device: torch.device, size: dict, workers: int) -> None:
    """Run the decode, embed and train sections on one synthetic catalog (two homes: each embed path has
    every photo to embed)."""
    cuda = device.type == "cuda"
    embed = {"embed.device": device.type, "embed.num_workers": workers, "embed.image_size": size["image_size"],
             "embed.batch_size": 256 if cuda else 8}
    homes = {}

    def build() -> dict:
        started = time.perf_counter()
        for name, gpu_decode in (("nvjpeg", True), ("cpu", False)):
            homes[name] = synthetic_home(tmp, size["photos"], size["photo_size"],
                                         {**embed, "embed.gpu_decode": gpu_decode}, home=f"home-{name}")
        return {"photos": photo_count(homes["cpu"]), "photo_size": size["photo_size"],
                "seconds": round(time.perf_counter() - started, 1)}

    if run.section("catalog", build) is None or "nvjpeg" not in homes:
        return
    paths = sorted((homes["cpu"].images_dir).rglob("*.jpg"))
    run.section("decode", gs.decode_rate, paths[:2048], size["image_size"], device, 128 if cuda else 8, size["min_s"])
    run.section("decode_cpu_loader", gs.loader_decode_rate, paths, size["image_size"], workers,
                256 if cuda else 8, device)
    run.section("embed_nvjpeg", embed_step, homes["nvjpeg"], cuda)  # on the CPU: the CPU path again
    run.section("embed_cpu_decode", embed_step, homes["cpu"], False)
    run.section("train", trainer, homes["cpu"], device, size, workers)


def embed_step(settings, nvjpeg: bool) -> dict:
    """The embed step over the catalog: whole-step img/s, and (where ``embed_images`` reports them) the
    start-up seconds and the steady rate after the first batch."""
    from embedding.vectors import embed_images

    timings: dict = {}
    started = time.perf_counter()
    try:
        embed_images(settings, timings=timings)
    except TypeError:  # an embed_images without start-up timings
        embed_images(settings)
    seconds = time.perf_counter() - started
    n = photo_count(settings)
    return {"photos": n, "img_per_s": n / seconds, "seconds": round(seconds, 2),
            "steady_img_per_s": timings.get("steady_img_per_s"), "start_s": timings.get("start_s"),
            "decoder": "nvjpeg" if nvjpeg and settings.embed.gpu_decode else
            f"PIL in {settings.embed.num_workers} loader workers",
            "batch_size": settings.embed.batch_size}


def trainer(settings, device: torch.device, size: dict, workers: int) -> dict:
    """The k-means step, then one epoch of ``size['queries']`` queries through the trainer (mining, loader,
    steps), uncached and with the frozen-stage cache, at the default tuple (1 + 5 + 10)."""
    from models.device import on_device
    from models.loss import WeakTripletLoss
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split
    from training.data import PhotoDataset, load_photos
    from training.start import model_from_kmeans
    from warehouse import open_warehouse
    from warehouse.models_table import model_of_run

    cuda = device.type == "cuda"
    q = size["queries"]
    for key, value in {"train.device": device.type, "train.image_size": size["image_size"],
                       "train.batch_size": size["tuples"] if cuda else 1, "train.num_workers": workers,
                       "train.queries_per_epoch": q, "train.cache_refresh_queries": q,
                       "train.kmeans_images": 1000 if cuda else 8, "train.kmeans_descriptors": 50_000 if cuda else 400,
                       "train.descriptor_dim": 256 if cuda else 0, "train.clusters": 64 if cuda else 8,
                       "train.hard_negatives": 10 if cuda else 2, "train.negatives_pool": 1000 if cuda else 8,
                       "train.max_positives": 5 if cuda else 1, "train.frozen_cache_mb": 0}.items():
        settings.set(key, value)
    wh = open_warehouse(settings)
    split = make_split(settings)
    started = time.perf_counter()
    km = kmeans_init(settings, split, photos="raw")
    kmeans_s = time.perf_counter() - started
    photos = load_photos(wh, split, "raw", ("train",))
    model = on_device(model_from_kmeans(settings, model_of_run(wh, km), photos, device), device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    crit = WeakTripletLoss(settings.train.margin)
    ds = PhotoDataset(settings, photos.paths, settings.train.image_size, model.backbone.mean, model.backbone.std)
    tuple_size = 1 + settings.train.max_positives + settings.train.hard_negatives
    out = {"kmeans_step_s": round(kmeans_s, 2), "train_photos": len(photos), "queries": q, "tuple_size": tuple_size,
           "batch_tuples": settings.train.batch_size}
    out.update(_epoch(model, optimizer, crit, settings, photos, ds, device, q * tuple_size, ""))
    settings.set("train.frozen_cache_mb", 8192)
    from models.netvlad_model import NetVLADFromFrozenFeatures
    from training.mining import frozen_cache

    started = time.perf_counter()
    cache = frozen_cache(model, settings, ds, device)
    gs.sync(device)
    out["frozen_cache_s"] = round(time.perf_counter() - started, 2)
    if cache is not None:
        out.update(_epoch(NetVLADFromFrozenFeatures(model), optimizer, crit, settings, photos, cache, device,
                          q * tuple_size, "cached_"))
    return out


def _epoch(model, optimizer, crit, settings, photos, inputs, device, images: int, prefix: str) -> dict:
    from training.fit import train_epoch

    started = time.perf_counter()
    _, step_ips = train_epoch(model, optimizer, crit, settings, photos, inputs, 0, device)
    gs.sync(device)
    seconds = time.perf_counter() - started
    return {f"{prefix}step_img_per_s": step_ips, f"{prefix}epoch_img_per_s": images / seconds,
            f"{prefix}epoch_s": round(seconds, 2), f"{prefix}epoch_vs_step": images / seconds / step_ips}


if __name__ == "__main__":
    pass
