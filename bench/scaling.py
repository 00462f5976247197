"""Cost of growth: embed, denoise, k-means, one training epoch and the index at 2-3 catalogue sizes, time and
peak memory, how each grows, and the nightly extrapolated to 500k photos on this CPU and on one H100.

Each size runs in a fresh process (peak memory is that size's own) on a synthetic catalog of 800 px JPEGs with
the default settings, except: one training epoch of ``--queries`` queries (0: every training photo; the epoch's
time is linear in its queries by construction, so a capped epoch is extrapolated per query, and the JSON says
which figures were measured and which extrapolated). Training's memory is recorded per phase
(``bench/scaling_train.py``), and at the smallest size for several ``train.batch_size`` (what grows with the
batch; the size run itself gives the default, 8). Memory: ``self_peak_mb`` is the step's process,
``tree_peak_mb`` adds its loader workers (``bench/scale_common.py``). Prints a table, writes
bench/results/scaling.json. About 15-18 minutes on 2 quiet cores.

    .venv/bin/python bench/scaling.py [--sizes 200 800 1600] [--queries 128] [--batch-sizes 2 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

from bench.results_io import write_result  # noqa: E402
from bench.scale_common import peak_memory, photo_count, synthetic_home  # noqa: E402

STEPS = ("embed", "denoise", "kmeans", "train", "index")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 800, 1600], help="catalogue sizes (photos)")
    ap.add_argument("--queries", type=int, default=128, help="queries of the measured epoch (0: every photo)")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[2, 16],
                    help="train.batch_size sweep at the smallest size (its size run has the default, 8)")
    ap.add_argument("--photo-size", type=int, default=800)
    ap.add_argument("--out", default="scaling.json")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one size
    ap.add_argument("--train-batch", type=int, help=argparse.SUPPRESS)  # child: training only, at this batch
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def overrides(args, batch: int | None = None) -> dict:
    return {"train.epochs": 1, "train.queries_per_epoch": args.queries,
            **({"train.batch_size": batch} if batch else {})}


def one_size(args) -> dict:
    """Every step once on a catalog of ``args.one`` photos (this process is fresh: its peaks are its own)."""
    from bench.scaling_train import train_by_phase, whitening_bytes_per_photo
    from embedding.vectors import embed_images
    from tasks.denoise import denoise
    from tasks.index import build_index
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split

    started = time.perf_counter()
    settings = synthetic_home(Path(args.tmp), args.one, args.photo_size, overrides(args, args.train_batch))
    out = {"photos": photo_count(settings), "catalog_s": round(time.perf_counter() - started, 1), "steps": {}}
    steps = out["steps"]
    if args.train_batch:  # training only, on a home a size run left
        from warehouse import latest_run, open_warehouse

        split = latest_run(open_warehouse(settings), "split") or make_split(settings)
        if latest_run(open_warehouse(settings), "kmeans") is None:
            kmeans_init(settings, split)
        _, steps["train"] = train_by_phase(settings, split)
        return {**out, "batch_size": args.train_batch}
    for name, fn in (("embed", lambda: embed_images(settings)), ("denoise", lambda: denoise(settings))):
        with peak_memory(steps.setdefault(name, {})):
            fn()
    split = make_split(settings)
    with peak_memory(steps.setdefault("kmeans", {})):
        kmeans_init(settings, split)
    _, steps["train"] = train_by_phase(settings, split)
    steps["train"]["train_photos"] = _train_photos(settings, split)
    with peak_memory(steps.setdefault("index", {})):
        build_index(settings)
    out["whitening_bytes_per_photo"] = whitening_bytes_per_photo(settings)
    return out


def _train_photos(settings, split: str) -> int:
    from training.data import load_photos
    from warehouse import open_warehouse

    return len(load_photos(open_warehouse(settings), split, "auto", ("train",)))


def child(args, tmp: str, size: int, batch: int | None = None) -> dict:
    """Run one size (or one training batch size) in a fresh process; its JSON."""
    out = Path(tmp) / f"size-{size}-{batch or 0}.json"
    cmd = [sys.executable, __file__, "--one", str(size), "--tmp", tmp, "--child-out", str(out),
           "--queries", str(args.queries), "--photo-size", str(args.photo_size)]
    cmd += ["--train-batch", str(batch)] if batch else []
    env = {**os.environ, "TQDM_DISABLE": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1], check=False)
    if done.returncode != 0 or not out.exists():
        return {"error": f"size {size} (batch {batch}) exited {done.returncode}"}
    return json.loads(out.read_text())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        Path(args.child_out).write_text(json.dumps(one_size(args)))
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [child(args, tmp, n) for n in args.sizes]
        batches = {b: child(args, tmp, min(args.sizes), b) for b in args.batch_sizes}
    smallest = runs[args.sizes.index(min(args.sizes))]
    batches = dict(sorted({**batches, 8: batches.get(8, smallest)}.items()))  # the size run: the default
    from bench.scaling_fit import extrapolate, growth, print_table

    ok = [r for r in runs if "error" not in r]
    result = {"sizes": [r.get("photos") for r in runs], "runs": runs, "batch_sweep": batches,
              "queries_per_epoch": args.queries, "photo_size": args.photo_size,
              "growth": growth(ok, args.queries), "cpu_count": os.cpu_count(),
              "seconds": round(time.perf_counter() - started, 1),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    result["extrapolated_500k"] = extrapolate(result)
    print_table(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
