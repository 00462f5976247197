"""The GPU bench, one command for a lent machine: every stage on CUDA against the limits measured on one H100.

Sections (each fails soft: an error is recorded in the JSON under the section and the next one runs):

* ``forward``: bare backbone forward img/s (bf16 autocast, channels_last, cuDNN autotuned), Lite0 and VGG16
  (VGG16 with random weights when its file is absent: the same work);
* ``train_step``: forward + triplet loss + backward + Adam on random tuple batches (NetVLAD, the default
  trainable blocks), both backbones;
* ``decode``: nvjpeg decode + resize of in-memory JPEGs; the CPU decode path's limit (the photo loader, no model);
* ``embed``: the embed step (``embedding.vectors.embed_images``) on a synthetic catalog of 800 px JPEGs, with
  nvjpeg (``embed.gpu_decode``) and with CPU decoding in loader workers;
* ``train``: the k-means step, then the trainer's epoch and step rate (``training.fit.train_epoch``) on mined tuples
  of the same catalog, uncached and with the frozen-stage cache;
* ``kmeans``: Lloyd's k-means at the kmeans step's default size;
* ``search``: exact kNN (torch, fp16) over 1M x 512; faiss flat search and the IVF-PQ build (on the GPU with
  faiss-gpu).

Writes ``bench/results/gpu.json`` (``gpu-cpu.json`` with ``--device cpu``, which runs every section at tiny sizes
so CI proves the script runs) with each figure's ratio to its H100 limit. Needs nothing but
``make install EXTRAS=gpu,test``; about 4-6 minutes on one H100, stopped at ``--budget-s`` (sections left are
marked skipped).

    .venv/bin/python bench/gpu.py [--device cuda|cpu] [--out FILE] [--budget-s 420]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

from bench import gpu_sections as gs  # noqa: E402
from bench.results_io import write_result  # noqa: E402

SIZES = {  # per device: what each section runs at
    "cuda": {"photos": 4000, "forward_batch": 256, "tuples": 16, "image_size": 224, "kmeans_n": 50_000,
             "knn_vectors": 1_000_000, "knn_dim": 512, "knn_batch": 4096, "faiss_vectors": 1_000_000,
             "min_s": 3.0, "queries": 256, "photo_size": 800},
    "cpu": {"photos": 40, "forward_batch": 2, "tuples": 1, "image_size": 32, "kmeans_n": 2000,
            "knn_vectors": 5000, "knn_dim": 512, "knn_batch": 32, "faiss_vectors": 2000, "min_s": 0.05,
            "queries": 2, "photo_size": 256},
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: cuda when present")
    ap.add_argument("--out", default="", help="JSON path (default bench/results/gpu.json, gpu-cpu.json on cpu)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="sections starting after this are skipped")
    ap.add_argument("--photos", type=int, default=0, help="synthetic catalog size (0: the device's default)")
    ap.add_argument("--workers", type=int, default=0, help="loader workers (0: CPU count, at most 16)")
    ap.add_argument("--sections", default="", help="comma-separated subset of the sections")
    return ap.parse_args(argv)


class Run:
    """The sections' results, each under its name, an error or a skip recorded instead of the figures."""

    def __init__(self, budget_s: float, only: set[str]):
        self.started, self.budget_s, self.only, self.sections = time.perf_counter(), budget_s, only, {}

    def section(self, name: str, fn, *args) -> dict | None:
        if self.only and name not in self.only:
            return None
        spent = time.perf_counter() - self.started
        if spent > self.budget_s:
            self.sections[name] = {"skipped": f"over the time budget ({spent:.0f} s of {self.budget_s:.0f} s)"}
            return None
        t0 = time.perf_counter()
        print(f"[{spent:6.1f} s] {name} ...", flush=True)
        try:
            out = fn(*args)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' figures
            out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=4)}
            print(f"  {name} failed: {out['error']}", flush=True)
        out["section_s"] = round(time.perf_counter() - t0, 2)
        self.sections[name] = out
        return out


