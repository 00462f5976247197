"""Whitening projection to a compact descriptor: PCA-initialised, optionally learned further."""

from __future__ import annotations

import torch
from torch import nn

from models import functional


class Whitening(nn.Module):
    """``y = l2n(P (x - mean))``: a linear layer whose weights come from PCA whitening.

    Fitted once on training descriptors (:meth:`fit`); it stays trainable, so the trainer may keep
    learning it with the rest of the network (the "learned whitening" of Radenovic et al.).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, out_dim, bias=True)

    @torch.no_grad()
    def fit(self, descriptors: torch.Tensor, shrink: float = 0.0) -> None:
        """PCA whitening from ``descriptors`` (N x in_dim; needs N > out_dim), variances shrunk by ``shrink``
        (``models.functional.pca_whitening``)."""
        mean, proj = functional.pca_whitening(descriptors, self.out_dim, shrink=shrink)
        if proj.shape[0] < self.out_dim:
            raise ValueError(
                f"PCA whitening to {self.out_dim} dims needs more than {self.out_dim} training descriptors, "
                f"got {descriptors.shape[0]}: lower train.descriptor_dim or add photos"
            )
        self.proj.weight.copy_(proj)
        self.proj.bias.copy_(-proj @ mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.l2n(self.proj(x), dim=1)

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.out_dim}"
