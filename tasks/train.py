"""Step ``train``: NetVLAD trained with the weakly supervised triplet loss, as a warehouse run.

Stable entry points (the nightly flow uses them):

* ``train_model(settings, split_run_id, init_model_id=None, kmeans_run_id=None, photos="auto") -> run_id``
  warm-starts from ``init_model_id`` when given, else from the k-means run (default: the latest).
  The run writes one ``models`` row (``kind="netvlad"``, test metrics in ``metrics``, see
  ``warehouse.models_table``); ``model_id_of_run(settings, run_id)`` returns its id and
  ``embedding.embedders.open_embedder(settings, model_id)`` loads it.

This module keeps the books: the starting model, the run, a ``train_metrics`` row per epoch, the test score and
the model row. The loop itself is ``training.fit.fit`` (one file). Several processes: on a host with several
GPUs (or with ``train.processes`` > 1, e.g. CPU processes with gloo) ``train_model`` re-launches this module under
``torchrun`` (``python -m tasks.train HOME ARGS_JSON OUT`` is the per-rank entry point); the queries are sharded
over ranks in equal parts, gradients averaged by DDP, and only rank 0 writes the warehouse and checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from prefect import task

from core.errors import ShoesearchError
from core.files import atomic_path
from core.finite import require_finite
from core.progress import run_logger
from core.settings import Settings
from models.backbones import id_part
from models.device import pick_device
from models.netvlad_model import load_checkpoint, save_checkpoint
from training.checkpoints import Checkpoints
from training.data import load_photos
from training.evaluation import recall
from training.fit import NOT_FINITE_HINT, _scored, epoch_line, fit, stop_reason
from training.mining import query_indices
from training.start import kmeans_model, whiten_on_photos
from warehouse import latest_run, open_warehouse, start_run
from warehouse.models_table import model_of_run, model_record, model_row
from warehouse.overrides import overrides_run


def model_id_of_run(settings, run_id: str) -> str:
    """The model id a ``train`` (or ``kmeans``) run produced."""
    return model_of_run(open_warehouse(settings), run_id)["model_id"]


def _starting_model(settings, wh, init_model_id: str | None, kmeans_run_id: str | None, n_train: int):
    """(parent model row, model): a warm start from a trained model, else NetVLAD at k-means init
    (its whitening is fitted on the training photos once the loop's inputs are known)."""
    if init_model_id:
        parent = model_row(wh, init_model_id)
        return parent, load_checkpoint(settings.home / parent["path"])[0]
    kmeans_run_id = kmeans_run_id or latest_run(wh, "kmeans")
    if kmeans_run_id is None:
        raise ShoesearchError("no k-means run: run kmeans_init first or give init_model_id")
    parent = model_of_run(wh, kmeans_run_id)
    return parent, kmeans_model(settings, parent, n_train)


def train_model(settings, split_run_id: str, init_model_id: str | None = None, kmeans_run_id: str | None = None,
                photos: str = "auto") -> str:
    """Train NetVLAD on the split's training photos; returns the train run id (see module docstring)."""
    world = processes(settings)
    if world > 1 and "WORLD_SIZE" not in os.environ:
        return launch_ddp(settings, split_run_id, init_model_id, kmeans_run_id, photos, world)
    return train_rank(settings, split_run_id, init_model_id, kmeans_run_id, photos)


def processes(settings) -> int:
    """Training processes: ``train.processes``, or (0) one per GPU when training on CUDA with several, else 1."""
    if settings.train.processes:
        return settings.train.processes
    on_gpu = settings.train.device != "cpu" and torch.cuda.is_available()
    return torch.cuda.device_count() if on_gpu and torch.cuda.device_count() > 1 else 1


def train_rank(settings, split_run_id, init_model_id, kmeans_run_id, photos) -> str:
    """This process's part of training: all of it in one process; under torchrun (``RANK``/``WORLD_SIZE``),
    rank 0 keeps the books and the other ranks only compute (they return an empty run id)."""
    cfg = settings.train
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    wh = open_warehouse(settings)
    corrections = overrides_run(wh)  # the newest corrections by hand, read before the photos they select
    train_set, val_set, test_set = (load_photos(wh, split_run_id, photos, (s,)) for s in ("train", "val", "test"))
    if len(query_indices(train_set)) == 0 or len(set(train_set.product_ids)) < 2:
        raise ShoesearchError("training needs at least 2 training products, one with 2+ photos")
    parent, model = _starting_model(settings, wh, init_model_id, kmeans_run_id, len(train_set))
    params = {"split_run_id": split_run_id, "parent_model_id": parent["model_id"], "photos": train_set.photos,
              "train": json.loads(settings.section_json("train")), "world_size": world}
    key = {**params, "train": {k: v for k, v in params["train"].items() if k != "processes"}}  # resumable on
    checkpoints = Checkpoints.keyed(settings.models_dir / "checkpoints",  # any number of processes
                                    {k: v for k, v in key.items() if k != "world_size"})
    job = {"settings": settings, "model": model, "sets": (train_set, val_set), "device": device,
           "checkpoints": checkpoints, "rank": rank, "world": world, "warm": bool(init_model_id)}
    if rank != 0:
        fit(model_id=f"netvlad-{model.config.backbone}-rank{rank}", **job)
        return ""
    with start_run(wh, step="train", params=params, inputs=[split_run_id, parent["run_id"], train_set.denoise_run_id,
                                                               corrections]) as run:
        model_id = f"netvlad-{id_part(model.config.backbone)}-{run.run_id.split('-', 1)[1]}"
        log = run_logger("train")
        log.info("train %s: %s from %s on %d training photos (%s), %d validation photos", run.run_id, model_id,
                 parent["model_id"], len(train_set), train_set.photos, len(val_set))
        state = fit(model_id=model_id, on_epoch=lambda *a: _metrics_row(run, cfg.epochs, log, *a), **job)
        row = _publish(settings, state, params, parent, checkpoints, (train_set, test_set), device)
        run.write("models", [row])
        run.message = f"{stop_reason(state, cfg.epochs, cfg.patience)}; {_test_line(row)}"
        log.info("train %s: %s", run.run_id, run.message)
    checkpoints.clear()  # committed: the next run with these inputs starts afresh
    return run.run_id


def _metrics_row(run, epochs: int, log, state: dict, loss: float, ips: float, val: dict, seconds: float) -> None:
    """An epoch's ``train_metrics`` row, durable at once (the run is still open), and its line in the run log."""
    log.info(epoch_line(state, epochs, loss, val, ips, seconds, state["stale"] == 0))
    run.commit_chunk("train_metrics", [{
        "model_id": state["model_id"], "epoch": state["epoch"], "loss": loss, "val_recall_at_1": val["recall_at_1"],
        "val_recall_at_5": val["recall_at_5"], "images_per_s": ips, "seconds": seconds}])


def _test_line(row: dict) -> str:
    """The published model's test scores, for the run's message and log."""
    metrics = json.loads(row["metrics"]) if isinstance(row["metrics"], str) else row["metrics"]
    if not metrics.get("queries"):
        return f"model {row['model_id']}: no test photos"
    return (f"model {row['model_id']}: test R@1 {metrics['recall_at_1']:.3f}, mAP {metrics['mean_ap']:.3f} "
            f"({metrics['queries']} queries)")


def _publish(settings, state: dict, params: dict, parent: dict, checkpoints: Checkpoints, sets, device) -> dict:
    """The best epoch scored on the test photos and saved under ``models/``; its ``models`` row."""
    (train_set, test_set), home, model_id = sets, settings.home, state["model_id"]
    best, _ = load_checkpoint(checkpoints.path("best"))
    if best.whitening is not None and not settings.train.learn_whitening:
        whiten_on_photos(best.to(device), settings, train_set, device)
    test = recall(best.to(device), settings, test_set, device)
    require_finite(f"train: {model_id} weights", best.state_dict(), NOT_FINITE_HINT)
    require_finite(f"train: {model_id} test metrics", _scored(test), NOT_FINITE_HINT)
    rel, init_rel = f"models/{model_id}.pt", f"models/{model_id}.init.pt"
    save_checkpoint(home / rel, best)
    with atomic_path(home / init_rel) as tmp:
        shutil.copyfile(checkpoints.path("init"), tmp)
    return model_record(model_id, "netvlad", best.config.backbone, rel, parent["model_id"],
                        {**params, "init_path": init_rel, "epochs_run": state["epoch"],
                         "best_val_recall_at_1": state["best"], "dim": best.dim,
                         "start_val_recall_at_1": state.get("start_val_recall_at_1")}, {"split": "test", **test})


def launch_ddp(settings, split_run_id, init_model_id, kmeans_run_id, photos, world: int) -> str:
    """Run :func:`train_rank` in ``world`` processes through torchrun (:func:`rank_main`): one per GPU (NCCL), or
    CPU processes (gloo); returns rank 0's run id."""
    args = {"split_run_id": split_run_id, "init_model_id": init_model_id, "kmeans_run_id": kmeans_run_id,
            "photos": photos, "overrides": settings.as_overrides()}  # every rank runs with exactly these settings
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run_id"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={world}", "-m", "tasks.train",
               str(settings.home), json.dumps(args), str(out)]
        done = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, preexec_fn=_die_with_parent)
        if done.returncode != 0 or not out.exists():
            raise ShoesearchError(f"multi-process training failed (torchrun exit {done.returncode}): its ranks' "
                                  "errors are printed above")
        return out.read_text().strip()


def rank_main(home: str, args_json: str, out: str) -> None:
    """One rank of multi-process training (``python -m tasks.train HOME ARGS_JSON OUT`` under torchrun, started
    by :func:`launch_ddp`): NCCL on GPUs, gloo on CPUs, the same code; rank 0 writes its run id to ``OUT``."""
    _die_with_parent()
    args = json.loads(args_json)
    settings = Settings.load(home=home, overrides=args.pop("overrides"))
    cuda = pick_device(settings.train.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    try:
        run_id = train_rank(settings, args["split_run_id"], args["init_model_id"], args["kmeans_run_id"], args["photos"])
        if int(os.environ["RANK"]) == 0:
            Path(out).write_text(run_id)
    finally:
        torch.distributed.destroy_process_group()


def _die_with_parent() -> None:
    """Make this process die with its parent (Linux ``PR_SET_PDEATHSIG``): torchrun with the training command, each
    rank with torchrun. torchrun starts ranks in sessions of their own, so a killed training command would
    otherwise leave its ranks training on, racing the rerun for the checkpoints and committing a run nobody
    waits for."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: torchrun's own signal handling is all there is
        pass


train_model_task = task(train_model, name="train")


if __name__ == "__main__":
    rank_main(*sys.argv[1:4])