def main(argv=None) -> None:
    args = parse_args(argv)
    kind = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    device = torch.device(kind)
    size = {**SIZES[kind], **({"photos": args.photos} if args.photos else {})}
    workers = args.workers or min(16, os.cpu_count() or 1)
    if kind == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = Run(args.budget_s, {s.strip() for s in args.sections.split(",") if s.strip()})
    run.section("environment", environment, device)
    for backbone in ("efficientnet_lite0", "vgg16"):
        short = "lite0" if backbone.startswith("efficientnet") else backbone
        run.section(f"forward_{short}", lambda b=backbone: gs.forward_rate(
            gs.netvlad_model(b, size["image_size"]), size["forward_batch"], size["image_size"], device, size["min_s"]))
        run.section(f"train_step_{short}", lambda b=backbone: gs.train_step_rate(
            gs.netvlad_model(b, size["image_size"]), size["tuples"], 16, 5, size["image_size"], device, size["min_s"]))
    with tempfile.TemporaryDirectory() as tmp:
        from bench.gpu_pipeline import pipeline_sections

        pipeline_sections(run, Path(tmp), device, size, workers)
    run.section("kmeans", gs.kmeans_rate, size["kmeans_n"], 1280, 64, 25, device)
    run.section("search_torch", gs.exact_knn_rate, size["knn_vectors"], size["knn_dim"], size["knn_batch"], 10,
                device, size["min_s"])
    run.section("search_faiss", gs.faiss_rates, size["faiss_vectors"], 256, size["knn_batch"], 10, device,
                kind == "cuda")
    result = {"device": kind, "sizes": size, "workers": workers, "sections": run.sections,
              "limits_h100": gs.H100_LIMITS, "ratios": ratios(run.sections, kind),
              "seconds": round(time.perf_counter() - run.started, 1),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    report(result)
    write_result(result, args.out or ("gpu.json" if kind == "cuda" else "gpu-cpu.json"))


def environment(device: torch.device) -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    try:
        import faiss

        from index.faiss_build import gpu_count

        out.update(faiss=faiss.__version__, faiss_gpus=gpu_count())
    except ImportError as exc:
        out["faiss"] = f"not installed ({exc})"
    return out


def _get(sections: dict, name: str, key: str):
    value = sections.get(name, {}).get(key)
    return value if isinstance(value, (int, float)) else None


def ratios(s: dict, kind: str) -> dict:
    """Each figure over its H100 limit (meaningful on an H100; on the CPU they show only that the keys exist),
    and the goals: embedding >= 0.8 of min(decode, forward), training >= 0.8 of the train limit."""
    lim = gs.H100_LIMITS
    embed_limit = min(lim["nvjpeg_decode_resize_img_s"], lim["lite0_forward_img_s"])
    measured_f, measured_d = _get(s, "forward_lite0", "img_per_s"), _get(s, "decode", "img_per_s")
    pairs = {
        "forward_lite0": (measured_f, lim["lite0_forward_img_s"]),
        "forward_vgg16": (_get(s, "forward_vgg16", "img_per_s"), lim["vgg16_forward_img_s"]),
        "train_step_lite0": (_get(s, "train_step_lite0", "img_per_s"), lim["lite0_netvlad_train_img_s"]),
        "train_step_vgg16": (_get(s, "train_step_vgg16", "img_per_s"), lim["vgg16_netvlad_train_img_s"]),
        "decode_nvjpeg": (measured_d, lim["nvjpeg_decode_resize_img_s"]),
        "embed_nvjpeg_steady": (_get(s, "embed_nvjpeg", "steady_img_per_s"), embed_limit),
        "embed_cpu_decode_steady": (_get(s, "embed_cpu_decode", "steady_img_per_s"), embed_limit),
        "trainer_cached_step": (_get(s, "train", "cached_step_img_per_s"), lim["lite0_netvlad_train_img_s"]),
        "trainer_step": (_get(s, "train", "step_img_per_s"), lim["lite0_netvlad_train_img_s"]),
        "search_exact_knn": (_get(s, "search_torch", "queries_per_s"), lim["exact_knn_1m_512_fp16_qps"]),
    }
    out = {k: (v / ref if v is not None else None) for k, (v, ref) in pairs.items()}
    steady = _get(s, "embed_nvjpeg", "steady_img_per_s")
    same_run = min(measured_f, measured_d) if measured_f and measured_d else None
    out["embed_nvjpeg_vs_same_run_limit"] = steady / same_run if steady and same_run else None
    out["goals"] = {"embedding >= 0.8 x min(decode, forward)": out["embed_nvjpeg_steady"],
                    "training >= 0.8 x train limit": out["train_step_lite0"]}
    out["note"] = ("ratios to the H100 limits; meaningful on an H100 only" if kind == "cuda" else
                   "CPU run at tiny sizes: ratios to H100 limits are meaningless, kept so the keys are tested")
    return out


def report(result: dict) -> None:
    print(f"device {result['device']}, {result['seconds']} s; sizes {result['sizes']}")
    print(f"{'section':<22} {'figure':<28} {'value':>12} {'s':>7}")
    for name, sec in result["sections"].items():
        if "error" in sec or "skipped" in sec:
            print(f"{name:<22} {'ERROR' if 'error' in sec else 'skipped':<28} {sec.get('error', sec.get('skipped'))}")
            continue
        figures = [(k, v) for k, v in sec.items() if isinstance(v, float) and k.endswith("_per_s")] or [("", None)]
        for k, v in figures:
            print(f"{name:<22} {k:<28} {'' if v is None else f'{v:,.1f}':>12} {sec.get('section_s', 0):>7.1f}")
    print("ratios to the H100 limits: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()
                                                   if isinstance(v, float)))


if __name__ == "__main__":
    main()
