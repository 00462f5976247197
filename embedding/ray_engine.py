"""Embedding on Ray Data (``compute.engine = "ray"``): decode on CPU tasks, the model on an actor pool.

The photo list becomes a Ray dataset; ``_decode`` (stateless tasks, ``ray.decode_batch_size`` photos each) turns
files into normalised tensors with the very function the local DataLoader uses (``photos.loading.PhotoTensors``:
same decode, EXIF, resize and pad, same "unreadable" marking); ``_Embed`` actors (one per GPU, else one per 2
CPUs, ``ray.embed_actors`` to choose) each load the model once and embed batches of ``embed.batch_size``. The
vectors stream back to the driver, which commits them exactly as the local engine does (``embedding.vectors``),
so the rows, the chunked commits, resume after a kill and incrementality are the engine's business no more.
A dead worker costs a retry, not the run: Ray Data restarts a dead actor and retries its batch (its actor pools
default to ``max_restarts=-1``, ``max_task_retries=-1``), and Ray retries a decode task whose worker died.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy as np

log = logging.getLogger(__name__)

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}  # offline hosts: no usage report


def connect(settings):
    """The Ray cluster of ``ray.address`` ("auto", a ``ray://`` URL), or a local one started here with
    ``ray.num_cpus`` CPUs; reused when this process is already connected."""
    import ray

    if ray.is_initialized():
        return ray
    os.environ.update({k: v for k, v in RAY_ENV.items() if k not in os.environ})
    cfg = settings.ray
    local = not cfg.address
    ray.init(address=cfg.address or None, num_cpus=(cfg.num_cpus or None) if local else None,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def actor_count(settings, ray) -> tuple[int, float]:
    """(model replicas, GPUs each): ``ray.embed_actors`` or one per GPU; on CPUs one replica per 2 CPUs (a CPU
    each, one thread), the other half left to decoding: both share the cores (at least 1)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and settings.embed.device != "cpu":
        return settings.ray.embed_actors or gpus, 1.0
    return settings.ray.embed_actors or max(1, int(resources.get("CPU", 1)) // 2), 0.0


def _decode(batch: dict, size: int, mean, std, max_pixels: int, max_scans: int) -> dict:
    """Photo files -> normalised 3 x size x size float32 arrays and an ``ok`` flag (the local loader's item)."""
    from pathlib import Path

    from photos.loading import PhotoTensors

    photos = PhotoTensors([Path(p) for p in batch["path"]], size, mean, std, max_pixels, max_scans)
    items = [photos[i] for i in range(len(photos))]
    return {"row": batch["row"], "pixels": np.stack([x.numpy() for _, x, _ in items]),
            "ok": np.array([ok for _, _, ok in items])}


class _Embed:
    """One model replica: built once per actor from the run's settings and model spec."""

    def __init__(self, home: str, overrides: dict, spec: str | None):
        from core.settings import Settings
        from embedding.embedders import open_embedder
        from models.device import on_device, pick_device

        self.settings = Settings.load(home=home, overrides=overrides)
        self.device = pick_device(self.settings.embed.device)
        self.embedder = on_device(open_embedder(self.settings, spec), self.device)

    def __call__(self, batch: dict) -> dict:
        import torch

        from embedding.embedders import embed_batch
        from models.device import autocast, fast_input

        ok = batch["ok"].astype(bool)
        x = fast_input(torch.from_numpy(batch["pixels"][ok]), self.device)
        with torch.inference_mode(), autocast(self.device):
            vectors = embed_batch(self.embedder, x)
        out = np.zeros((len(ok), vectors.shape[1]), np.float32)
        out[ok] = vectors
        return {"row": batch["row"], "ok": ok, "vector": out}


def ray_batches(todo: list[dict], spec: str | None, settings, geometry: tuple) -> Iterator[tuple]:
    """(todo positions, ok flags, vectors of the ok ones) per batch, computed on the Ray cluster; ``geometry`` is
    the embedder's (image_size, mean, std)."""
    ray = connect(settings)
    size, mean, std = geometry
    actors, gpus = actor_count(settings, ray)
    rows = [{"row": i, "path": str(settings.images_dir / p["path"])} for i, p in enumerate(todo)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // settings.ray.decode_batch_size))
    ds = ds.map_batches(_decode, batch_size=settings.ray.decode_batch_size, num_cpus=1, batch_format="numpy",
                        fn_kwargs={"size": size, "mean": tuple(mean), "std": tuple(std),
                                   "max_pixels": settings.crawl.max_image_pixels,
                                   "max_scans": settings.crawl.max_image_scans})
    ds = ds.map_batches(_Embed, batch_size=settings.embed.batch_size, batch_format="numpy",
                        fn_constructor_kwargs={"home": str(settings.home), "overrides": settings.as_overrides(),
                                               "spec": spec},
                        compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus,
                        num_cpus=1)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ok = batch["ok"].astype(bool)
        yield batch["row"].tolist(), ok, batch["vector"][ok]
