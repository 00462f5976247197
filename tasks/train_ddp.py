"""Multi-GPU training: ``train_model`` re-launches itself under ``torchrun``, one process per GPU.

``python -m tasks.train_ddp HOME ARGS_JSON OUT`` is the per-rank entry point; rank 0 writes the
run id it produced to ``OUT``, which :func:`launch` reads back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from shoesearch.errors import ShoesearchError


def launch(settings, split_run_id, init_model_id, kmeans_run_id, photos) -> str:
    """Run ``tasks.train._train`` on every GPU through torchrun; returns rank 0's run id."""
    args = {"split_run_id": split_run_id, "init_model_id": init_model_id, "kmeans_run_id": kmeans_run_id,
            "photos": photos, "overrides": settings.as_overrides()}  # every rank runs with exactly these settings
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run_id"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torch.cuda.device_count()}", "-m", "tasks.train_ddp",
               str(settings.home), json.dumps(args), str(out)]
        done = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0 or not out.exists():
            raise ShoesearchError(f"multi-GPU training failed (torchrun exit {done.returncode})")
        return out.read_text().strip()


def main(home: str, args_json: str, out: str) -> None:
    from shoesearch.settings import Settings
    from tasks.train import _train

    args = json.loads(args_json)
    settings = Settings.load(home=home, overrides=args.pop("overrides"))
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group("nccl")
    try:
        run_id = _train(settings, args["split_run_id"], args["init_model_id"], args["kmeans_run_id"], args["photos"])
        if int(os.environ["RANK"]) == 0:
            Path(out).write_text(run_id)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
