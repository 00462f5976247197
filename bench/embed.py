"""Embedding throughput: the embed step against the pipeline limit of this machine, measured in one run.

* ``F``: bare forward img/s on all cores, tensors ready (the step's model call, ``embed_batch``), the mean of a
  pass before the step and one after D (both recorded: a drifting machine load shows as their difference);
* ``D``: decode + preprocess img/s on all cores, no model: the real photo loader (``make_loader``, the embed
  settings' workers) over every photo;
* ``limit = 1 / (1/F + 1/D)``: the best the machine can do when decoding and the forward share its cores;
* the embed step (``embed_images``: loader, forward, warehouse commits) at steady state, i.e. after its first
  batch, with ``ratio_vs_limit``; its start-up (step start to the first batch: model, loader workers) apart.

Photos: the synthetic shop at 800x800 JPEG (the size of real JD gallery photos), >= 2,000 of them by default so
the steady state is what is measured; the catalog is generated once and reused from ``--cache``.
Prints a table, writes bench/results/embed.json.

    .venv/bin/python bench/embed.py [--products 240] [--backbone efficientnet_lite0] [--engine ray]
        [--set embed.num_workers=2 ...]

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

FORWARD_PHOTOS = 512  # images the bare forward runs over (its rate does not depend on which photos)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=240, help="~8.6 photos each: 240 -> ~2,070 photos")
    ap.add_argument("--photo-size", type=int, default=800)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--engine", choices=["local", "ray"], default="local")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "shoesearch-bench",
                    help="where the generated catalog is kept between runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a settings override")
    ap.add_argument("--out", default="embed.json", help="result file name under bench/results/")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from embedding.vectors import embed_images
    from tasks.ingest import ingest_catalog
    from warehouse import open_warehouse

    catalog = generate_catalog(args.cache / f"catalog-{args.products}-{args.photo_size}", args.products,
                               noise_rate=0.2, seed=0, image_size=args.photo_size)
    overrides = {"embed.backbone": args.backbone, **dict(kv.split("=", 1) for kv in args.set)}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(home=Path(tmp) / "home", overrides=overrides)
        ingest_catalog(settings, catalog, name="bench")
        if args.engine == "ray":
            shutil.copytree(settings.home, Path(tmp) / "ray-home")
        paths = [settings.images_dir / r["path"] for r in open_warehouse(settings).query(
            "SELECT DISTINCT path FROM images_current WHERE status = 'ok'").to_pylist()]

        # F before and after the step and D (their mean: a machine whose load drifts shows it in the two), the
        # step before any loader: its start-up (workers' forkserver included) is the one a flow pays once
        tensors = ready_tensors(settings, paths[:FORWARD_PHOTOS])
        before = forward_rate(settings, tensors)
        step: dict = {}
        started = time.perf_counter()
        embed_images(settings, timings=step)
        task_s = time.perf_counter() - started
        decode = decode_rate(settings, paths)
        after = forward_rate(settings, tensors)
        bare = {"img_per_s": (before["img_per_s"] + after["img_per_s"]) / 2, "photos": len(tensors),
                "before_after": [before["img_per_s"], after["img_per_s"]]}
        if args.engine == "ray":
            engines = compare_engines(settings, Settings.load(
                home=Path(tmp) / "ray-home", overrides={**overrides, "compute.engine": "ray",
                                                        "ray.num_cpus": args.ray_cpus}), len(paths) / task_s)
    result = summary(args, settings, len(paths), task_s, step, decode, bare)
    report(result)
    write_result(result, args.out)
    if args.engine == "ray":
        report_engines(engines, args, len(paths), result["machine"])


def decode_rate(settings, paths: list[Path]) -> dict:
    """D: the embed step's own loader (same dataset, workers, batch) over every photo with no model; start-up
    (loader creation to its first batch) apart."""
    from embedding.embedders import open_embedder
    from embedding.vectors import _loader, decode_on_gpu
    from models.device import pick_device

    device = pick_device(settings.embed.device)
    embedder = open_embedder(settings, None)
    n, first = 0, None
    started = time.perf_counter()
    loader, gpu_decode = _loader(paths, embedder, settings, device)
    for _, x, upright in loader:
        if gpu_decode:  # nvjpeg: the decode is the GPU's, as in the step
            x = decode_on_gpu(x, device, embedder.image_size, embedder.mean, embedder.std, upright)[0]
        n += len(x)
        first = first or (time.perf_counter(), n)
    end = time.perf_counter()
    return {"img_per_s": (n - first[1]) / (end - first[0]), "start_s": first[0] - started, "device": str(device),
            "image_size": embedder.image_size}


def ready_tensors(settings, paths: list[Path]) -> torch.Tensor:
    """The step's input tensors of ``paths``, decoded in this process (no loader: its workers start in the step)."""
    from embedding.embedders import open_embedder
    from photos.transforms import preprocess_path

    e = open_embedder(settings, None)
    return torch.stack([preprocess_path(p, e.image_size, e.mean, e.std) for p in paths])


