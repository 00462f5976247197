"""The math of NetVLAD training as small pure functions (tensors in, tensors out).

Notation: ``x`` is a local feature map B x D x H x W (D channels), ``c`` the K x D cluster
centres, descriptors are rows. The modules in ``models/netvlad.py``, ``models/loss.py`` and
``models/whitening.py`` are thin wrappers over these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-6  # guards divisions by a norm that may be zero (an all-zero residual block)


def l2n(x: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """L2-normalise ``x`` along ``dim``."""
    return x / (x.norm(p=2, dim=dim, keepdim=True) + eps)


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``a`` (N x D) and ``b`` (M x D): N x M."""
    sq = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.t() + (b * b).sum(1).unsqueeze(0)
    return sq.clamp_min(0.0)


def netvlad_alpha(descriptors: torch.Tensor, centroids: torch.Tensor, target_ratio: float = 0.01) -> float:
    """Softmax sharpness chosen from data as NetVLAD does.

    With ``d1 <= d2`` the squared distances from a descriptor to its two nearest centres, the soft
    assignment to the second centre relative to the first is ``exp(-alpha (d2 - d1))``; alpha makes that
    ratio ``target_ratio`` on average: ``alpha = -log(target_ratio) / mean(d2 - d1)``.
    """
    d = pairwise_sq_distances(descriptors, centroids)
    two = d.topk(2, dim=1, largest=False).values
    gap = (two[:, 1] - two[:, 0]).mean().item()
    if not gap > 0:
        raise ValueError("cannot choose alpha: descriptors are equidistant from their two nearest centres")
    return -math.log(target_ratio) / gap


