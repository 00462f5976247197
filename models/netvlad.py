"""NetVLAD pooling layer (Arandjelovic et al., CVPR 2016): a thin module over ``models.functional``."""

from __future__ import annotations

import torch
from torch import nn

from models import functional


class NetVLAD(nn.Module):
    """Feature map B x D x H x W -> L2-normalised B x (K*D) VLAD descriptor.

    ``weight``/``bias`` are the 1x1 soft-assignment conv, ``centroids`` the residual anchors; they
    are decoupled (as in the paper) and all trained. :meth:`init_from_kmeans` sets them from k-means.
    """

    def __init__(self, clusters: int, dim: int):
        super().__init__()
        self.clusters, self.dim = clusters, dim
        self.weight = nn.Parameter(torch.randn(clusters, dim) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(clusters))
        self.centroids = nn.Parameter(torch.rand(clusters, dim))

    @property
    def out_dim(self) -> int:
        return self.clusters * self.dim

    @torch.no_grad()
    def init_from_kmeans(self, centroids: torch.Tensor, alpha: float) -> None:
        """Centres from k-means and the conv set so that assignment follows distance to them."""
        weight, bias = functional.netvlad_init_params(centroids.float(), alpha)
        self.centroids.copy_(centroids)
        self.weight.copy_(weight)
        self.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.netvlad(x, self.weight, self.bias, self.centroids)

    def extra_repr(self) -> str:
        return f"clusters={self.clusters}, dim={self.dim}"
