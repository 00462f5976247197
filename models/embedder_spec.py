"""``load_embedder(spec, settings)``: the off-the-shelf image -> vector models, by spec.

A spec is ``<prefix>:<rest>``; ``RESOLVERS[prefix]`` builds the embedder. ``imagenet:<backbone>``
(optionally ``imagenet:<backbone>@<weights>:<pool>:<size>px``, i.e. a full model id) is built here.
Trained models are files: ``models.netvlad_model.load_trained_embedder(checkpoint, ...)`` opens one, and
``embedding.embedders.open_embedder(settings, spec)`` resolves any spec, a trained model id included,
through the ``models`` table (this layer never reads the warehouse).

Every embedder takes images normalised with its ``.mean`` / ``.std`` at ``.image_size`` (see
:mod:`photos.transforms`) and returns L2-normalised B x ``.dim`` float vectors.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from core.errors import ShoesearchError
from models.backbones import Backbone, load_backbone, resolve_weights, weights_tag
from models.pooling import GlobalPool


class Embedder(Protocol):
    model_id: str
    dim: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def imagenet_model_id(weights_id: str, pool_tag: str, image_size: int) -> str:
    return f"imagenet:{weights_id}:{pool_tag}:{image_size}px"


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
        self.model_id = imagenet_model_id(backbone.weights_id, pool.tag, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone.features(x))


Resolver = Callable[[str, object], Embedder]
RESOLVERS: dict[str, Resolver] = {}
ID_RESOLVERS: dict[str, Callable[[str, object], str]] = {}


def register_resolver(prefix: str, resolver: Resolver, id_of: Callable[[str, object], str] | None = None) -> None:
    """Let ``load_embedder`` build specs starting with ``prefix:`` (and ``embedder_model_id`` name their model
    without building it, when ``id_of`` is given)."""
    RESOLVERS[prefix] = resolver
    if id_of is not None:
        ID_RESOLVERS[prefix] = id_of


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


def _imagenet_parts(rest: str, settings) -> tuple[str, str, GlobalPool, int]:
    """(backbone name, weights tag asked for or "", pooling, input size) of ``imagenet:<rest>``."""
    head, _, tail = rest.partition(":")
    pool_tag, _, size_tag = tail.partition(":")
    name, _, weights_tag = head.partition("@")
    pool = _pool_from_tag(pool_tag) if pool_tag else GlobalPool(settings.embed.pooling, settings.embed.gem_p)
    size = _size_from_tag(size_tag) if size_tag else settings.embed.image_size
    return name or settings.embed.backbone, weights_tag, pool, size


def _check_weights(name: str, asked: str, found: str) -> None:
    if asked and found != f"{name}@{asked}":
        raise ShoesearchError(f"asked for weights {f'{name}@{asked}'!r} but found {found!r}")


def _imagenet(rest: str, settings) -> Embedder:
    """``imagenet:<backbone>`` at the settings' pooling and size, or a full model id
    (``<backbone>@<weights>:<pool>:<size>px``): the id fixes pooling and size (an index built at 64 px is
    searched at 64 px whatever ``embed.image_size`` says), the weights must be the ones installed."""
    name, asked, pool, size = _imagenet_parts(rest, settings)
    backbone = load_backbone(name, settings.embed.weights_path)
    _check_weights(name, asked, backbone.weights_id)
    return ImageNetEmbedder(backbone, pool, size).eval()


def _imagenet_id(rest: str, settings) -> str:
    """The model id ``_imagenet(rest, settings)`` has, read from the weights file's name or hash: no network is
    built and no weights are loaded."""
    name, asked, pool, size = _imagenet_parts(rest, settings)
    found = f"{name}@{weights_tag(resolve_weights(name, settings.embed.weights_path))}"
    _check_weights(name, asked, found)
    return imagenet_model_id(found, pool.tag, size)


register_resolver("imagenet", _imagenet, _imagenet_id)


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


def embedder_model_id(spec: str | None, settings) -> str:
    """The ``model_id`` of ``load_embedder(spec, settings)``, without loading weights where the prefix can say it
    (``imagenet:``: from the weights file's name or hash)."""
    spec = spec or default_spec(settings)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ID_RESOLVERS:
        return ID_RESOLVERS[prefix](rest, settings)
    return load_embedder(spec, settings).model_id