def netvlad_init_params(centroids: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-assignment 1x1 conv parameters from centres: ``w_k = 2 alpha c_k``, ``b_k = -alpha ||c_k||^2``.

    Then ``softmax_k(w_k.x + b_k) = softmax_k(-alpha ||x - c_k||^2)`` (the ``||x||^2`` term cancels).
    """
    return 2.0 * alpha * centroids, -alpha * (centroids * centroids).sum(1)


def netvlad_soft_assign(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Soft assignment ``a_k(x_i) = softmax_k(w_k.x_i + b_k)``: B x D x H x W -> B x K x N (N = H*W)."""
    logits = torch.einsum("bdn,kd->bkn", x.flatten(2), weight) + bias.view(1, -1, 1)
    return logits.softmax(dim=1)


def netvlad_aggregate(x: torch.Tensor, assign: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Residual aggregation ``V(k, j) = sum_i a_k(x_i) (x_i(j) - c_k(j))``: returns B x K x D."""
    x = x.flatten(2)  # B x D x N
    weighted = torch.einsum("bkn,bdn->bkd", assign, x)
    return weighted - assign.sum(2).unsqueeze(2) * centroids.unsqueeze(0)


def netvlad(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """The NetVLAD descriptor of a feature map: B x D x H x W -> B x (K*D), L2-normalised.

    Local descriptors are L2-normalised first (as in NetVLAD), then softly assigned, aggregated as
    residuals, intra-normalised (each cluster's block) and L2-normalised as a whole.
    """
    x = l2n(x, dim=1)
    vlad = netvlad_aggregate(x, netvlad_soft_assign(x, weight, bias), centroids)
    vlad = l2n(vlad, dim=2)  # intra-normalisation
    return l2n(vlad.flatten(1), dim=1)


def gem(x: torch.Tensor, p: float = 3.0, eps: float = EPS) -> torch.Tensor:
    """Generalised-mean pooling of a feature map: B x D x H x W -> B x D (p=1 average, p->inf max)."""
    return x.clamp_min(eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def avg(x: torch.Tensor) -> torch.Tensor:
    """Average pooling of a feature map: B x D x H x W -> B x D."""
    return x.mean(dim=(2, 3))


def triplet_loss_min_positive(
    query: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, margin: float,
    positive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weakly supervised triplet loss, summed over negatives and averaged over queries.

    ``L = sum_j max(0, min_i d^2(q, p_i) + m - d^2(q, n_j))`` for ``query`` B x D, ``positives``
    B x P x D, ``negatives`` B x N x D. ``positive_mask`` (B x P, bool) marks real positives when a
    query has fewer than P (padding is ignored by the min).
    """
    d_pos = ((positives - query.unsqueeze(1)) ** 2).sum(-1)  # B x P
    if positive_mask is not None:
        d_pos = d_pos.masked_fill(~positive_mask, float("inf"))
    d_neg = ((negatives - query.unsqueeze(1)) ** 2).sum(-1)  # B x N
    closest = d_pos.min(dim=1).values.unsqueeze(1)
    return F.relu(closest + margin - d_neg).sum(1).mean()


def triplet_live_members(query: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                         margin: float) -> torch.Tensor:
    """B x (1+P+N) bool: the tuple members :func:`triplet_loss_min_positive` has a gradient for.

    Those are the query and its closest positive, and the negatives whose hinge is open
    (``min_i d^2(q, p_i) + m - d^2(q, n_j) > 0``); every other member gets a zero gradient. The query and
    closest positive are always marked, so a forward pass over the marked members reaches every parameter.
    """
    d_pos = ((positives - query.unsqueeze(1)) ** 2).sum(-1)  # B x P
    d_neg = ((negatives - query.unsqueeze(1)) ** 2).sum(-1)  # B x N
    closest = d_pos.min(dim=1)
    pos = torch.zeros_like(d_pos, dtype=torch.bool).scatter_(1, closest.indices.unsqueeze(1), True)
    neg = closest.values.unsqueeze(1) + margin - d_neg > 0
    return torch.cat([torch.ones_like(pos[:, :1]), pos, neg], dim=1)


def pca_whitening(descriptors: torch.Tensor, dim: int, eps: float = 1e-6,
                  shrink: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA whitening fitted on rows of ``descriptors`` (N x D): returns (mean D, projection dim x D).

    ``y = P (x - mean)`` has decorrelated components along the top ``dim`` principal axes, each divided by
    ``sqrt(var + shrink * mean(var))``: with ``shrink`` 0, unit variance; with ``shrink`` > 0 the weak directions
    are amplified at most ``1 / sqrt(shrink * mean(var))``. Few photos (hundreds) or repeated photos (the same
    picture in several products) leave directions with ~zero variance; plain whitening multiplies whatever a new
    photo has there by ~1/eps and the descriptor becomes noise (tests/test_netvlad.py).
    """
    mean, var, axes = pca(descriptors, components=dim)
    return mean.float(), whitening_projection(var, axes, dim, eps, shrink).float()


def pca(descriptors: torch.Tensor, components: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean D, variances N', principal axes N' x D) of the rows of ``descriptors``, in float64, strongest first
    (N' = min(N, D); with ``components``, only the strongest that many axes).

    Memory: beyond ``descriptors`` themselves, the N x N Gram matrix (or D x D covariance, the smaller) in float64,
    a column block at a time of the centred data and the axes returned: a full SVD of the centred data held ~4
    float64 copies of it (N x K*D: 8,192 NetVLAD vectors of Lite0 at ``train.whitening_photos`` are 5.4 GB each).
    Axes of (near-)zero variance are an orthonormal completion, as an SVD's are."""
    n, d = descriptors.shape
    keep = min(n, d) if components is None else min(components, n, d)
    if n * d <= _SVD_ELEMENTS:  # small enough for the SVD's copies: the exact decomposition, as before issue 28
        x = descriptors.double()
        mean = x.mean(0)
        _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
        return mean, (s ** 2 / max(n - 1, 1))[:keep], vt[:keep]
    mean = descriptors.double().mean(0) if n * d <= _BLOCK_ELEMENTS else _column_mean(descriptors)
    if n > d:  # more rows than columns: the D x D covariance is the small side
        cov = _blocked_gram(descriptors.t(), mean, by_rows=True)
        var, vecs = torch.linalg.eigh(cov)
        order = var.flip(0).clamp_min(0)[:keep], vecs.flip(1)[:, :keep].t().contiguous()
        return mean, order[0] / max(n - 1, 1), order[1]
    gram = _blocked_gram(descriptors, mean, by_rows=False)  # N x N: x_c x_c^T
    var, u = torch.linalg.eigh(gram)
    var, u = var.flip(0).clamp_min(0)[:keep], u.flip(1)[:, :keep]
    axes = torch.empty(keep, d, dtype=torch.float64, device=descriptors.device)
    for c in range(0, d, max(1, _BLOCK_ELEMENTS // n)):  # axes = u^T x_c / s, a column block at a time
        cols = slice(c, min(d, c + max(1, _BLOCK_ELEMENTS // n)))
        axes[:, cols] = u.t() @ (descriptors[:, cols].double() - mean[cols])
    axes = torch.linalg.qr(axes.t()).Q.t()  # unit length, and orthonormal where the variance is ~0
    return mean, var / max(n - 1, 1), axes


_BLOCK_ELEMENTS = 1 << 24  # float64 elements of centred data held at once (128 MB)
# Up to this many elements (64M: a 512 MB float64 copy, ~2 GB for the SVD's copies) the SVD is used: bit-for-bit
# the decomposition trained models were made with (training amplifies a 1e-15 change into another early stop).
_SVD_ELEMENTS = 1 << 26
_RANK_PAIRS = 1 << 22  # query x gallery pairs ranked at once (recall_and_map, product_recall: ~120 MB)


def _column_mean(x: torch.Tensor) -> torch.Tensor:
    step = max(1, _BLOCK_ELEMENTS // x.shape[0])
    return torch.cat([x[:, c:c + step].double().mean(0) for c in range(0, x.shape[1], step)])


def _blocked_gram(x: torch.Tensor, mean: torch.Tensor, by_rows: bool) -> torch.Tensor:
    """``x_c x_c^T`` in float64 for the centred ``x`` (``by_rows``: ``x`` is the transposed data, its rows the
    columns the mean is over), a block of the inner dimension at a time."""
    rows, inner = x.shape
    out = torch.zeros(rows, rows, dtype=torch.float64, device=x.device)
    step = max(1, _BLOCK_ELEMENTS // rows)
    for c in range(0, inner, step):
        block = x[:, c:c + step].double()
        block -= mean.unsqueeze(1) if by_rows else mean[c:c + step]
        out.addmm_(block, block.t())
    return out


def whitening_projection(var: torch.Tensor, axes: torch.Tensor, dim: int, eps: float = 1e-6,
                         shrink: float = 0.0) -> torch.Tensor:
    """The whitening projection (dim x D) onto the top ``dim`` axes of :func:`pca` (see :func:`pca_whitening`)."""
    dim = min(dim, axes.shape[0])
    var = var[:dim]
    return axes[:dim] / ((var + shrink * var.mean()).sqrt() + eps).unsqueeze(1)


def recall_and_map(
    descriptors: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
    query_mask: torch.Tensor | None = None, gallery_mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """Recall@k and mAP: each query (row in ``query_mask``) ranks the gallery rows except itself.

    A query counts for Recall@k when one of its first ``k`` results has its label; queries with no
    positive in the gallery are skipped. Returns ``recall_at_<k>``, ``mean_ap`` and ``queries``.
    Queries are ranked a block at a time (``_RANK_PAIRS`` query x gallery pairs, ~30 bytes each): memory
    grows with the gallery, not with its square.
    """
    n = descriptors.shape[0]
    qm = torch.ones(n, dtype=torch.bool) if query_mask is None else query_mask.bool()
    gm = torch.ones(n, dtype=torch.bool) if gallery_mask is None else gallery_mask.bool()
    q_all, g_idx = qm.nonzero().squeeze(1), gm.nonzero().squeeze(1)
    gallery = descriptors[g_idx].float()
    sums, queries, step = {k: 0.0 for k in ks}, 0, max(1, _RANK_PAIRS // max(1, len(g_idx)))
    ap_sum = 0.0
    for start in range(0, len(q_all), step):
        q_idx = q_all[start:start + step]
        sims = descriptors[q_idx].float() @ gallery.t()
        self_pair = q_idx.unsqueeze(1) == g_idx.unsqueeze(0)
        sims[self_pair] = -float("inf")  # never retrieve itself
        relevant = (labels[q_idx].unsqueeze(1) == labels[g_idx].unsqueeze(0)) & ~self_pair
        order = sims.argsort(dim=1, descending=True)
        hits = relevant.gather(1, order)[relevant.any(1)].float()  # Q x G, ranked
        queries += hits.shape[0]
        for k in ks:
            sums[k] += float(hits[:, :k].amax(1).sum()) if hits.shape[0] else 0.0
        precision = hits.cumsum(1) / torch.arange(1, hits.shape[1] + 1, dtype=torch.float32)
        ap_sum += float(((precision * hits).sum(1) / hits.sum(1)).sum()) if hits.shape[0] else 0.0
    out = {"queries": queries}
    if queries == 0:
        return {**out, **{f"recall_at_{k}": float("nan") for k in ks}, "mean_ap": float("nan")}
    return {**out, **{f"recall_at_{k}": sums[k] / queries for k in ks}, "mean_ap": ap_sum / queries}


def product_recall(descriptors: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Product-level Recall@k (query photo -> product): each photo ranks the *products* by their best photo's
    similarity (max voting, itself left out); a hit when its own product is among the first ``k``. Queries whose
    product has no other photo are skipped. Returns ``product_recall_at_<k>``."""
    desc = descriptors.float()
    n_products = int(labels.max()) + 1 if len(labels) else 0
    has_other = torch.bincount(labels, minlength=n_products)[labels] > 1
    ranks, step = [], max(1, _RANK_PAIRS // max(1, len(labels), n_products))
    for start in range(0, len(labels), step):  # a block of queries at a time: memory grows with n, not n^2
        rows = torch.arange(start, min(len(labels), start + step))
        sims = desc[rows] @ desc.t()
        sims[torch.arange(len(rows)), rows] = -float("inf")
        votes = torch.full((len(rows), n_products), -float("inf"))
        votes = votes.scatter_reduce(1, labels.unsqueeze(0).expand(len(rows), -1), sims, reduce="amax")
        own = votes.gather(1, labels[rows].unsqueeze(1))  # the best score of the query's own product (self excluded)
        ranks.append((votes > own).sum(1)[has_other[rows]])  # products scored strictly above it
    rank = torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)
    return {f"product_recall_at_{k}": float((rank < k).float().mean()) if len(rank) else float("nan") for k in ks}


def kmeans(x: torch.Tensor, k: int, iterations: int, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on the rows of ``x`` (any device): returns k x D centres.

    Starts from ``k`` distinct random rows; a centre that loses all its points is moved to the
    point farthest from its current centre, so every cluster ends up used.
    """
    if x.shape[0] < k:
        raise ValueError(f"k-means with k={k} needs at least {k} descriptors, got {x.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(x.shape[0], generator=gen)[:k].to(x.device)].clone()
    for _ in range(iterations):
        dist = pairwise_sq_distances(x, centres)
        nearest = dist.argmin(1)
        counts = torch.bincount(nearest, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, nearest, x)
        centres = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp_min(1).unsqueeze(1), centres)
        for empty in (counts == 0).nonzero().flatten().tolist():
            far = dist.gather(1, nearest.unsqueeze(1)).squeeze(1).argmax()
            centres[empty] = x[far]
            dist[far] = 0.0
    return centres
