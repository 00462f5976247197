"""Global descriptors from a local conv map: GeM / average pooling and L2 normalisation.

Pure functions plus thin modules over them.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-6  # keeps GeM's power defined on zero activations and l2n away from 0/0


def l2n(x: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """Scale vectors along ``dim`` to unit Euclidean length."""
    return x / x.norm(p=2, dim=dim, keepdim=True).clamp_min(eps)


def gem(x: torch.Tensor, p: float = 3.0, eps: float = EPS) -> torch.Tensor:
    """Generalised mean pooling of B x C x h x w -> B x C: (mean x^p)^(1/p) (p=1 avg, p->inf max)."""
    return x.clamp_min(eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def avg(x: torch.Tensor) -> torch.Tensor:
    """Average pooling of B x C x h x w -> B x C."""
    return x.mean(dim=(-2, -1))


class GlobalPool(nn.Module):
    """``gem`` or ``avg`` pooling followed by L2 normalisation."""

    KINDS = ("gem", "avg")

    def __init__(self, kind: str = "gem", p: float = 3.0):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown pooling {kind!r}; use one of {', '.join(self.KINDS)}")
        self.kind = kind
        self.p = float(p)

    @property
    def tag(self) -> str:
        """Short id used in model ids, e.g. ``gem3`` or ``avg``."""
        return f"gem{self.p:g}" if self.kind == "gem" else "avg"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = gem(x.float(), self.p) if self.kind == "gem" else avg(x.float())
        return l2n(pooled)

