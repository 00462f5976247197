"""``open_embedder(settings, spec)``: the embedder any spec names, for search and for every step.

``imagenet:<backbone>...`` specs are built by ``models.registry``; any other spec is a trained model id,
whose checkpoint the ``models`` table names. The embedder runs on ``embed.device`` (``auto``: the GPU when
there is one).
"""

from __future__ import annotations

from core.errors import ShoesearchError
from models.device import pick_device
from models.netvlad_model import load_trained_embedder
from models.registry import RESOLVERS, default_spec, load_embedder
from warehouse import open_warehouse
from warehouse.model_registry import TRAINED, model_row


def open_embedder(settings, spec: str | None = None):
    """The embedder for ``spec`` (default ``imagenet:<embed.backbone>``), in eval mode."""
    spec = spec or default_spec(settings)
    prefix, sep, _ = spec.partition(":")
    if sep and prefix in RESOLVERS:
        return load_embedder(spec, settings)
    if sep:
        known = ", ".join(f"{p}:..." for p in RESOLVERS)
        raise ShoesearchError(f"unknown model spec {spec!r}; expected a trained model id or one of {known}")
    row = model_row(open_warehouse(settings), spec, TRAINED)
    return load_trained_embedder(settings.home / row["path"], spec, pick_device(settings.embed.device))
