"""Per-rank entry point of multi-GPU training: ``python -m tasks.train_ddp HOME ARGS_JSON OUT``.

``tasks.train.launch_ddp`` starts it under ``torchrun``, one process per GPU; every rank runs
``tasks.train.train_rank`` with the same settings, and rank 0 writes the run id it produced to ``OUT``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from core.settings import Settings
from tasks.train import train_rank


def main(home: str, args_json: str, out: str) -> None:
    args = json.loads(args_json)
    settings = Settings.load(home=home, overrides=args.pop("overrides"))
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group("nccl")
    try:
        run_id = train_rank(settings, args["split_run_id"], args["init_model_id"], args["kmeans_run_id"], args["photos"])
        if int(os.environ["RANK"]) == 0:
            Path(out).write_text(run_id)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
