"""Mining training tuples, and what the loop feeds the network.

A query is a photo of a training product, its positives the product's other photos (the loss takes the
closest), its negatives the ``hard_negatives`` closest of ``negatives_pool`` random photos of other products,
mined in a descriptor cache refreshed every ``cache_refresh_queries`` queries (NetVLAD's recipe). When the
backbone's first stages are frozen their output is computed once (``frozen_cache``) and the loop runs only the
trainable rest (``trainable``).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from models import functional
from models.netvlad_model import NetVLADFromFrozenFeatures, NetVLADModel
from photos.loading import WithMirrors
from training.data import PhotoDataset, PhotoSet, embed_dataset, unwrap


def query_indices(photo_set: PhotoSet) -> list[int]:
    """Photos usable as queries: their product has at least one other photo (a positive)."""
    counts: dict[str, int] = {}
    for p in photo_set.product_ids:
        counts[p] = counts.get(p, 0) + 1
    return [i for i, p in enumerate(photo_set.product_ids) if counts[p] > 1]


def mine_tuples(queries: list[int], products: list[str], cache: dict[int, torch.Tensor], pool: list[int],
                max_positives: int, hard_negatives: int, gen: torch.Generator) -> list[list[int]]:
    """``[query, positives x max_positives, negatives x hard_negatives]`` photo indices per query.

    Positives: up to ``max_positives`` random other photos of the product (repeated to fill; the loss
    takes the closest). Negatives: the ``hard_negatives`` photos of ``pool`` from other products
    closest to the query in ``cache``.
    """
    by_product: dict[str, list[int]] = {}
    for i, p in enumerate(products):
        by_product.setdefault(p, []).append(i)
    pool_t = torch.tensor(pool)
    pool_vecs = torch.stack([cache[i] for i in pool])
    tuples = []
    for q in queries:
        others = [i for i in by_product[products[q]] if i != q]
        pick = torch.randperm(len(others), generator=gen)[:max_positives].tolist()
        positives = [others[pick[j % len(pick)]] for j in range(max_positives)]
        is_negative = torch.tensor([products[i] != products[q] for i in pool])
        if not is_negative.any():
            continue
        d = functional.pairwise_sq_distances(cache[q].unsqueeze(0), pool_vecs)[0]
        d = d.masked_fill(~is_negative, float("inf"))
        n_neg = int(is_negative.sum())
        hardest = pool_t[d.argsort()[: min(hard_negatives, n_neg)]].tolist()
        negatives = [hardest[j % len(hardest)] for j in range(hard_negatives)]
        tuples.append([q, *positives, *negatives])
    return tuples


class _FrozenFeatureCache(Dataset):
    """The frozen stages' output for every photo (row i is photo i), as a dataset the loop feeds from."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


def frozen_cache(model: NetVLADModel, settings, photos: PhotoDataset, device: torch.device) -> Dataset | None:
    """The frozen stages' output for every photo, computed once, when it fits in ``train.frozen_cache_mb``."""
    cfg = settings.train
    if not cfg.frozen_cache_mb or model.frozen_stages == 0 or len(photos) == 0:
        return None
    model.eval()
    one = model.frozen_features(photos[0].unsqueeze(0).to(device))
    if one.numel() * 4 * len(photos) > cfg.frozen_cache_mb * 2**20:  # stored as float32
        return None
    features = embed_dataset(model.frozen_features, photos, cfg.batch_size * 4, cfg.num_workers, device, "frozen")
    return _FrozenFeatureCache(features)


def mine_chunk(model, settings, photo_set: PhotoSet, photos: PhotoDataset, chunk: list[int],
               gen: torch.Generator, device: torch.device) -> list[list[int]]:
    """Refresh the cache for a chunk of queries and a fresh random negative pool, then mine tuples."""
    cfg = settings.train
    pool = torch.randperm(len(photo_set), generator=gen)[: cfg.negatives_pool].tolist()
    needed = sorted(set(chunk) | set(pool))
    model.eval()
    vecs = embed_dataset(unwrap(model), Subset(photos, needed), cfg.batch_size * 4, cfg.num_workers, device, "cache")
    cache = dict(zip(needed, vecs))
    return mine_tuples(chunk, photo_set.product_ids, cache, pool, cfg.max_positives, cfg.hard_negatives, gen)


def trainable(model, settings, photos: Dataset, device: torch.device, world: int):
    """(the network the loop feeds, the inputs it feeds it): the frozen-stage cache with
    ``NetVLADFromFrozenFeatures`` when it fits (exact: ``train.flip_augment`` is cached as a second version of
    each photo; single process only; never with ``train.crop_colour_augment``, which changes the frozen stages'
    input), else the model and the photos (with their mirrors when flipping)."""
    if settings.train.flip_augment:
        photos = WithMirrors(photos)
    exact = world == 1 and not settings.train.crop_colour_augment
    cached = frozen_cache(model, settings, photos, device) if exact else None
    return (NetVLADFromFrozenFeatures(model), cached) if cached is not None else (model, photos)
