"""bench/scaling.py's arithmetic: how each step grows (fits over the measured sizes) and the nightly at 500k photos
extrapolated on this CPU and on one H100. Not a benchmark itself (``make bench`` runs it as a script: it does
nothing).

Assumptions of the extrapolation (docs/scale.md): 500k photos, 350k kept by denoise, 70 % of them training photos
(245k queries per epoch), the default tuple of 1 + 5 + 10 images; k-means samples at most ``train.kmeans_images``
photos and the whitening at most ``train.whitening_photos`` (both constant beyond); the frozen-stage cache
(88 KB per training photo for Lite0) no longer fits ``train.frozen_cache_mb`` (2,048 MB) past ~23k training
photos, so the CPU epoch runs at the uncached rate of ``bench/results/train.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.gpu_sections import H100_LIMITS  # noqa: E402
from bench.scale_common import fit_affine, fit_growth  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = {"photos": 500_000, "kept": 350_000, "train_photos": 245_000, "tuple": 16}
TRAIN_PHASES = ("whitening", "frozen cache", "epoch", "validation", "publish")


def _series(runs: list[dict], step: str, key: str, phase: str | None = None) -> tuple[list, list]:
    xs, ys = [], []
    for r in runs:
        rec = r["steps"].get(step, {})
        rec = rec.get(phase, {}) if phase else rec
        if isinstance(rec.get(key), (int, float)):
            xs.append(r["photos"])
            ys.append(rec[key])
    return xs, ys


def growth(runs: list[dict], queries: int) -> dict:
    """Per step (and training phase): the power-law exponent of seconds and of peak memory over the sizes, and
    the affine fit of seconds (fixed + per photo)."""
    out = {}
    names = [(s, None) for s in ("embed", "denoise", "kmeans", "index")] + [("train", p) for p in
                                                                              ("total", *TRAIN_PHASES)]
    for step, phase in names:
        xs, secs = _series(runs, step, "seconds", phase)
        _, mem = _series(runs, step, "tree_peak_mb", phase)
        _, own = _series(runs, step, "self_peak_mb", phase)
        out[f"{step}/{phase}" if phase else step] = {
            "photos": xs, "seconds": secs, "tree_peak_mb": mem, "self_peak_mb": own,
            "time_exponent": fit_growth(xs, secs)["exponent"], "memory_exponent": fit_growth(xs, own)["exponent"],
            "seconds_fit": fit_affine(xs, secs)}
    epochs = [r["steps"]["train"]["epoch"]["seconds"] for r in runs if "epoch" in r["steps"].get("train", {})]
    out["train/epoch"]["seconds_per_query"] = (sum(epochs) / len(epochs) / queries) if epochs and queries else None
    return out


def _at(fit: dict, n: float) -> float | None:
    f = fit.get("seconds_fit", {})
    return None if f.get("per_unit") is None else max(0.0, f["fixed"] + f["per_unit"] * n)


def _train_json() -> dict:
    path = RESULTS / "train.json"
    return json.loads(path.read_text()) if path.exists() else {}


def extrapolate(result: dict) -> dict:
    """The nightly's steps at 500k photos, seconds, on this CPU (from the fits) and on one H100 (from the limits)."""
    g, t = result["growth"], TARGET
    largest = max((r["photos"] for r in result["runs"] if "photos" in r), default=0)
    ips = _train_json().get("images_per_s", {})
    uncached = ips.get("train epoch") and ips.get("cached epoch") and ips["cached epoch"] / ips["train epoch"]
    per_query = g["train/epoch"].get("seconds_per_query")
    cpu = {
        "embed": _at(g["embed"], t["photos"]),
        "denoise": _at(g["denoise"], t["photos"]),
        "kmeans": _at(g["kmeans"], 1000),  # train.kmeans_images (1,000) photos at most: constant beyond
        # the uncached epoch rate of train.json (quiet machine) where there is one, else the per-query fit here
        "train_epoch": (t["train_photos"] * t["tuple"] / ips["train epoch"] if ips.get("train epoch") else
                        per_query * t["train_photos"] * (uncached or 1.0) if per_query else None),
        "train_whitening": _at(g["train/whitening"], min(8192 / 0.7, t["photos"])),
        "index": _at(g["index"], t["kept"]),
    }
    embed_limit = min(H100_LIMITS["nvjpeg_decode_resize_img_s"], H100_LIMITS["lite0_forward_img_s"])
    h100 = {
        "embed": t["photos"] / (0.8 * embed_limit),
        "denoise": cpu["denoise"],  # per-product distances on the CPU: no GPU part
        "kmeans": 50_000 * 25 * 64 * 1280 * 3 / 50e12 + 1000 / embed_limit,  # Lloyd on 50k x 1280 + 1k photos
        "train_epoch": t["train_photos"] * t["tuple"] / (0.8 * H100_LIMITS["lite0_netvlad_train_img_s"]),
        "index": t["kept"] / (0.8 * embed_limit) + 10.0,  # re-embed + IVF-PQ build on faiss-gpu (~10 s)
    }
    return {"assumptions": {**t, "uncached_epoch_factor": uncached, "h100_efficiency": 0.8,
                            "measured_up_to_photos": largest},
            "cpu_seconds": cpu, "h100_seconds": h100,
            "cpu_nightly_hours_1_epoch": _hours(cpu), "h100_nightly_hours_1_epoch": _hours(h100),
            "note": "extrapolated, not measured: CPU from fits over the measured sizes, H100 from the issue's limits "
                    "at the 0.8 goal; training counts one epoch (train.epochs=10 and early stopping multiply it)"}


def _hours(parts: dict) -> float | None:
    vals = [v for k, v in parts.items() if k != "train_whitening" and v is not None]
    return round(sum(vals) / 3600, 2) if vals else None


def print_table(result: dict) -> None:
    print(f"{'step':<22}" + "".join(f"{n:>16,}" for n in result["sizes"] if n) + f"{'time exp':>10}{'mem exp':>9}")
    for name, g in result["growth"].items():
        cells = "".join(f"{s:>8.1f}s {m:>5.0f}M" for s, m in zip(g["seconds"], g["self_peak_mb"]))
        te, me = g["time_exponent"], g["memory_exponent"]
        print(f"{name:<22}{cells}{'' if te is None else f'{te:>10.2f}'}{'' if me is None else f'{me:>9.2f}'}")
    for b, r in result["batch_sweep"].items():
        tr = r.get("steps", {}).get("train", {})
        print(f"batch {b:>3}: " + ", ".join(f"{p} {tr[p]['self_peak_mb']:.0f} MB" for p in TRAIN_PHASES if p in tr))
    x = result["extrapolated_500k"]
    print(f"500k photos, 1 epoch: CPU ~{x['cpu_nightly_hours_1_epoch']} h, "
          f"one H100 ~{x['h100_nightly_hours_1_epoch']} h (extrapolated)")


if __name__ == "__main__":
    pass
