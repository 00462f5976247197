"""``load_embedder(spec, settings)``: the off-the-shelf image -> vector models, by spec.

A spec is ``<prefix>:<rest>``; ``RESOLVERS[prefix]`` builds the embedder. ``imagenet:<backbone>``
(optionally ``imagenet:<backbone>@<weights>:<pool>:<size>px``, i.e. a full model id) is built here.
Trained models are files: ``models.netvlad_model.load_trained_embedder(checkpoint, ...)`` opens one, and
``serving.embedders.open_embedder(settings, spec)`` resolves any spec, a trained model id included,
through the ``models`` table (this layer never reads the warehouse).

Every embedder takes images normalised with its ``.mean`` / ``.std`` at ``.image_size`` (see
:mod:`photos.transforms`) and returns L2-normalised B x ``.dim`` float vectors.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from core.errors import ShoesearchError
from models.backbones import Backbone, load_backbone
from models.pooling import GlobalPool


class Embedder(Protocol):
    model_id: str
    dim: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class ImageNetEmbedder(nn.Module):
    """Off-the-shelf descriptor: backbone conv map -> GeM/avg pooling -> L2 normalisation."""

    def __init__(self, backbone: Backbone, pool: GlobalPool, image_size: int):
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.image_size = image_size
        self.mean = backbone.mean
        self.std = backbone.std
        self.dim = backbone.out_channels
        # The input size is part of the id: vectors at another size are other vectors (re-embedded).
        self.model_id = f"imagenet:{backbone.weights_id}:{pool.tag}:{image_size}px"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone.features(x))


Resolver = Callable[[str, object], Embedder]
RESOLVERS: dict[str, Resolver] = {}


def register_resolver(prefix: str, resolver: Resolver) -> None:
    """Let ``load_embedder`` build specs starting with ``prefix:``."""
    RESOLVERS[prefix] = resolver


def _pool_from_tag(tag: str) -> GlobalPool:
    """The pooling a model id names (``gem3``, ``gem2.5``, ``avg``)."""
    try:
        return GlobalPool("avg") if tag == "avg" else GlobalPool("gem", float(tag.removeprefix("gem")))
    except ValueError:
        raise ShoesearchError(f"unknown pooling {tag!r} in a model id; expected gem<p> or avg") from None


def _size_from_tag(tag: str) -> int:
    if not (tag.endswith("px") and tag[:-2].isdigit() and int(tag[:-2]) > 0):
        raise ShoesearchError(f"bad input size {tag!r} in a model id; expected e.g. 224px")
    return int(tag[:-2])


def _imagenet(rest: str, settings) -> Embedder:
    """``imagenet:<backbone>`` at the settings' pooling and size, or a full model id
    (``<backbone>@<weights>:<pool>:<size>px``): the id fixes pooling and size (an index built at 64 px is
    searched at 64 px whatever ``embed.image_size`` says), the weights must be the ones installed."""
    head, _, tail = rest.partition(":")
    pool_tag, _, size_tag = tail.partition(":")
    name, _, weights_tag = head.partition("@")
    backbone = load_backbone(name or settings.embed.backbone, settings.embed.weights_path)
    pool = _pool_from_tag(pool_tag) if pool_tag else GlobalPool(settings.embed.pooling, settings.embed.gem_p)
    size = _size_from_tag(size_tag) if size_tag else settings.embed.image_size
    if weights_tag and backbone.weights_id != f"{backbone.name}@{weights_tag}":
        raise ShoesearchError(f"asked for weights {head!r} but found {backbone.weights_id!r}")
    return ImageNetEmbedder(backbone, pool, size).eval()


register_resolver("imagenet", _imagenet)


def default_spec(settings) -> str:
    return f"imagenet:{settings.embed.backbone}"


def load_embedder(spec: str | None, settings) -> Embedder:
    """The embedder for ``spec`` (default: ``imagenet:<settings.embed.backbone>``), in eval mode."""
    spec = spec or default_spec(settings)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in RESOLVERS:
        return RESOLVERS[prefix](rest, settings)
    known = ", ".join(f"{p}:..." for p in RESOLVERS)
    raise ShoesearchError(f"unknown model spec {spec!r}; expected one of {known}")
