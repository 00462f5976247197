"""The training loop, in one file: ``fit`` runs the epochs, ``train_epoch`` one pass over the queries.

NetVLAD trained with the weakly supervised triplet loss (``models.loss``) on tuples mined each chunk of queries
(``training.mining``). The best epoch by validation Recall@1 (ties: by mAP) is kept, the starting model being
the first candidate (training never keeps a model worse on validation than the one it started from), with early
stopping after ``train.patience`` epochs without gain. Every epoch leaves ``last.pt``, so a killed job resumes
(``training.checkpoints``). Under DDP the queries are sharded over ranks, gradients averaged, and rank 0
validates, keeps the checkpoints and decides when to stop. No warehouse here: ``tasks.train`` keeps the books.
"""

from __future__ import annotations

import math
import time

import torch

from core.finite import require_finite
from core.progress import progress
from models import functional
from models.device import forward, on_device
from models.loss import WeakTripletLoss
from photos.loading import CropColour, TupleDataset, batches, make_loader, mirror_some
from training.checkpoints import Checkpoints
from training.data import PhotoDataset, PhotoSet, unwrap
from training.evaluation import recall
from training.mining import mine_chunk, query_indices, trainable
from training.start import fit_whitening

NOT_FINITE_HINT = "training diverged: lower train.lr"


def fit(model, settings, sets: tuple[PhotoSet, PhotoSet], device: torch.device, checkpoints: Checkpoints,
        model_id: str, on_epoch=None, rank: int = 0, world: int = 1, warm: bool = False) -> dict:
    """Train ``model`` on ``sets`` = (train, val) until ``train.epochs`` or ``train.patience`` epochs without a
    better validation score; returns the loop's state (``best.pt`` holds the model to publish). A warm start
    keeps its whitening; from k-means init the whitening is fitted first. After each epoch rank 0 calls
    ``on_epoch(state, loss, images_per_s, val, seconds)`` (the caller's bookkeeping). Resumes from
    ``checkpoints`` when this job finished an epoch before. Rank 0 shows one bar for the whole of it (queries
    over all epochs; the stage as its label), a line per epoch, and why it stopped (``core.progress``)."""
    cfg, (train_set, val_set) = settings.train, sets
    on_device(model, device)
    if model.whitening is not None and not cfg.learn_whitening:
        model.whitening.requires_grad_(False)  # refitted on the trained descriptors when published
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    state, resumed = checkpoints.resume(model, optimizer, new_state(model_id))
    per_epoch = epoch_queries(train_set, cfg.queries_per_epoch, world)
    with progress("train", cfg.epochs * per_epoch, "queries", initial=min(state["epoch"], cfg.epochs) * per_epoch,
                  enabled=rank == 0) as bar:
        net, photos = _start(model, settings, sets, device, checkpoints, state, resumed, rank, world, warm, bar)
        criterion = WeakTripletLoss(cfg.margin)
        while not _rank0_says(state["epoch"] >= cfg.epochs or state["stale"] >= cfg.patience, world, device):
            t0 = time.perf_counter()
            bar.stage(f"epoch {state['epoch'] + 1}/{cfg.epochs}")
            loss, ips = train_epoch(net, optimizer, criterion, settings, train_set, photos, state["epoch"], device,
                                    rank, world, bar=bar)
            if rank != 0:
                state["epoch"] += 1
                continue
            val = recall(model, settings, val_set, device)
            r1, ap = _val_scores(val)
            improved = (r1, ap) > (state["best"], state.get("best_map", -1.0))  # mAP breaks Recall@1 ties
            state.update(epoch=state["epoch"] + 1, stale=0 if improved else state["stale"] + 1,
                         **({"best": r1, "best_map": ap} if improved else {}))
            _require_finite_epoch(model, state["epoch"], loss, val)
            if improved:
                checkpoints.save("best", model, state)
            if on_epoch is not None:
                on_epoch(state, loss, ips, val, time.perf_counter() - t0)
            checkpoints.save("last", model, state, optimizer)
            bar.moveto(state["epoch"] * per_epoch)  # mining may skip a query: the epoch is done all the same
            bar.note(epoch_line(state, cfg.epochs, loss, val, ips, time.perf_counter() - t0, improved))
            bar.fields(loss=f"{loss:.4f}", R1=f"{r1:.3f}")
        bar.finish(stop_reason(state, cfg.epochs, cfg.patience))
    return state


def _start(model, settings, sets, device, checkpoints: Checkpoints, state: dict, resumed: bool, rank: int,
           world: int, warm: bool, bar):
    """Before the first epoch: the trainable network (frozen-stage cache), the whitening fitted from k-means
    init, the ``init`` checkpoint, DDP, and the starting model scored on validation (the first candidate)."""
    cfg, (train_set, val_set) = settings.train, sets
    bar.stage("start")
    photos = PhotoDataset(settings, train_set.paths, cfg.image_size, model.backbone.mean, model.backbone.std)
    net, photos = trainable(model, settings, photos, device, world)
    if not resumed and not warm:
        fit_whitening(net, photos, settings, device)
    if not resumed and rank == 0:
        checkpoints.save("init", model, state)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if rank == 0 and state["epoch"] == 0 and state["best"] < 0:  # the starting model is the first candidate
        r1, ap = _val_scores(recall(model, settings, val_set, device))
        state.update(best=r1, best_map=ap, start_val_recall_at_1=r1)
        checkpoints.save("best", model, state)
    return net, photos


