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


def test_live_members_are_exactly_those_with_a_gradient():
    from models import functional

    torch.manual_seed(2)
    q, p, n = torch.randn(6, 8) * 0.3, torch.randn(6, 4, 8) * 0.3, torch.randn(6, 9, 8) * 0.3
    d_neg = ((n - q.unsqueeze(1)) ** 2).sum(-1)
    margin = float(d_neg.median() - ((p - q.unsqueeze(1)) ** 2).sum(-1).min(1).values.mean())
    live = functional.triplet_live_members(q, p, n, margin)
    q, p, n = (t.clone().requires_grad_(True) for t in (q, p, n))
    functional.triplet_loss_min_positive(q, p, n, margin).backward()
    grad_rows = torch.cat([q.grad.unsqueeze(1), p.grad, n.grad], 1).abs().sum(-1) > 0
    negatives = live[:, 5:]
    assert 0 < int(negatives.sum()) < negatives.numel()  # some hinges open, some closed: not vacuous
    assert torch.equal(live[:, 5:], grad_rows[:, 5:])  # negatives: marked iff they get a gradient
    assert live[:, 1:5].sum(1).tolist() == [1] * 6  # one positive each, the one with the gradient
    assert torch.equal(live[:, 1:5] & grad_rows[:, 1:5], grad_rows[:, 1:5])
    assert bool(live[:, 0].all())


def test_tuple_loss_gives_the_full_gradient_of_a_real_model():
    from models import functional
    from models.netvlad_model import ModelConfig, NetVLADModel
    from training.fit import tuple_loss

    torch.manual_seed(3)
    model = NetVLADModel(ModelConfig("efficientnet_lite0", 8, 0, 64, 2)).train()
    batch = torch.randn(3, 1 + 2 + 6, 3, 64, 64)
    with torch.no_grad():
        desc = model(batch.flatten(0, 1)).view(3, 9, -1)
    d_neg = ((desc[:, 3:] - desc[:, :1]) ** 2).sum(-1)
    d_pos = ((desc[:, 1:3] - desc[:, :1]) ** 2).sum(-1).min(1).values
    margin = float((d_neg - d_pos.unsqueeze(1)).median())  # about half the hinges open
    crit = WeakTripletLoss(margin)
    open_hinges = int(functional.triplet_live_members(desc[:, 0], desc[:, 1:3], desc[:, 3:], margin)[:, 3:].sum())
    assert 0 < open_hinges < 18  # the shortcut skips some negatives here: the comparison is not vacuous
    trainable = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    d = model(batch.flatten(0, 1)).view(3, 9, -1)
    full = crit(d[:, 0], d[:, 1:3], d[:, 3:])
    full.backward()
    expected = [p.grad.clone() for p in trainable]
    model.zero_grad()
    got = tuple_loss(model, batch, crit, 2, torch.device("cpu"))
    got.backward()
    assert got.item() == pytest.approx(full.item(), rel=1e-4) and full.item() > 0
    for g, e in zip((p.grad for p in trainable), expected):
        assert torch.allclose(g, e, rtol=1e-3, atol=1e-6 * float(e.abs().max()) + 1e-9)


_STEPS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from models.device import pick_device
    assert pick_device("cpu").type == "cpu"
torch.manual_seed(0)
net = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(4)])
x = torch.randn(32, 64, 56, 56)  # 25 MB activations per layer: over glibc's 32 MB mmap limit with the grads
net(x).sum().backward()  # warm-up step
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    net(x).sum().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


@pytest.mark.e2e
def test_cpu_device_keeps_freed_memory_instead_of_faulting_it_in_every_step():
    import subprocess
    import sys

    def faults(mode: str) -> int:  # a fresh process each: the allocator setting is process-wide
        out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 20_000  # the default allocator maps the activations afresh in every step
    assert kept < default / 4
