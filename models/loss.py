"""The weakly supervised triplet ranking loss of NetVLAD: a thin module over ``models.functional``."""

from __future__ import annotations

import torch
from torch import nn

from models import functional


class WeakTripletLoss(nn.Module):
    """``sum_j max(0, min_i d^2(q, p_i) + margin - d^2(q, n_j))``, averaged over the batch.

    The positives of a query are only *potential* positives (other photos of the product, some
    from another angle), so only the closest one must beat every negative by the margin.
    """

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(
        self, query: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
        positive_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return functional.triplet_loss_min_positive(query, positives, negatives, self.margin, positive_mask)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
