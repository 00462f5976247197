"""The sections of bench/gpu.py: each measures one stage on the device and returns a dict of figures.

Every timing is wall clock around work that ends with ``torch.cuda.synchronize()`` (kernels are asynchronous),
after warm-up iterations (cuDNN's autotuner, ``torch.backends.cudnn.benchmark``, picks its kernels then). On CUDA
the models run as the pipeline runs them (``models.device``): bf16 autocast, channels_last inputs and weights.
Not a benchmark itself (``make bench`` runs it as a script: it does nothing).
"""

from __future__ import annotations

import time

import torch

# Measured on one H100 (bf16, channels_last, 224 px): the limits the issue sets the goals against.
H100_LIMITS = {
    "vgg16_forward_img_s": 7849, "vgg16_netvlad_train_img_s": 3323,
    "lite0_forward_img_s": 11992, "lite0_netvlad_train_img_s": 4792,
    "nvjpeg_decode_resize_img_s": 10424, "exact_knn_1m_512_fp16_qps": 114_000,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(step, items_per_call: int, device: torch.device, warmup: int = 2, min_s: float = 1.0,
               max_calls: int = 200) -> dict:
    """Items/s of ``step()`` after ``warmup`` calls, over at least ``min_s`` seconds (or ``max_calls`` calls)."""
    for _ in range(warmup):
        step()
    sync(device)
    calls, started = 0, time.perf_counter()
    while calls < max_calls and (calls == 0 or time.perf_counter() - started < min_s):
        step()
        calls += 1
        if calls % 4 == 0 or device.type != "cuda":
            sync(device)
    sync(device)
    seconds = time.perf_counter() - started
    return {"items_per_s": calls * items_per_call / seconds, "calls": calls, "seconds": round(seconds, 3)}


def netvlad_model(backbone_name: str, image_size: int, trainable_blocks: int = 3, clusters: int = 64, dim: int = 256):
    """NetVLAD on ``backbone_name``: Lite backbones with their shipped weights, VGG16 with random weights when its
    file is absent (a speed figure: the weights do not change the work)."""
    from core.errors import ShoesearchError
    from models.backbones import BACKBONES, Backbone, load_backbone
    from models.netvlad_model import ModelConfig, NetVLADModel

    try:
        backbone = load_backbone(backbone_name)
    except ShoesearchError:
        spec = BACKBONES[backbone_name]
        net, stages, channels = spec.build()
        for head in spec.unused_heads:
            setattr(net, head, torch.nn.Identity())
        backbone = Backbone(backbone_name, net, stages, channels, spec.mean, spec.std, f"{backbone_name}@random").eval()
    config = ModelConfig(backbone_name, clusters, dim, image_size, trainable_blocks)
    return NetVLADModel(config, backbone=backbone)


def forward_rate(model, batch: int, image_size: int, device: torch.device, min_s: float) -> dict:
    """Bare backbone forward img/s on tensors already on the device (the F of the embedding limit)."""
    from models.device import forward, on_device

    net = on_device(model.backbone, device).eval()
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    with torch.inference_mode():
        r = timed_rate(lambda: forward(net.features, x, device), batch, device, min_s=min_s)
    return {"img_per_s": r["items_per_s"], "batch": batch, "seconds": r["seconds"]}


def train_step_rate(model, tuples: int, tuple_size: int, positives: int, image_size: int, device: torch.device,
                    min_s: float) -> dict:
    """Forward + triplet loss + backward + Adam on a random tuple batch, every member back-propagated (the
    bare limit of training, as bench/train.py's ``bare`` row), img/s."""
    from models.device import forward, on_device
    from models.loss import WeakTripletLoss

    model = on_device(model, device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    crit = WeakTripletLoss(0.1)
    x = torch.randn(tuples * tuple_size, 3, image_size, image_size, device=device)

    def step() -> None:
        d = forward(model, x, device).view(tuples, tuple_size, -1)
        loss = crit(d[:, 0], d[:, 1:1 + positives], d[:, 1 + positives:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    r = timed_rate(step, tuples * tuple_size, device, min_s=min_s)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"img_per_s": r["items_per_s"], "tuples": tuples, "tuple_size": tuple_size, "seconds": r["seconds"],
            "cuda_peak_mb": peak}


def decode_rate(paths: list, image_size: int, device: torch.device, batch: int, min_s: float) -> dict:
    """JPEG decode + resize + normalise img/s of files already read into memory: nvjpeg on CUDA (the pipeline's
    ``embed.gpu_decode`` path), torchvision's libjpeg in this one process on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from photos.transforms import fit_square

    datas = [read_file(str(p)) for p in paths]
    mean = std = (0.5, 0.5, 0.5)
    groups = [datas[k:k + batch] for k in range(0, len(datas), batch)]
    state = {"i": 0}

    def step() -> None:
        group = groups[state["i"] % len(groups)]
        state["i"] += 1
        images = decode_jpeg(group, mode=ImageReadMode.RGB, device=device)
        torch.stack([fit_square(img, image_size, mean, std) for img in images])

    r = timed_rate(step, len(groups[0]), device, warmup=1, min_s=min_s, max_calls=10 * len(groups))
    return {"img_per_s": r["items_per_s"], "photos": len(datas), "batch": len(groups[0]), "seconds": r["seconds"],
            "decoder": "nvjpeg" if device.type == "cuda" else "libjpeg (torchvision, 1 process)"}


def loader_decode_rate(paths: list, image_size: int, workers: int, batch: int, device: torch.device) -> dict:
    """The CPU decode path's limit: the pipeline's photo loader (PIL in ``workers`` processes) with no model."""
    from photos.loading import PhotoTensors, batches, make_loader

    loader = make_loader(PhotoTensors(paths, image_size, (0.5,) * 3, (0.5,) * 3, 40_000_000), batch, workers, device)
    started, first, n = time.perf_counter(), None, 0
    for _, x, _ in batches(loader):
        x.to(device, non_blocking=True)
        n += x.shape[0]
        first = first or (time.perf_counter(), n)
    sync(device)
    end = time.perf_counter()
    steady = (n - first[1]) / (end - first[0]) if first and end > first[0] else 0.0
    return {"img_per_s": steady, "start_s": round(first[0] - started, 3) if first else None, "photos": n,
            "workers": workers}


def kmeans_rate(n: int, dim: int, k: int, iterations: int, device: torch.device) -> dict:
    """Lloyd's k-means (``models.functional.kmeans``, the kmeans step's) on ``n`` random unit descriptors."""
    from models import functional

    x = functional.l2n(torch.randn(n, dim, device=device), dim=1)
    functional.kmeans(x[: max(k, n // 10)], k, 1)  # warm-up
    sync(device)
    started = time.perf_counter()
    functional.kmeans(x, k, iterations)
    sync(device)
    seconds = time.perf_counter() - started
    return {"descriptors": n, "dim": dim, "clusters": k, "iterations": iterations, "seconds": round(seconds, 3),
            "descriptor_iterations_per_s": n * iterations / seconds}


def exact_knn_rate(n: int, dim: int, queries: int, k: int, device: torch.device, min_s: float) -> dict:
    """Exact inner-product kNN over ``n`` x ``dim`` vectors (fp16 on CUDA, fp32 on the CPU) in torch: queries/s."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    base = torch.nn.functional.normalize(torch.randn(n, dim, device=device), dim=1).to(dtype)
    q = torch.nn.functional.normalize(torch.randn(queries, dim, device=device), dim=1).to(dtype)
    r = timed_rate(lambda: (q @ base.T).topk(k, dim=1), queries, device, min_s=min_s)
    return {"vectors": n, "dim": dim, "batch": queries, "k": k, "dtype": str(dtype).replace("torch.", ""),
            "queries_per_s": r["items_per_s"], "seconds": r["seconds"]}


def faiss_rates(n: int, dim: int, queries: int, k: int, device: torch.device, ivfpq: bool = True) -> dict:
    """faiss on the device: exact (flat IP, fp16 on a GPU) search queries/s and the pipeline's IVF-PQ build
    (``index.faiss_build.build_faiss``; with ``ivfpq``) seconds; on the CPU or without faiss-gpu, faiss-cpu."""
    import faiss
    import numpy as np

    from core.settings import Settings
    from index.faiss_build import build_faiss, gpu_count

    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = base[rng.choice(n, queries, replace=False)]
    gpu = device.type == "cuda" and gpu_count() > 0
    index = faiss.IndexFlatIP(dim)
    if gpu:
        res = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = True
        index = faiss.GpuIndexFlatIP(res, dim, config)
    index.add(base)
    index.search(q[:16], k)
    started = time.perf_counter()
    index.search(q, k)
    flat_s = time.perf_counter() - started
    cfg = Settings().index
    started = time.perf_counter()
    built = build_faiss(base, "ivfpq" if ivfpq else "flat_ip", cfg, use_gpu=gpu)
    build_s = time.perf_counter() - started
    return {"faiss": faiss.__version__, "on_gpu": gpu, "vectors": n, "dim": dim, "flat_queries_per_s": queries / flat_s,
            "build_kind": "ivfpq" if ivfpq else "flat_ip", "build_s": round(build_s, 3), "built_vectors": built.ntotal}


if __name__ == "__main__":
    pass
