"""NetVLAD training with the weakly supervised triplet loss (step ``train``).

Stable entry points (the nightly flow uses them):

* ``make_split(settings) -> run_id``                         (``tasks.split``)
* ``kmeans_init(settings, split_run_id, photos="auto") -> run_id``  (``tasks.kmeans``)
* ``train_model(settings, split_run_id, init_model_id=None, kmeans_run_id=None, photos="auto") -> run_id``
  warm-starts from ``init_model_id`` when given, else from the k-means run (default: the latest).
  The run writes one ``models`` row (``kind="netvlad"``, test metrics JSON in ``metrics``);
  ``model_id_of_run(settings, run_id)`` returns its id, ``load_embedder(model_id, settings)`` loads it.
* ``evaluate(settings, model_id) -> run_id``                 (``tasks.evaluate``)

Training follows NetVLAD: a query is a photo of a training product, its positives the product's
other photos (the loss takes the closest), its negatives the ``hard_negatives`` closest of
``negatives_pool`` random photos of other products, mined in a descriptor cache refreshed every
``cache_refresh_queries`` queries. Each epoch is checkpointed (a rerun with the same inputs resumes
from the last one); the best epoch by validation Recall@1 (ties: by mAP) is kept, with early stopping.
Multi-GPU: launched under ``torchrun`` (``WORLD_SIZE`` > 1) the queries are sharded over ranks and
gradients averaged by DDP; rank 0 writes the warehouse and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from datetime import datetime, timezone

import torch
from prefect import task
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from models import functional as LF
from models.loss import WeakTripletLoss
from models.netvlad_model import FromFrozen, ModelConfig, NetVLADModel, load_checkpoint, save_checkpoint
from shoesearch.errors import ShoesearchError
from tasks.kmeans import model_of_run
from tasks.loading import TupleDataset
from tasks.train_data import PhotoDataset, PhotoSet, embed_dataset, load_photos, loader, pick_device
from warehouse import latest_run, open_warehouse, start_run


# --- mining ------------------------------------------------------------------------------------
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
        d = LF.pairwise_sq_distances(cache[q].unsqueeze(0), pool_vecs)[0].masked_fill(~is_negative, float("inf"))
        n_neg = int(is_negative.sum())
        hardest = pool_t[d.argsort()[: min(hard_negatives, n_neg)]].tolist()
        negatives = [hardest[j % len(hardest)] for j in range(hard_negatives)]
        tuples.append([q, *positives, *negatives])
    return tuples


class _Rows(Dataset):
    """Rows of a tensor as a dataset (the frozen-stage cache)."""

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
    return _Rows(embed_dataset(model.frozen_features, photos, cfg.batch_size * 4, cfg.num_workers, device, "frozen"))


# --- one training step and the loop -------------------------------------------------------------
def tuple_loss(model, batch: torch.Tensor, criterion, positives: int, device: torch.device) -> torch.Tensor:
    """Loss of a batch of tuples B x (1+P+N) x 3 x S x S."""
    b, t = batch.shape[:2]
    x = batch.to(device, non_blocking=True).flatten(0, 1)
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            desc = model(x.contiguous(memory_format=torch.channels_last))
    else:
        desc = model(x)
    desc = desc.float().view(b, t, -1)
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


def train_epoch(model, optimizer, criterion, settings, photo_set, photos, epoch: int,
                device: torch.device, rank: int = 0, world: int = 1) -> tuple[float, float]:
    """One pass over the (shuffled) queries; returns (mean loss, training images per second)."""
    cfg = settings.train
    gen = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)  # same order on resume and on every rank
    queries = query_indices(photo_set)
    order = torch.randperm(len(queries), generator=gen).tolist()[: cfg.queries_per_epoch or None]
    queries = [queries[i] for i in order][rank::world]
    total, steps, images, busy = 0.0, 0, 0, 0.0
    bar = tqdm(total=len(queries), desc=f"epoch {epoch}", leave=False, disable=rank != 0 or None)
    for start in range(0, len(queries), cfg.cache_refresh_queries):
        tuples = mine_chunk(model, settings, photo_set, photos, queries[start:start + cfg.cache_refresh_queries],
                            gen, device)
        model.train()
        for batch in loader(TupleDataset(photos, tuples), cfg.batch_size, cfg.num_workers, device, shuffle=False):
            t0 = time.perf_counter()
            loss = tuple_loss(model, batch, criterion, cfg.max_positives, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            busy += time.perf_counter() - t0
            total, steps, images = total + loss.item(), steps + 1, images + batch.shape[0] * batch.shape[1]
            bar.update(batch.shape[0])
            bar.set_postfix(loss=f"{total / steps:.4f}")
    bar.close()
    return total / max(steps, 1), images / max(busy, 1e-9)


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
    return LF.recall_and_map(desc, photo_set.labels())


# --- building the starting model ----------------------------------------------------------------
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
    """PCA whitening fitted on the NetVLAD vectors of ``inputs`` (photos, or the frozen cache for FromFrozen)."""
    model = net.model if isinstance(net, FromFrozen) else net
    if model.whitening is None:
        return
    net.eval()
    cap = settings.train.whitening_photos
    if len(inputs) > cap:  # N x K*D floats: a seeded sample bounds memory on big catalogues
        pick = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(settings.train.seed))[:cap]
        inputs = Subset(inputs, sorted(pick.tolist()))
    vlad = embed_dataset(lambda x: net(x, whiten=False), inputs, settings.train.batch_size * 4,
                         settings.train.num_workers, device, "whitening")
    model.whitening.fit(vlad.to(device))


def model_from_kmeans(settings, kmeans_row: dict, train_photos: PhotoSet, device: torch.device) -> NetVLADModel:
    """NetVLAD at k-means init; its PCA whitening fitted on the training photos' NetVLAD vectors."""
    model = kmeans_model(settings, kmeans_row, len(train_photos)).to(device)
    fit_whitening(model, PhotoDataset(settings, train_photos.paths, settings.train.image_size, model.backbone.mean,
                                      model.backbone.std), settings, device)
    return model.cpu()


