"""Training's memory by phase, for bench/scaling.py: ``train_model`` run as the nightly runs it, each phase's
peak resident memory apart (the phases are wrapped where ``training.fit`` and ``tasks.train`` call them).

Phases: ``start`` (the k-means model built), ``whitening`` (PCA fitted on up to ``train.whitening_photos``
NetVLAD vectors), ``frozen cache`` (the frozen stages' output for every training photo, when it fits in
``train.frozen_cache_mb``), ``epoch`` (mining + steps), ``validation`` and ``publish`` (the test score).
Not a benchmark itself (``make bench`` runs it as a script: it does nothing).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.scale_common import peak_memory  # noqa: E402

PHASES = {  # phase: (module, function name), wrapped where it is called from
    "start": ("tasks.train", "_starting_model"),
    "whitening": ("training.fit", "fit_whitening"),
    "frozen cache": ("training.fit", "trainable"),
    "epoch": ("training.fit", "train_epoch"),
    "validation": ("training.fit", "recall"),
    "publish": ("tasks.train", "_publish"),
}


def _wrapped(fn, name: str, phases: dict):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        record = phases.setdefault(name, {})
        with peak_memory(record):
            return fn(*args, **kwargs)
    return run


def train_by_phase(settings, split_run_id: str) -> tuple[str, dict]:
    """Run ``tasks.train.train_model`` with each phase's peak memory and seconds recorded; (run id, phases).
    A phase run more than once (validation) keeps its last run's figures."""
    import importlib

    from tasks.train import train_model

    phases: dict = {}
    saved = []
    for name, (module_name, attr) in PHASES.items():
        module = importlib.import_module(module_name)
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, _wrapped(getattr(module, attr), name, phases))
    total: dict = {}
    try:
        with peak_memory(total):
            run_id = train_model(settings, split_run_id, photos="auto")
    finally:
        for module, attr, fn in saved:
            setattr(module, attr, fn)
    return run_id, {"total": total, **phases}


def whitening_bytes_per_photo(settings) -> int:
    """Bytes the PCA whitening fit holds per photo it is fitted on (the NetVLAD vector, K x D float32)."""
    from models.backbones import load_backbone

    return 4 * settings.train.clusters * load_backbone(settings.train.backbone).out_channels


if __name__ == "__main__":
    pass
