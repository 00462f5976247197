"""Embedding throughput: the embed task (decode + resize + forward + warehouse) vs a bare forward loop.

The ratio shows the data-loading and bookkeeping overhead. Photos: the synthetic shop at
800x800 JPEG (the size of real JD gallery photos). Prints a table, writes bench/results/embed.json.

    .venv/bin/python bench/embed.py [--products 24] [--backbone efficientnet_lite0] [--engine ray]

``--engine ray`` also embeds the same photos on a local Ray cluster (``ray.num_cpus``, default 2 workers' worth)
in the same run: local vs Ray img/s, the cluster's start-up apart, and the largest vector difference; writes
bench/results/embed-engines.json.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/ (bench/warehouse.py)

from bench.results_io import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=24)
    ap.add_argument("--photo-size", type=int, default=800)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--engine", choices=["local", "ray"], default="local")
    ap.add_argument("--ray-cpus", type=int, default=2)
    args = ap.parse_args()

    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from embedding.vectors import embed_images
    from models.device import pick_device
    from models.embedder_spec import load_embedder
    from photos.transforms import preprocess_path
    from tasks.ingest import ingest_catalog
    from warehouse import open_warehouse

    with tempfile.TemporaryDirectory() as tmp:
        catalog = generate_catalog(Path(tmp) / "cat", args.products, noise_rate=0.2, seed=0, image_size=args.photo_size)
        settings = Settings.load(home=Path(tmp) / "home", overrides={"embed.backbone": args.backbone})
        ingest_catalog(settings, catalog, name="bench")
        if args.engine == "ray":
            shutil.copytree(settings.home, Path(tmp) / "ray-home")
        wh = open_warehouse(settings)
        paths = [settings.images_dir / r["path"] for r in wh.query(
            "SELECT DISTINCT path FROM images_current WHERE status = 'ok'").to_pylist()]
        embedder = load_embedder(None, settings)
        device = pick_device(settings.embed.device)

        started = time.perf_counter()
        embed_images(settings)
        task_s = time.perf_counter() - started

        tensors = torch.stack([preprocess_path(p, embedder.image_size, embedder.mean, embedder.std) for p in paths])
        model = embedder.to(device)
        cuda = device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        bs = settings.embed.batch_size
        with torch.inference_mode(), autocast:
            model(tensors[:bs].to(device))  # warm-up
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            for k in range(0, len(tensors), bs):
                model(tensors[k:k + bs].to(device)).float().cpu()
            if cuda:
                torch.cuda.synchronize()
            bare_s = time.perf_counter() - started
        if args.engine == "ray":
            engines = compare_engines(settings, Settings.load(
                home=Path(tmp) / "ray-home", overrides={"embed.backbone": args.backbone, "compute.engine": "ray",
                                                        "ray.num_cpus": args.ray_cpus}), len(paths) / task_s)

    n = len(paths)
    result = {
        "photos": n, "photo_size": args.photo_size, "backbone": args.backbone, "device": str(device),
        "image_size": embedder.image_size, "batch_size": bs, "num_workers": settings.embed.num_workers,
        "cpu_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "embed_task_img_per_s": n / task_s, "bare_forward_img_per_s": n / bare_s,
        "task_vs_bare_ratio": (n / task_s) / (n / bare_s),
    }
    print(f"{'pipeline':<32}{'img/s':>10}")
    print(f"{'embed task (decode+forward+db)':<32}{result['embed_task_img_per_s']:>10.1f}")
    print(f"{'bare forward (same tensors)':<32}{result['bare_forward_img_per_s']:>10.1f}")
    print(f"ratio task / bare: {result['task_vs_bare_ratio']:.2f}  ({n} photos, {device}, {args.backbone})")
    write_result(result, "embed.json")
    if args.engine == "ray":
        print(f"{'engine':<32}{'img/s':>10}")
        print(f"{'local (DataLoader workers)':<32}{engines['local_img_per_s']:>10.1f}")
        print(f"{'ray (' + str(args.ray_cpus) + ' CPUs, local cluster)':<32}{engines['ray_img_per_s']:>10.1f}")
        print(f"ray cluster start {engines['ray_start_s']:.1f} s (paid once per process); largest vector difference "
              f"{engines['max_abs_diff']:.1e}")
        write_result({**engines, "photos": n, "backbone": args.backbone, "ray_cpus": args.ray_cpus,
                      "machine": result["machine"]}, "embed-engines.json")


def compare_engines(local, ray_settings, local_img_per_s: float) -> dict:
    """Embed the same photos on a local Ray cluster; the cluster's start-up is timed apart from the embedding."""
    import numpy as np

    from embedding.ray_engine import connect
    from embedding.vectors import embed_images
    from warehouse import open_warehouse

    started = time.perf_counter()
    connect(ray_settings)
    start_s = time.perf_counter() - started
    started = time.perf_counter()
    embed_images(ray_settings)
    ray_s = time.perf_counter() - started
    rows = [{r["sha1"]: np.asarray(r["vector"]) for r in open_warehouse(s).query(
        "SELECT sha1, vector FROM embeddings").to_pylist()} for s in (local, ray_settings)]
    diff = max(float(np.abs(rows[0][k] - rows[1][k]).max()) for k in rows[0])
    return {"local_img_per_s": local_img_per_s, "ray_img_per_s": len(rows[1]) / ray_s, "ray_start_s": start_s,
            "max_abs_diff": diff, "same_pictures": sorted(rows[0]) == sorted(rows[1])}


if __name__ == "__main__":
    main()
