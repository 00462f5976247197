"""The NetVLAD training loop: mining, one epoch, validation, early stopping. No warehouse, no files.

Training follows NetVLAD: a query is a photo of a training product, its positives the product's other
photos (the loss takes the closest), its negatives the ``hard_negatives`` closest of ``negatives_pool``
random photos of other products, mined in a descriptor cache refreshed every ``cache_refresh_queries``
queries. The best epoch by validation Recall@1 (ties: by mAP) is kept, with early stopping after
``patience`` epochs without gain. Under DDP the queries are sharded over ranks and rank 0 decides when
to stop. ``tasks.train`` does the bookkeeping around this loop (runs, checkpoints, the model row).
"""

from __future__ import annotations

import math
import time

import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from models import functional
from models.device import forward
from models.loss import WeakTripletLoss
from models.netvlad_model import ModelConfig, NetVLADFromFrozenFeatures, NetVLADModel
from photos.loading import CropColour, TupleDataset, WithMirrors, batches, make_loader, mirror_some
from tasks.train_data import PhotoDataset, PhotoSet, embed_dataset


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


def tuple_loss(model, batch: torch.Tensor, criterion, positives: int, device: torch.device,
               amp: bool = True) -> torch.Tensor:
    """Loss of a batch of tuples B x (1+P+N) x 3 x S x S, with the gradient of the full loss at a fraction
    of its cost: every member is embedded without autograd, then only the members the loss has a gradient
    for (``functional.triplet_live_members``: query, closest positive, negatives inside the margin) run again with
    it. The backbone's batch-norm is frozen and nothing is random, so a member's descriptor does not
    depend on the batch it is in: value and gradient are those of the full computation (up to rounding).
    """
    b, t = batch.shape[:2]
    flat = batch.flatten(0, 1)
    with torch.no_grad():
        desc = forward(model, flat, device, amp).view(b, t, -1)
    live = functional.triplet_live_members(desc[:, 0], desc[:, 1:1 + positives], desc[:, 1 + positives:],
                                   criterion.margin).flatten().nonzero().squeeze(1)
    fresh = forward(model, flat[live.to(flat.device)], device, amp)
    desc = desc.flatten(0, 1).index_copy(0, live, fresh).view(b, t, -1)
    return criterion(desc[:, 0], desc[:, 1:1 + positives], desc[:, 1 + positives:])


def mine_chunk(model, settings, photo_set: PhotoSet, photos: PhotoDataset, chunk: list[int],
               gen: torch.Generator, device: torch.device) -> list[list[int]]:
    """Refresh the cache for a chunk of queries and a fresh random negative pool, then mine tuples."""
    cfg = settings.train
    pool = torch.randperm(len(photo_set), generator=gen)[: cfg.negatives_pool].tolist()
    needed = sorted(set(chunk) | set(pool))
    model.eval()
    vecs = embed_dataset(_module(model), Subset(photos, needed), cfg.batch_size * 4, cfg.num_workers, device, "cache")
    cache = dict(zip(needed, vecs))
    return mine_tuples(chunk, photo_set.product_ids, cache, pool, cfg.max_positives, cfg.hard_negatives, gen)


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (from 0): ``lr``, or cosine-annealed from ``lr`` towards 0 over
    ``epochs``. A closed form of the epoch rather than a stateful scheduler: a resumed run is at the same rate."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / max(epochs, 1)))
    return lr


