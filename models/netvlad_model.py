"""NetVLAD-CNN: ImageNet backbone truncated at its last conv block + NetVLAD + whitening.

``NetVLADModel`` is the trainable network; ``save_checkpoint`` / ``load_checkpoint`` write and read
it (atomic temp + rename) together with the configuration needed to rebuild it; ``NetVLADEmbedder``
wraps a loaded model in the ``Embedder`` interface of ``models.embedder_spec`` (``__call__(x)`` ->
L2-normalised B x D, ``.model_id``, ``.dim``, ``.image_size``, ``.mean``, ``.std``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.files import atomic_path
from models.device import forward
from models.netvlad import NetVLAD
from models.whitening import Whitening


@dataclass
class ModelConfig:
    """Everything needed to rebuild the architecture (weights come from the checkpoint)."""

    backbone: str
    clusters: int
    descriptor_dim: int  # 0: no whitening, the raw K*D NetVLAD vector
    image_size: int
    trainable_blocks: int
    weights_path: str = ""


class NetVLADModel(nn.Module):
    """Image batch (normalised with the backbone's mean/std) -> L2-normalised descriptors."""

    def __init__(self, config: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        from models.backbones import load_backbone

        self.config = config
        self.backbone = backbone if backbone is not None else load_backbone(config.backbone, config.weights_path)
        self.netvlad = NetVLAD(config.clusters, self.backbone.out_channels)
        self.whitening = Whitening(self.netvlad.out_dim, config.descriptor_dim) if config.descriptor_dim else None
        self.freeze_backbone(config.trainable_blocks)

    @property
    def dim(self) -> int:
        return self.config.descriptor_dim or self.netvlad.out_dim

    def freeze_backbone(self, trainable_blocks: int) -> None:
        """Train only the last ``trainable_blocks`` blocks of the backbone (0: a frozen backbone)."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        blocks = list(self.backbone.blocks())
        for block in blocks[len(blocks) - trainable_blocks:] if trainable_blocks > 0 else []:
            for p in block.parameters():
                p.requires_grad_(True)

    def train(self, mode: bool = True) -> "NetVLADModel":
        """Batch-norm statistics of the backbone stay the ImageNet ones (tuples are small, correlated)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def frozen_stages(self) -> int:
        """How many leading backbone stages have no trainable parameter (their output never changes)."""
        n = 0
        for stage in self.backbone.blocks():
            if any(p.requires_grad for p in stage.parameters()):
                break
            n += 1
        return n

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """The output of the frozen leading stages: what :meth:`forward_from_frozen` takes."""
        with torch.no_grad():
            for stage in self.backbone.blocks()[: self.frozen_stages]:
                x = stage(x)
        return x

    def forward_from_frozen(self, x: torch.Tensor, whiten: bool = True) -> torch.Tensor:
        """The trainable rest of the network, from :meth:`frozen_features`: ``forward(x)`` equals this."""
        for stage in self.backbone.blocks()[self.frozen_stages:]:
            x = stage(x)
        return self.pool(x, whiten)

    def local_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def pool(self, features: torch.Tensor, whiten: bool = True) -> torch.Tensor:
        """Local feature map -> final descriptor (NetVLAD, then whitening when configured and ``whiten``)."""
        with torch.autocast(device_type=features.device.type, enabled=False):  # fp32: residuals cancel in bf16
            vlad = self.netvlad(features.float())
            return self.whitening(vlad) if self.whitening is not None and whiten else vlad

    def forward(self, x: torch.Tensor, whiten: bool = True) -> torch.Tensor:
        return self.pool(self.local_features(x), whiten)


class NetVLADFromFrozenFeatures(nn.Module):
    """``model`` fed with its frozen stages' output (a cache of it) instead of images."""

    def __init__(self, model: NetVLADModel):
        super().__init__()
        self.model = model

    def forward(self, frozen: torch.Tensor, whiten: bool = True) -> torch.Tensor:
        return self.model.forward_from_frozen(frozen, whiten)


def save_checkpoint(path: Path, model: NetVLADModel, extra: dict[str, Any] | None = None) -> Path:
    """Write the model (config + state) and ``extra`` (optimizer, epoch, ...) atomically."""
    path = Path(path)
    state = {k: v for k, v in unwrap(model).state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"config": asdict(unwrap(model).config), "model": state, **(extra or {})}, tmp)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[NetVLADModel, dict[str, Any]]:
    """Rebuild the model saved at ``path``; returns it and the whole checkpoint dict."""
    ckpt = torch.load(Path(path), map_location=map_location, weights_only=False)
    model = NetVLADModel(ModelConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def unwrap(model: nn.Module) -> NetVLADModel:
    return model.module if hasattr(model, "module") else model  # DDP wraps the model


class NetVLADEmbedder:
    """A trained (or k-means-initialised) NetVLAD model behind the ``Embedder`` interface."""

    def __init__(self, model: NetVLADModel, model_id: str, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.model_id = model_id
        self.device = torch.device(device)
        self.dim = model.dim
        self.image_size = model.config.image_size
        self.mean = tuple(model.backbone.mean)
        self.std = tuple(model.backbone.std)

    def to(self, *args, **kwargs) -> "NetVLADEmbedder":
        """Move the model like ``nn.Module.to`` (device and/or memory format); returns self."""
        self.model.to(*args, **kwargs)
        self.device = next(self.model.parameters()).device
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return forward(self.model, x, self.device)


def load_trained_embedder(checkpoint: Path, model_id: str, device: torch.device | str = "cpu") -> NetVLADEmbedder:
    """The embedder of a trained model from its checkpoint file (``embedding.embedders`` finds the file)."""
    model, _ = load_checkpoint(checkpoint)
    return NetVLADEmbedder(model, model_id, device)
