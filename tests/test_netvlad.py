"""NetVLAD layer, PCA whitening and retrieval metrics against direct formulas (explicit loops)."""

from __future__ import annotations

import math

import pytest
import torch

from models import functional
from models.netvlad import NetVLAD
from models.whitening import Whitening


def _netvlad_by_loops(x, w, b, c):
    """V(k, j) = sum_i a_k(x_i) (x_i(j) - c_k(j)), written out one descriptor at a time."""
    B, D, H, W = x.shape
    K = c.shape[0]
    out = []
    for n in range(B):
        v = torch.zeros(K, D, dtype=torch.float64)
        for i in range(H):
            for j in range(W):
                xi = x[n, :, i, j].double()
                xi = xi / xi.norm()
                logits = torch.tensor([float(w[k].double() @ xi + b[k]) for k in range(K)], dtype=torch.float64)
                a = torch.exp(logits - logits.max())
                a = a / a.sum()
                for k in range(K):
                    v[k] += a[k] * (xi - c[k].double())
        for k in range(K):
            v[k] = v[k] / v[k].norm()
        v = v.flatten()
        out.append(v / v.norm())
    return torch.stack(out)


def test_netvlad_layer_matches_loops():
    torch.manual_seed(0)
    layer = NetVLAD(clusters=5, dim=7)
    x = torch.randn(3, 7, 4, 3)
    expected = _netvlad_by_loops(x, layer.weight.detach(), layer.bias.detach(), layer.centroids.detach())
    got = layer(x)
    assert got.shape == (3, 35)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_kmeans_init_makes_assignment_follow_distance():
    torch.manual_seed(1)
    centroids = functional.l2n(torch.randn(6, 16))
    desc = functional.l2n(centroids.repeat_interleave(50, 0) + 0.1 * torch.randn(300, 16))
    alpha = functional.netvlad_alpha(desc, centroids)
    # alpha from the data: mean gap between the two nearest squared distances, as the formula says
    d = torch.stack([torch.stack([((x - c) ** 2).sum() for c in centroids]) for x in desc])
    gaps = [sorted(row.tolist())[1] - sorted(row.tolist())[0] for row in d]
    assert alpha == pytest.approx(-math.log(0.01) / (sum(gaps) / len(gaps)), rel=1e-4)
    w, b = functional.netvlad_init_params(centroids, alpha)
    for k in range(6):
        torch.testing.assert_close(w[k], 2 * alpha * centroids[k])
        assert float(b[k]) == pytest.approx(-alpha * float(centroids[k] @ centroids[k]), rel=1e-5)
    # softmax(w.x + b) == softmax(-alpha ||x - c||^2): the soft assignment follows distance
    a = functional.netvlad_soft_assign(desc.t().reshape(1, 16, 300, 1), w, b)[0]  # K x N
    torch.testing.assert_close(a.t(), (-alpha * d).softmax(1), atol=1e-5, rtol=1e-4)
    assert (a.argmax(0) == d.argmin(1)).all()


def test_pairwise_sq_distances_matches_loops():
    torch.manual_seed(2)
    a, b = torch.randn(4, 9), torch.randn(5, 9)
    expected = torch.tensor([[float(((a[i] - b[j]) ** 2).sum()) for j in range(5)] for i in range(4)])
    torch.testing.assert_close(functional.pairwise_sq_distances(a, b), expected, atol=1e-5, rtol=1e-5)


def test_pca_whitening_decorrelates_to_unit_variance():
    torch.manual_seed(3)
    x = torch.randn(500, 12) @ torch.randn(12, 12) + 3.0
    white = Whitening(12, 6)
    white.fit(x)
    y = white.proj(x)
    cov = torch.cov(y.t())
    torch.testing.assert_close(cov, torch.eye(6), atol=1e-3, rtol=0)
    out = white(x)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(500), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="descriptor_dim"):
        Whitening(12, 8).fit(x[:5])


