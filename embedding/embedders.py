"""``open_embedder(settings, spec)``: the embedder any spec names, for search and for every step;
``model_id_of(settings, spec)``: its model id, without loading it.

``imagenet:<backbone>...`` specs are built by ``models.embedder_spec``; any other spec is a trained model id,
whose checkpoint the ``models`` table names. The embedder runs on ``embed.device`` (``auto``: the GPU when
there is one).
"""

from __future__ import annotations

import numpy as np
import torch

from models.device import pick_device
from models.embedder_spec import default_spec, embedder_model_id, load_embedder
from models.netvlad_model import load_trained_embedder
from warehouse import open_warehouse
from warehouse.models_table import TRAINED, model_row


def open_embedder(settings, spec: str | None = None):
    """The embedder for ``spec`` (default ``imagenet:<embed.backbone>``), in eval mode."""
    spec = spec or default_spec(settings)
    if ":" in spec:  # a prefixed spec: models.embedder_spec builds it (or names the known prefixes)
        return load_embedder(spec, settings)
    row = model_row(open_warehouse(settings), spec, TRAINED)
    return load_trained_embedder(settings.home / row["path"], spec, pick_device(settings.embed.device))


def model_id_of(settings, spec: str | None = None) -> str:
    """The ``model_id`` ``open_embedder(settings, spec)`` embeds with, without building it or loading weights:
    steps key their rows by it before (or instead of) embedding anything."""
    spec = spec or default_spec(settings)
    if ":" in spec:
        return embedder_model_id(spec, settings)
    return model_row(open_warehouse(settings), spec, TRAINED)["model_id"]


def embed_batch(embedder, x: torch.Tensor) -> np.ndarray:
    """One forward pass -> float32 numpy vectors (empty batches allowed)."""
    if x.shape[0] == 0:
        return np.zeros((0, embedder.dim), np.float32)
    return embedder(x).float().cpu().numpy()
