"""The checkpoint files of one training job: ``init.pt`` (the starting model), ``best.pt`` (the best epoch on
validation so far) and ``last.pt`` (the last finished epoch, with the optimizer), in a folder keyed by the job's
inputs and settings, so a rerun with the same inputs resumes where the killed one stopped."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from models.netvlad_model import load_checkpoint, save_checkpoint


class Checkpoints:
    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def keyed(cls, root: Path, key_parts: dict) -> "Checkpoints":
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cls(root / key)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def save(self, name: str, model, state: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
        extra = {"state": state} if optimizer is None else {"optimizer": optimizer.state_dict(), "state": state}
        save_checkpoint(self.path(name), model, extra)

    def resume(self, model, optimizer: torch.optim.Optimizer, state: dict) -> tuple[dict, bool]:
        """(the state of the last finished epoch, True) after loading it into ``model`` and ``optimizer``, or
        (``state``, False) when this job has not finished an epoch yet."""
        if not self.path("last").exists():
            return state, False
        _, ckpt = load_checkpoint(self.path("last"))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        return ckpt["state"], True

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
