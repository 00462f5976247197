"""Step ``train``: NetVLAD trained with the weakly supervised triplet loss, as a warehouse run.

Stable entry points (the nightly flow uses them):

* ``train_model(settings, split_run_id, init_model_id=None, kmeans_run_id=None, photos="auto") -> run_id``
  warm-starts from ``init_model_id`` when given, else from the k-means run (default: the latest).
  The run writes one ``models`` row (``kind="netvlad"``, test metrics in ``metrics``, see
  ``warehouse.models_table``); ``model_id_of_run(settings, run_id)`` returns its id and
  ``serving.embedders.open_embedder(settings, model_id)`` loads it.
* ``make_split`` (``tasks.split``), ``kmeans_init`` (``tasks.kmeans``), ``evaluate`` (``tasks.evaluate``).

This module is the bookkeeping: the starting model, the run, the checkpoints (each epoch; a rerun with
the same inputs resumes from the last one), the test score and the model row. The loop itself (mining,
epochs, early stopping) is ``tasks.train_loop``. Multi-GPU: on a host with several GPUs ``train_model``
re-launches itself under ``torchrun`` (``tasks.train_ddp`` is the per-rank entry point); the queries are
sharded over ranks, gradients averaged by DDP, and only rank 0 writes the warehouse and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from prefect import task
from tqdm import tqdm

from core.errors import ShoesearchError
from core.files import atomic_path
from core.finite import require_finite
from models.backbones import id_part
from models.device import on_device, pick_device
from models.netvlad_model import NetVLADModel, load_checkpoint, save_checkpoint
from tasks.train_data import PhotoDataset, PhotoSet, load_photos
from tasks.train_loop import fit_whitening, kmeans_model, new_state, query_indices, recall, run_epochs, trainable
from warehouse import latest_run, open_warehouse, start_run
from warehouse.models_table import model_of_run, model_record, model_row

NOT_FINITE_HINT = "training diverged: lower train.lr"


def whiten_on_photos(model: NetVLADModel, settings, photos: PhotoSet, device: torch.device) -> None:
    """Fit ``model``'s PCA whitening on the NetVLAD vectors of ``photos`` (read as files, full forward)."""
    fit_whitening(model, PhotoDataset(settings, photos.paths, settings.train.image_size, model.backbone.mean,
                                      model.backbone.std), settings, device)


def model_from_kmeans(settings, kmeans_row: dict, train_photos: PhotoSet, device: torch.device) -> NetVLADModel:
    """NetVLAD at k-means init; its PCA whitening fitted on the training photos' NetVLAD vectors."""
    model = kmeans_model(settings, kmeans_row, len(train_photos)).to(device)
    whiten_on_photos(model, settings, train_photos, device)
    return model.cpu()


def model_id_of_run(settings, run_id: str) -> str:
    """The model id a ``train`` (or ``kmeans``) run produced."""
    return model_of_run(open_warehouse(settings), run_id)["model_id"]


def _checkpoint_dir(settings, key_parts: dict) -> Path:
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return settings.models_dir / "checkpoints" / key


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
    if settings.train.device != "cpu" and torch.cuda.device_count() > 1 and "WORLD_SIZE" not in os.environ:
        return launch_ddp(settings, split_run_id, init_model_id, kmeans_run_id, photos)
    return train_rank(settings, split_run_id, init_model_id, kmeans_run_id, photos)


