"""Global descriptors from a local conv map: a thin module over GeM / average pooling + L2 norm."""

from __future__ import annotations

import torch
from torch import nn

from models.functional import avg, gem, l2n  # the math lives in functional

__all__ = ["GlobalPool", "avg", "gem", "l2n"]


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