def model_row(wh, model_id: str) -> dict:
    rows = wh.query("SELECT * FROM models WHERE model_id = ? ORDER BY created_at DESC LIMIT 1", [model_id]).to_pylist()
    if not rows:
        raise ShoesearchError(f"no model {model_id!r} in the models table")
    return rows[0]


def model_id_of_run(settings, run_id: str) -> str:
    """The model id a ``train`` (or ``kmeans``) run produced."""
    return model_of_run(open_warehouse(settings), run_id)["model_id"]


def _module(model):
    return model.module if hasattr(model, "module") else model


def _rank0_says(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's decision (e.g. early stop), shared with every rank."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(t, 0)
    return bool(t.item())


class _RankRun:
    """Stands in for the warehouse run on DDP ranks other than 0 (they write nothing)."""

    run_id = os.environ.get("SHOESEARCH_RUN_ID") or f"train-rank{os.environ.get('RANK', '0')}-ddp"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _checkpoint_dir(settings, key_parts: dict) -> "os.PathLike":
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return settings.models_dir / "checkpoints" / key


# --- the step -----------------------------------------------------------------------------------
def train_model(settings, split_run_id: str, init_model_id: str | None = None, kmeans_run_id: str | None = None,
                photos: str = "auto") -> str:
    """Train NetVLAD on the split's training photos; returns the train run id (see module docstring)."""
    if settings.train.device != "cpu" and torch.cuda.device_count() > 1 and "WORLD_SIZE" not in os.environ:
        from tasks.train_ddp import launch

        return launch(settings, split_run_id, init_model_id, kmeans_run_id, photos)
    return _train(settings, split_run_id, init_model_id, kmeans_run_id, photos)


def _train(settings, split_run_id, init_model_id, kmeans_run_id, photos) -> str:
    cfg = settings.train
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(cfg.device if world == 1 else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    _seed_everything(cfg.seed)
    wh = open_warehouse(settings)
    train_set = load_photos(wh, split_run_id, photos, ("train",))
    val_set = load_photos(wh, split_run_id, photos, ("val",))
    if len(query_indices(train_set)) == 0 or len(set(train_set.product_ids)) < 2:
        raise ShoesearchError("training needs at least 2 training products, one with 2+ photos")
    if init_model_id:
        parent = model_row(wh, init_model_id)
        model, _ = load_checkpoint(settings.home / parent["path"])
    else:
        kmeans_run_id = kmeans_run_id or latest_run(wh, "kmeans")
        if kmeans_run_id is None:
            raise ShoesearchError("no k-means run: run kmeans_init first or give init_model_id")
        parent = model_of_run(wh, kmeans_run_id)
        model = kmeans_model(settings, parent, len(train_set))  # whitening fitted below (not on resume)
    params = {"split_run_id": split_run_id, "parent_model_id": parent["model_id"], "photos": train_set.photos,
              "train": json.loads(settings.section_json("train")), "world_size": world}
    ckpt_dir = _checkpoint_dir(settings, {k: v for k, v in params.items() if k != "world_size"})
    inputs = [split_run_id, parent["run_id"], train_set.denoise_run_id]
    with (start_run(wh, step="train", params=params, inputs=inputs) if rank == 0 else _RankRun()) as run:
        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        state = {"epoch": 0, "best": -1.0, "stale": 0, "model_id": f"netvlad-{model.config.backbone}-{run.run_id.split('-', 1)[1]}"}
        resumed = (ckpt_dir / "last.pt").exists()
        if resumed:
            _, ckpt = load_checkpoint(ckpt_dir / "last.pt")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = ckpt["state"]
        model_id = state["model_id"]
        photos_ds = PhotoDataset(settings, train_set.paths, cfg.image_size, model.backbone.mean, model.backbone.std)
        cached = frozen_cache(model, settings, photos_ds, device) if world == 1 else None
        if cached is not None:  # the loop feeds the cached frozen-stage output, not photos
            net, photos_ds = FromFrozen(model), cached
        else:
            net = model
        if not resumed:
            if not init_model_id:
                fit_whitening(net, photos_ds, settings, device)
            if rank == 0:
                save_checkpoint(ckpt_dir / "init.pt", model, {"state": state})
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        criterion = WeakTripletLoss(cfg.margin)
        overall = tqdm(total=cfg.epochs, initial=min(state["epoch"], cfg.epochs), unit="epoch", position=0,
                       desc=f"train {model.config.backbone}", disable=rank != 0 or None)
        while not _rank0_says(state["epoch"] >= cfg.epochs or state["stale"] >= cfg.patience, world, device):
            t0 = time.perf_counter()
            loss, ips = train_epoch(net, optimizer, criterion, settings, train_set, photos_ds, state["epoch"], device, rank, world)
            if rank != 0:
                state["epoch"] += 1
                continue
            val = recall(model, settings, val_set, device)
            r1, ap = (val["recall_at_1"], val["mean_ap"]) if val["queries"] else (0.0, 0.0)
            improved = (r1, ap) > (state["best"], state.get("best_map", -1.0))  # mAP breaks Recall@1 ties
            if improved:
                state.update(best=r1, best_map=ap)
            state.update(epoch=state["epoch"] + 1, stale=0 if improved else state["stale"] + 1)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", model, {"state": state})
            run.commit_chunk("train_metrics", [{
                "model_id": model_id, "epoch": state["epoch"], "loss": loss, "val_recall_at_1": val["recall_at_1"],
                "val_recall_at_5": val["recall_at_5"], "images_per_s": ips, "seconds": time.perf_counter() - t0}])
            save_checkpoint(ckpt_dir / "last.pt", model, {"optimizer": optimizer.state_dict(), "state": state})
            overall.update(1)
            overall.set_postfix(loss=f"{loss:.4f}", val_r1=f"{r1:.3f}", best=f"{state['best']:.3f}")
        overall.close()
        if rank != 0:
            return run.run_id
        best, _ = load_checkpoint(ckpt_dir / "best.pt")
        test = recall(best.to(device), settings, load_photos(wh, split_run_id, photos, ("test",)), device)
        rel = f"models/{model_id}.pt"
        save_checkpoint(settings.home / rel, best)
        init_rel = f"models/{model_id}.init.pt"
        tmp = settings.home / f"{init_rel}.tmp"
        shutil.copyfile(ckpt_dir / "init.pt", tmp)
        os.replace(tmp, settings.home / init_rel)
        run.write("models", [{
            "model_id": model_id, "kind": "netvlad", "backbone": best.config.backbone, "path": rel,
            "parent_model_id": parent["model_id"],
            "params": json.dumps({**params, "init_path": init_rel, "epochs_run": state["epoch"],
                                  "best_val_recall_at_1": state["best"], "dim": best.dim}, default=str),
            "metrics": json.dumps({"split": "test", **test}), "created_at": datetime.now(timezone.utc)}])
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # committed: the next run with these inputs starts afresh
    return run.run_id


train_model_task = task(train_model, name="train")