def forward_rate(settings, tensors: torch.Tensor) -> dict:
    """F: the step's forward (``embed_batch``, the step's batch size) over ready tensors, after a warm-up batch."""
    from embedding.embedders import embed_batch, open_embedder
    from models.device import autocast, fast_input, on_device, pick_device

    device = pick_device(settings.embed.device)
    model = on_device(open_embedder(settings, None), device)
    bs = settings.embed.batch_size
    with torch.inference_mode(), autocast(device):
        embed_batch(model, fast_input(tensors[:bs], device))  # warm-up
        started = time.perf_counter()
        for k in range(0, len(tensors), bs):
            embed_batch(model, fast_input(tensors[k:k + bs], device))
        seconds = time.perf_counter() - started
    return {"img_per_s": len(tensors) / seconds, "photos": len(tensors)}


def summary(args, settings, n: int, task_s: float, step: dict, decode: dict, bare: dict) -> dict:
    f, d = bare["img_per_s"], decode["img_per_s"]
    limit = 1 / (1 / f + 1 / d)
    cfg = settings.embed
    return {
        "photos": n, "photo_size": args.photo_size, "backbone": args.backbone, "device": decode["device"],
        "image_size": decode["image_size"], "batch_size": cfg.batch_size, "num_workers": cfg.num_workers,
        "cpu_threads": torch.get_num_threads(), "cpus": len(__import__("os").sched_getaffinity(0)),
        "machine": platform.processor() or platform.machine(), "overrides": args.set,
        "forward_img_per_s": f, "decode_img_per_s": d, "limit_img_per_s": limit,
        "step_img_per_s": step["steady_img_per_s"], "ratio_vs_limit": step["steady_img_per_s"] / limit,
        "step_start_s": step["start_s"], "decode_start_s": decode["start_s"],
        "embed_task_img_per_s": n / task_s, "bare_forward_img_per_s": f, "task_vs_bare_ratio": (n / task_s) / f,
        "forward_photos": bare["photos"], "forward_before_after_img_per_s": bare["before_after"],
    }


def report(r: dict) -> None:
    print(f"{r['photos']} photos of {r['photo_size']} px, {r['backbone']} at {r['image_size']} px, batch "
          f"{r['batch_size']}, {r['num_workers']} workers, {r['cpu_threads']} threads, {r['cpus']} CPUs")
    print(f"{'figure':<44}{'img/s':>10}{'start-up s':>12}")
    print(f"{'F  bare forward (tensors ready)':<44}{r['forward_img_per_s']:>10.1f}{'-':>12}")
    print(f"{'D  decode + preprocess (loader, no model)':<44}{r['decode_img_per_s']:>10.1f}"
          f"{r['decode_start_s']:>12.1f}")
    print(f"{'limit = 1 / (1/F + 1/D)':<44}{r['limit_img_per_s']:>10.1f}{'-':>12}")
    print(f"{'embed step, steady state':<44}{r['step_img_per_s']:>10.1f}{r['step_start_s']:>12.1f}")
    print(f"{'embed step, whole (start-up included)':<44}{r['embed_task_img_per_s']:>10.1f}{'-':>12}")
    print(f"step / limit: {r['ratio_vs_limit']:.2f}   whole step / bare forward: {r['task_vs_bare_ratio']:.2f}")


def report_engines(engines: dict, args, n: int, machine: str) -> None:
    print(f"{'engine':<32}{'img/s':>10}")
    print(f"{'local (DataLoader workers)':<32}{engines['local_img_per_s']:>10.1f}")
    print(f"{'ray (' + str(args.ray_cpus) + ' CPUs, local cluster)':<32}{engines['ray_img_per_s']:>10.1f}")
    print(f"ray cluster start {engines['ray_start_s']:.1f} s (paid once per process); largest vector difference "
          f"{engines['max_abs_diff']:.1e}")
    write_result({**engines, "photos": n, "backbone": args.backbone, "ray_cpus": args.ray_cpus,
                  "machine": machine}, "embed-engines.json")


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