def test_recall_and_map_by_hand():
    # 4 photos, products A A B B; photo 0's nearest is photo 2 (wrong), then photo 1 (right)
    desc = functional.l2n(torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [0.1, 1.0]]))
    labels = torch.tensor([0, 0, 1, 1])
    m = functional.recall_and_map(desc, labels, ks=(1, 2))
    sims = desc @ desc.t()
    r1 = r2 = ap = 0.0
    for q in range(4):
        order = [g for g in sims[q].argsort(descending=True).tolist() if g != q]
        hits = [labels[g] == labels[q] for g in order]
        r1 += float(hits[0])
        r2 += float(any(hits[:2]))
        prec = [sum(hits[: i + 1]) / (i + 1) for i in range(len(hits)) if hits[i]]
        ap += sum(prec) / len(prec)
    assert m["queries"] == 4
    assert m["recall_at_1"] == pytest.approx(r1 / 4)
    assert m["recall_at_2"] == pytest.approx(r2 / 4)
    assert m["mean_ap"] == pytest.approx(ap / 4)
    assert m["recall_at_1"] < 1.0  # photo 0 and 2 retrieve each other first
    # consumer-to-shop: queries 0 and 2 against gallery 1 and 3 only. Photo 3 is nearest to both:
    # right for photo 2 (product B), wrong for photo 0 (product A).
    m2 = functional.recall_and_map(desc, labels, ks=(1,), query_mask=torch.tensor([1, 0, 1, 0]),
                           gallery_mask=torch.tensor([0, 1, 0, 1]))
    assert m2["queries"] == 2 and m2["recall_at_1"] == pytest.approx(0.5)


def test_product_recall_ranks_products_by_their_best_photo():
    """Three products; the query (photo 0, product 0) is nearest to two photos of product 1, then to its own
    product's other photo: photo-level its product comes at rank 3, product-level (max voting) at rank 2."""
    import torch

    from models import functional

    d = torch.nn.functional.normalize(torch.tensor([
        [1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.9, 0.43, 0.0], [0.92, 0.39, 0.0], [0.0, 0.0, 1.0], [0.0, 0.1, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    photo = functional.recall_and_map(d, labels, (1, 2, 3), query_mask=torch.tensor([1, 0, 0, 0, 0, 0]).bool())
    assert (photo["recall_at_2"], photo["recall_at_3"]) == (0.0, 1.0)
    prod = functional.product_recall(d[:4], labels[:4], (1, 2))
    assert prod["product_recall_at_1"] == 0.5 and prod["product_recall_at_2"] == 1.0  # photos 0 and 1 miss at 1


def test_shrunk_whitening_survives_repeated_training_photos():
    """40 distinct descriptors, 20 of them repeated (a picture in two products): the centred data has rank 39 < 59
    components. Plain whitening divides the empty directions by ~eps and a noisy copy of each photo finds its
    original 2.5 % of the time (measured); with the default shrinkage (0.1) it finds it every time."""
    import torch

    from core.settings import Settings
    from models import functional

    torch.manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(40, 2000), dim=1)
    train = torch.cat([base, base[:20]])
    queries = torch.nn.functional.normalize(base + 0.067 * torch.randn(40, 2000), dim=1)

    def nearest_is_original(shrink: float) -> float:
        mean, proj = functional.pca_whitening(train, 59, shrink=shrink)
        f = lambda x: torch.nn.functional.normalize((x - mean) @ proj.T, dim=1)  # noqa: E731
        return float(((f(queries) @ f(base).T).argmax(1) == torch.arange(40)).float().mean())

    assert nearest_is_original(0.0) < 0.2
    assert nearest_is_original(Settings().train.whitening_shrinkage) == 1.0


def test_blocked_pca_above_the_svd_size_equals_the_svd(monkeypatch):
    """Issue 28: above ``_SVD_ELEMENTS`` the PCA works from a blocked Gram (few rows) or covariance (few columns)
    instead of the SVD's float64 copies; its variances and axes (up to sign) are the SVD's."""
    import torch

    from models import functional as F

    gen = torch.Generator().manual_seed(0)
    for shape in ((40, 300), (300, 40)):
        x = torch.randn(*shape, generator=gen) * torch.linspace(3, 0.1, shape[1])
        mean, var, axes = F.pca(x, components=20)
        monkeypatch.setattr(F, "_SVD_ELEMENTS", 0)
        monkeypatch.setattr(F, "_BLOCK_ELEMENTS", 1000)  # several blocks
        mean_b, var_b, axes_b = F.pca(x, components=20)
        monkeypatch.undo()
        assert torch.allclose(mean, mean_b) and torch.allclose(var, var_b, rtol=1e-9)
        assert torch.allclose((axes * axes_b).sum(1).abs(), torch.ones(20, dtype=torch.float64), atol=1e-9)
