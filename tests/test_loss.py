"""The weakly supervised triplet loss against its formula written as loops."""

from __future__ import annotations

import pytest
import torch

from models.loss import WeakTripletLoss


def _loss_by_loops(q, p, n, m, mask=None):
    total = 0.0
    for b in range(q.shape[0]):
        d_pos = [float(((q[b] - p[b, i]) ** 2).sum()) for i in range(p.shape[1]) if mask is None or mask[b, i]]
        best = min(d_pos)
        total += sum(max(0.0, best + m - float(((q[b] - n[b, j]) ** 2).sum())) for j in range(n.shape[1]))
    return total / q.shape[0]


@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_loss_matches_formula(margin):
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 6) * 0.3, torch.randn(4, 3, 6) * 0.3, torch.randn(4, 7, 6) * 0.3
    got = WeakTripletLoss(margin)(q, p, n)
    assert float(got) == pytest.approx(_loss_by_loops(q, p, n, margin), rel=1e-5)
    assert float(got) > 0  # the random case has violations, so the check is not vacuous


def test_loss_takes_the_closest_positive_and_ignores_padding():
    torch.manual_seed(1)
    q, p, n = torch.randn(3, 5), torch.randn(3, 4, 5), torch.randn(3, 6, 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    p_far = p.clone()
    p_far[~mask] = q.unsqueeze(1).expand_as(p)[~mask]  # padding would be a perfect positive if not masked
    got = WeakTripletLoss(0.1)(q, p_far, n, mask)
    assert float(got) == pytest.approx(_loss_by_loops(q, p_far, n, 0.1, mask), rel=1e-5)
    # only the closest positive gets a gradient
    p_var = p.clone().requires_grad_(True)
    WeakTripletLoss(10.0)(q, p_var, n).backward()
    nonzero = (p_var.grad.abs().sum(-1) > 0)
    assert nonzero.sum(1).tolist() == [1, 1, 1]


def test_loss_is_zero_when_margin_satisfied():
    q = torch.zeros(1, 2)
    p = torch.tensor([[[0.1, 0.0]]])
    n = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert float(WeakTripletLoss(0.1)(q, p, n)) == 0.0