def train_epoch(model, optimizer, criterion, settings, photo_set, photos, epoch: int,
                device: torch.device, rank: int = 0, world: int = 1) -> tuple[float, float]:
    """One pass over the (shuffled) queries; returns (mean loss, training images per second)."""
    cfg = settings.train
    rate = epoch_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
    for group in optimizer.param_groups:
        group["lr"] = rate
    gen = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)  # same order on resume and on every rank
    queries = query_indices(photo_set)
    order = torch.randperm(len(queries), generator=gen).tolist()[: cfg.queries_per_epoch or None]
    queries = [queries[i] for i in order][rank::world]
    total, steps, images, busy = 0.0, 0, 0, 0.0
    bar = tqdm(total=len(queries), desc=f"epoch {epoch}", leave=False, disable=rank != 0 or None)
    for start in range(0, len(queries), cfg.cache_refresh_queries):
        tuples = mine_chunk(model, settings, photo_set, photos, queries[start:start + cfg.cache_refresh_queries],
                            gen, device)
        if cfg.flip_augment:  # photos is WithMirrors (see trainable): mined on the photos, trained on either side
            tuples = mirror_some(tuples, len(photo_set), gen)
        model.train()
        fed = TupleDataset(photos, tuples, _crop_colour(model, cfg))
        for batch in batches(make_loader(fed, cfg.batch_size, cfg.num_workers, device)):
            t0 = time.perf_counter()
            loss = tuple_loss(model, batch, criterion, cfg.max_positives, device, cfg.amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            busy += time.perf_counter() - t0
            total, steps, images = total + loss.item(), steps + 1, images + batch.shape[0] * batch.shape[1]
            bar.update(batch.shape[0])
            bar.set_postfix(loss=f"{total / steps:.4f}")
    bar.close()
    return total / max(steps, 1), images / max(busy, 1e-9)


def _crop_colour(model, cfg) -> CropColour | None:
    """The training tuples' crop + colour augmentation (``train.crop_colour_augment``; never on the frozen-stage
    cache, which ``trainable`` turns off for it)."""
    if not cfg.crop_colour_augment:
        return None
    m = _module(model)
    return CropColour(m.backbone.mean, m.backbone.std)


def recall(model, settings, photo_set: PhotoSet, device: torch.device) -> dict[str, float]:
    """Recall@1/5/10 and mAP of ``model`` on ``photo_set`` (each photo queries all the others)."""
    cfg = settings.train
    if len(photo_set) < 2:
        return {"queries": 0, "recall_at_1": float("nan"), "recall_at_5": float("nan"),
                "recall_at_10": float("nan"), "mean_ap": float("nan")}
    m = _module(model)
    ds = PhotoDataset(settings, photo_set.paths, m.config.image_size, m.backbone.mean, m.backbone.std)
    model.eval()
    desc = embed_dataset(m, ds, cfg.batch_size * 4, cfg.num_workers, device, "recall")
    return functional.recall_and_map(desc, photo_set.labels())


def kmeans_model(settings, kmeans_row: dict, n_train: int) -> NetVLADModel:
    """NetVLAD at k-means init, its whitening not fitted yet (:func:`fit_whitening`)."""
    cfg = settings.train
    km = torch.load(settings.home / kmeans_row["path"], map_location="cpu", weights_only=False)
    weights = settings.embed.weights_path if km["backbone"] == settings.embed.backbone else ""
    n_fit = min(n_train, cfg.whitening_photos)  # photos the PCA is fitted on (fit_whitening)
    dim = min(cfg.descriptor_dim, n_fit - 1) if cfg.descriptor_dim else 0  # PCA has at most N-1 components
    config = ModelConfig(km["backbone"], int(km["centroids"].shape[0]), dim, cfg.image_size, cfg.trainable_blocks, weights)
    model = NetVLADModel(config)
    model.netvlad.init_from_kmeans(km["centroids"], float(km["alpha"]))
    return model


def fit_whitening(net, inputs: Dataset, settings, device: torch.device) -> None:
    """PCA whitening fitted on the NetVLAD vectors of ``inputs`` (photos, or the frozen cache for
    ``NetVLADFromFrozenFeatures``)."""
    model = net.model if isinstance(net, NetVLADFromFrozenFeatures) else net
    if model.whitening is None:
        return
    net.eval()
    cap = settings.train.whitening_photos
    if len(inputs) > cap:  # N x K*D floats: a seeded sample bounds memory on big catalogues
        pick = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(settings.train.seed))[:cap]
        inputs = Subset(inputs, sorted(pick.tolist()))
    vlad = embed_dataset(lambda x: net(x, whiten=False), inputs, settings.train.batch_size * 4,
                         settings.train.num_workers, device, "whitening")
    model.whitening.fit(vlad.to(device), settings.train.whitening_shrinkage)


def _module(model):
    return model.module if hasattr(model, "module") else model


def _rank0_says(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's decision (e.g. early stop), shared with every rank."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(t, 0)
    return bool(t.item())


def new_state(model_id: str) -> dict:
    """The loop's state (saved in every checkpoint, so a resumed run continues where it stopped)."""
    return {"epoch": 0, "best": -1.0, "best_map": -1.0, "stale": 0, "model_id": model_id}


def _val_scores(val: dict) -> tuple[float, float]:
    return (val["recall_at_1"], val["mean_ap"]) if val["queries"] else (0.0, 0.0)


def run_epochs(net, model, optimizer, settings, train_set: PhotoSet, photos: Dataset, val_set: PhotoSet,
               state: dict, device: torch.device, on_epoch, rank: int = 0, world: int = 1, on_start=None) -> dict:
    """Train until ``train.epochs`` or early stop; after each epoch rank 0 calls
    ``on_epoch(state, loss, images_per_s, val, improved, seconds)``. ``net`` is what the loop feeds (the model,
    its ``NetVLADFromFrozenFeatures`` view, or its DDP wrapper); ``model`` is scored on ``val_set``. The starting
    model is the first candidate (scored before epoch 1, ``on_start(state)``), so training never keeps a model
    worse on validation than the one it started from. Returns ``state``."""
    cfg = settings.train
    criterion = WeakTripletLoss(cfg.margin)
    if rank == 0 and state["epoch"] == 0 and state["best"] < 0:
        r1, ap = _val_scores(recall(model, settings, val_set, device))
        state.update(best=r1, best_map=ap, start_val_recall_at_1=r1)
        if on_start is not None:
            on_start(state)
    while not _rank0_says(state["epoch"] >= cfg.epochs or state["stale"] >= cfg.patience, world, device):
        t0 = time.perf_counter()
        loss, ips = train_epoch(net, optimizer, criterion, settings, train_set, photos, state["epoch"], device,
                                rank, world)
        if rank != 0:
            state["epoch"] += 1
            continue
        val = recall(model, settings, val_set, device)
        r1, ap = _val_scores(val)
        improved = (r1, ap) > (state["best"], state.get("best_map", -1.0))  # mAP breaks Recall@1 ties
        if improved:
            state.update(best=r1, best_map=ap)
        state.update(epoch=state["epoch"] + 1, stale=0 if improved else state["stale"] + 1)
        on_epoch(state, loss, ips, val, improved, time.perf_counter() - t0)
    return state


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