def train_rank(settings, split_run_id, init_model_id, kmeans_run_id, photos) -> str:
    """This process's part of training: all of it in one process; under torchrun (``RANK``/``WORLD_SIZE``),
    rank 0 keeps the books and the other ranks only compute (they return an empty run id)."""
    cfg = settings.train
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(cfg.device if world == 1 else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    wh = open_warehouse(settings)
    train_set = load_photos(wh, split_run_id, photos, ("train",))
    val_set = load_photos(wh, split_run_id, photos, ("val",))
    if len(query_indices(train_set)) == 0 or len(set(train_set.product_ids)) < 2:
        raise ShoesearchError("training needs at least 2 training products, one with 2+ photos")
    parent, model = _starting_model(settings, wh, init_model_id, kmeans_run_id, len(train_set))
    params = {"split_run_id": split_run_id, "parent_model_id": parent["model_id"], "photos": train_set.photos,
              "train": json.loads(settings.section_json("train")), "world_size": world}
    ckpt_dir = _checkpoint_dir(settings, {k: v for k, v in params.items() if k != "world_size"})
    sets = (train_set, val_set, load_photos(wh, split_run_id, photos, ("test",)))
    job = _CheckpointedTraining(settings, model, parent, sets, ckpt_dir, device, rank, world, warm=bool(init_model_id))
    if rank != 0:
        job.fit(f"netvlad-{model.config.backbone}-rank{rank}", on_epoch=lambda *_: None)
        return ""
    with start_run(wh, step="train", params=params, inputs=[split_run_id, parent["run_id"], train_set.denoise_run_id]) as run:
        model_id = f"netvlad-{id_part(model.config.backbone)}-{run.run_id.split('-', 1)[1]}"
        state = job.fit(model_id, on_epoch=job.bookkeeper(run))
        run.write("models", [job.publish(state, params)])
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # committed: the next run with these inputs starts afresh
    return run.run_id


class _CheckpointedTraining:
    """One training job: its model, photo sets, device and checkpoint files (``init.pt``, ``last.pt``,
    ``best.pt`` in ``ckpt_dir``, keyed by the job's inputs and settings)."""

    def __init__(self, settings, model, parent: dict, sets: tuple[PhotoSet, PhotoSet, PhotoSet], ckpt_dir: Path,
                 device: torch.device, rank: int, world: int, warm: bool):
        self.settings, self.model, self.parent, self.ckpt_dir = settings, model, parent, ckpt_dir
        self.train_set, self.val_set, self.test_set = sets
        self.device, self.rank, self.world, self.warm = device, rank, world, warm
        cfg = settings.train
        on_device(model, device)
        if model.whitening is not None and not cfg.learn_whitening:
            model.whitening.requires_grad_(False)  # refitted on the trained descriptors in publish()
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)

    def _resume(self, state: dict) -> tuple[dict, bool]:
        """The state of the last finished epoch of an interrupted run with these inputs, if there is one."""
        if not (self.ckpt_dir / "last.pt").exists():
            return state, False
        _, ckpt = load_checkpoint(self.ckpt_dir / "last.pt")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        return ckpt["state"], True

    def fit(self, model_id: str, on_epoch) -> dict:
        """Prepare the loop's inputs (frozen-stage cache, whitening at k-means init) and run it."""
        cfg, model = self.settings.train, self.model
        state, resumed = self._resume(new_state(model_id))
        photos = PhotoDataset(self.settings, self.train_set.paths, cfg.image_size, model.backbone.mean,
                              model.backbone.std)
        net, photos = trainable(model, self.settings, photos, self.device, self.world)
        if not resumed:
            if not self.warm:
                fit_whitening(net, photos, self.settings, self.device)
            if self.rank == 0:
                save_checkpoint(self.ckpt_dir / "init.pt", model, {"state": state})
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index])
        overall = tqdm(total=cfg.epochs, initial=min(state["epoch"], cfg.epochs), unit="epoch", position=0,
                       desc=f"train {model.config.backbone}", disable=self.rank != 0 or None)

        def after_epoch(state, loss, ips, val, improved, seconds):
            on_epoch(state, loss, ips, val, improved, seconds)
            overall.update(1)
            overall.set_postfix(loss=f"{loss:.4f}", val_r1=f"{val['recall_at_1']:.3f}", best=f"{state['best']:.3f}")

        def on_start(state):  # the starting model is the best one until an epoch beats it on validation
            save_checkpoint(self.ckpt_dir / "best.pt", model, {"state": state})

        state = run_epochs(net, model, self.optimizer, self.settings, self.train_set, photos, self.val_set, state,
                           self.device, after_epoch, self.rank, self.world, on_start=on_start)
        overall.close()
        return state

    def bookkeeper(self, run):
        """After each epoch: the best checkpoint, the ``train_metrics`` row (durable now), the last checkpoint."""
        def on_epoch(state, loss, ips, val, improved, seconds):
            _require_finite_epoch(self.model, state["epoch"], loss, val)
            if improved:
                save_checkpoint(self.ckpt_dir / "best.pt", self.model, {"state": state})
            run.commit_chunk("train_metrics", [{
                "model_id": state["model_id"], "epoch": state["epoch"], "loss": loss,
                "val_recall_at_1": val["recall_at_1"], "val_recall_at_5": val["recall_at_5"], "images_per_s": ips,
                "seconds": seconds}])
            save_checkpoint(self.ckpt_dir / "last.pt", self.model,
                            {"optimizer": self.optimizer.state_dict(), "state": state})
        return on_epoch

    def publish(self, state: dict, params: dict) -> dict:
        """The best epoch scored on the test photos and saved under ``models/``; its ``models`` row."""
        home, model_id = self.settings.home, state["model_id"]
        best, _ = load_checkpoint(self.ckpt_dir / "best.pt")
        if best.whitening is not None and not self.settings.train.learn_whitening:
            whiten_on_photos(best.to(self.device), self.settings, self.train_set, self.device)
        test = recall(best.to(self.device), self.settings, self.test_set, self.device)
        require_finite(f"train: {model_id} weights", best.state_dict(), NOT_FINITE_HINT)
        require_finite(f"train: {model_id} test metrics", _scored(test), NOT_FINITE_HINT)
        rel, init_rel = f"models/{model_id}.pt", f"models/{model_id}.init.pt"
        save_checkpoint(home / rel, best)
        with atomic_path(home / init_rel) as tmp:
            shutil.copyfile(self.ckpt_dir / "init.pt", tmp)
        return model_record(model_id, "netvlad", best.config.backbone, rel, self.parent["model_id"],
                            {**params, "init_path": init_rel, "epochs_run": state["epoch"],
                             "best_val_recall_at_1": state["best"], "dim": best.dim,
                             "start_val_recall_at_1": state.get("start_val_recall_at_1")}, {"split": "test", **test})


def _require_finite_epoch(model, epoch: int, loss: float, val: dict) -> None:
    """Refuse an epoch (before its metrics row and checkpoints) whose loss, validation scores or weights hold NaN
    or infinity: a diverged model would otherwise be committed, scored and served."""
    require_finite(f"train: epoch {epoch} loss", loss, NOT_FINITE_HINT)
    require_finite(f"train: epoch {epoch} validation", _scored(val), NOT_FINITE_HINT)
    require_finite(f"train: epoch {epoch} weights", model.state_dict(), NOT_FINITE_HINT)


def _scored(metrics: dict) -> dict:
    """``metrics`` when photos were scored; {} when none were (``recall`` gives NaN for "no score" then)."""
    return metrics if metrics.get("queries") else {}


def launch_ddp(settings, split_run_id, init_model_id, kmeans_run_id, photos) -> str:
    """Run :func:`train_rank` on every GPU through torchrun (``tasks.train_ddp``); returns rank 0's run id."""
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


train_model_task = task(train_model, name="train")