def epoch_queries(train_set, queries_per_epoch: int, world: int) -> int:
    """The queries each epoch takes on one rank (what ``train_epoch`` draws): the bar's unit."""
    n = len(query_indices(train_set))
    return min(n, queries_per_epoch or n) // max(world, 1)


def epoch_line(state: dict, epochs: int, loss: float, val: dict, ips: float, seconds: float, improved: bool) -> str:
    """The epoch's line for the console (also in plain output): loss, validation Recall@1 and the best so far."""
    scored = f"val R@1 {val['recall_at_1']:.3f}" if val.get("queries") else "no validation photos"
    best = " (new best)" if improved else f" (best {state['best']:.3f}, no gain for {state['stale']})"
    return (f"train: epoch {state['epoch']}/{epochs}: loss {loss:.4f}, {scored}{best if val.get('queries') else ''}, "
            f"{ips:.0f} img/s, {seconds:.0f} s")


def stop_reason(state: dict, epochs: int, patience: int) -> str:
    """Why the loop ended: every epoch ran, or early stopping (``stopped early at epoch 7: no gain for 3
    epochs``); the best epoch is what gets published."""
    best = f"best val R@1 {state['best']:.3f}" if state["best"] >= 0 else "no validation score"
    if state["epoch"] < epochs and state["stale"] >= patience:
        return (f"stopped early at epoch {state['epoch']}: no gain for {state['stale']} "
                f"epoch{'s' if state['stale'] != 1 else ''} ({best})")
    return f"ran all {epochs} epochs ({best})" if epochs != 1 else f"ran its one epoch ({best})"


def train_epoch(model, optimizer, criterion, settings, photo_set, photos, epoch: int, device: torch.device,
                rank: int = 0, world: int = 1, timings: dict | None = None, bar=None) -> tuple[float, float]:
    """One pass over the (shuffled) queries; returns (mean loss, training images per second). ``timings``, when
    given, receives the seconds spent mining (``mine_s``) and in the steps (``step_s``); the rest of the epoch's
    wall clock is the steps waiting for their photos. ``bar`` (``core.progress``) advances by the queries trained."""
    cfg = settings.train
    rate = epoch_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
    for group in optimizer.param_groups:
        group["lr"] = rate
    gen = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)  # same order on resume and on every rank
    queries = query_indices(photo_set)
    order = torch.randperm(len(queries), generator=gen).tolist()[: cfg.queries_per_epoch or None]
    queries = shard([queries[i] for i in order], rank, world)
    total, steps, images, busy, mining = 0.0, 0, 0, 0.0, 0.0
    for start in range(0, len(queries), cfg.cache_refresh_queries):
        mining -= time.perf_counter()
        tuples = mine_chunk(model, settings, photo_set, photos, queries[start:start + cfg.cache_refresh_queries],
                            gen, device)
        if cfg.flip_augment:  # photos is WithMirrors (see trainable): mined on the photos, trained on either side
            tuples = mirror_some(tuples, len(photo_set), gen)
        mining += time.perf_counter()
        tuples = tuples[:fewest(len(tuples), world, device)]  # every rank takes as many steps: DDP would hang
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
            if bar is not None:
                bar.advance(batch.shape[0])
    if timings is not None:
        timings.update(mine_s=mining, step_s=busy)
    return total / max(steps, 1), images / max(busy, 1e-9)


def shard(queries: list[int], rank: int, world: int) -> list[int]:
    """This rank's equal share of the epoch's queries (the last ``len % world`` are left to the next epoch's
    shuffle): ranks with uneven shares would take a different number of steps and DDP would hang."""
    return queries[: len(queries) // world * world][rank::world]


def fewest(n: int, world: int, device: torch.device) -> int:
    """The smallest ``n`` over the ranks (mining may skip a query on one rank only)."""
    if world == 1:
        return n
    t = torch.tensor([n], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


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


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (from 0): ``lr``, or cosine-annealed from ``lr`` towards 0 over
    ``epochs``. A closed form of the epoch rather than a stateful scheduler: a resumed run is at the same rate."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / max(epochs, 1)))
    return lr


def _crop_colour(model, cfg) -> CropColour | None:
    """The training tuples' crop + colour augmentation (``train.crop_colour_augment``; never on the frozen-stage
    cache, which ``trainable`` turns off for it)."""
    if not cfg.crop_colour_augment:
        return None
    m = unwrap(model)
    return CropColour(m.backbone.mean, m.backbone.std)


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


def _require_finite_epoch(model, epoch: int, loss: float, val: dict) -> None:
    """Refuse an epoch (before its metrics row and checkpoints) whose loss, validation scores or weights hold NaN
    or infinity: a diverged model would otherwise be committed, scored and served."""
    require_finite(f"train: epoch {epoch} loss", loss, NOT_FINITE_HINT)
    require_finite(f"train: epoch {epoch} validation", _scored(val), NOT_FINITE_HINT)
    require_finite(f"train: epoch {epoch} weights", model.state_dict(), NOT_FINITE_HINT)


def _scored(metrics: dict) -> dict:
    """``metrics`` when photos were scored; {} when none were (``recall`` gives NaN for "no score" then)."""
    return metrics if metrics.get("queries") else {}
