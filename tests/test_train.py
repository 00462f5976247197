"""End to end on a small synthetic catalog: split -> k-means -> train -> evaluate (CPU).

One module-scoped home and one trained model serve every test here; the extra training runs
(resume, warm start, the Prefect flow) are short, so the whole file stays within its CI budget.
"""

from __future__ import annotations

import json
import logging
import math
import re

import pytest
import torch

pytestmark = pytest.mark.e2e  # trains models: outside the fast loop

TRAIN_PRODUCTS = 20
TRAIN_IMAGE_SIZE = 96  # EfficientNet-Lite0 gives a 3x3 local map: 9 descriptors per photo
SMALL = {  # tiny but real: every code path of the defaults runs
    "train.image_size": TRAIN_IMAGE_SIZE, "train.clusters": 8, "train.descriptor_dim": 32,
    "train.kmeans_descriptors": 360, "train.kmeans_images": 40, "train.kmeans_iterations": 10,
    "train.epochs": 3, "train.batch_size": 4, "train.lr": 1e-3, "train.negatives_pool": 64,
    "train.hard_negatives": 4, "train.max_positives": 2, "train.cache_refresh_queries": 64,
    "train.device": "cpu", "embed.image_size": TRAIN_IMAGE_SIZE,  # loader workers: the default (2)
    # The loss / ranking margins below were measured with at most two trainable blocks; at the default three
    # (2026-12-04) one run of this fixture gave a loss ratio of 0.50 (the loss halves, but the 0.3 margin was set
    # on the old spread) and the spread over seeds was not re-measured. Three blocks train in test_nightly,
    # test_denoise_second and test_default_path (defaults), and on real photos in bench/quality.py.
    "train.trainable_blocks": 2,
}
SHORT = {**SMALL, "train.epochs": 2, "train.queries_per_epoch": 16}  # the extra runs: two quick epochs


@pytest.fixture(scope="module")
def train_home(tmp_path_factory):
    """A home with a small synthetic catalog ingested (raw photos: no denoise run)."""
    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from tasks.ingest import ingest_catalog

    root = tmp_path_factory.mktemp("train")
    catalog = generate_catalog(root / "shoes", TRAIN_PRODUCTS, noise_rate=0.1, seed=1, image_size=TRAIN_IMAGE_SIZE)
    home = root / "home"
    ingest_catalog(Settings.load(home=home), catalog, name="shoes")
    return home


@pytest.fixture(scope="module")
def trained(train_home):
    """split -> kmeans -> train, run as plain functions; returns (settings, run ids)."""
    from core.settings import Settings
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split
    from tasks.train import train_model

    settings = Settings.load(home=train_home, overrides=SMALL)
    torch.set_num_threads(2)
    split = make_split(settings)
    km = kmeans_init(settings, split)
    run = train_model(settings, split, kmeans_run_id=km)
    return settings, split, km, run


def _model_row(wh, run_id: str) -> dict:
    return wh.query("SELECT * FROM models WHERE run_id = ?", [run_id]).to_pylist()[0]


def _trained_model_and_photos(trained, overrides: dict):
    """(settings with ``overrides`` on SHORT, the trained model from its checkpoint, training PhotoSet, PhotoDataset)."""
    from core.settings import Settings
    from models.netvlad_model import load_checkpoint
    from photos.loading import PhotoDataset
    from training.data import load_photos
    from warehouse import open_warehouse

    settings, split, _, run = trained
    changed = Settings.load(home=settings.home, overrides={**SHORT, **overrides})
    wh = open_warehouse(changed)
    model, _ = load_checkpoint(changed.home / _model_row(wh, run)["path"])
    train_set = load_photos(wh, split, "raw", ("train",))
    photos = PhotoDataset(changed, train_set.paths, TRAIN_IMAGE_SIZE, model.backbone.mean, model.backbone.std)
    return changed, model, train_set, photos


def _epochs(wh, model_id: str) -> list[int]:
    rows = wh.query("SELECT epoch FROM train_metrics WHERE model_id = ? ORDER BY epoch", [model_id]).to_pylist()
    return [r["epoch"] for r in rows]


def test_split_is_product_level_and_deterministic(trained):
    from core.settings import Settings
    from tasks.split import make_split
    from warehouse import open_warehouse

    settings, split, _, _ = trained
    wh = open_warehouse(settings)
    again = make_split(settings)
    assert again == split  # the same content is the same split: reused, not written again
    a = wh.query("SELECT product_id, split FROM splits WHERE run_id = ? ORDER BY 1", [split]).to_pylist()
    assert len(a) == TRAIN_PRODUCTS and {r["split"] for r in a} == {"train", "val", "test"}
    reseeded = Settings.load(home=settings.home, overrides={**SMALL, "train.seed": 7})
    other = make_split(reseeded)  # another seed places the products elsewhere: a split of its own
    b = wh.query("SELECT product_id, split FROM splits WHERE run_id = ? ORDER BY 1", [other]).to_pylist()
    assert other != split and b != a and [r["product_id"] for r in b] == [r["product_id"] for r in a]
    assert make_split(settings) == split  # back to seed 0: the first split again (found by its content hash)


def test_kmeans_model_has_lineage(trained):
    from warehouse import lineage, open_warehouse

    settings, split, km, _ = trained
    wh = open_warehouse(settings)
    row = _model_row(wh, km)
    assert row["kind"] == "kmeans" and row["backbone"] == "efficientnet_lite0"
    stored = torch.load(settings.home / row["path"], weights_only=False)
    assert stored["centroids"].shape == (8, 1280) and stored["alpha"] > 0
    assert len(stored["image_ids"]) > 0
    assert split in [r["run_id"] for r in lineage(wh, km)]


# Measured with these settings (SMALL) over train.seed 0..10 (each seed its own split, k-means and mining;
# a one-off script, not run in CI), trained model vs its k-means init on tuples mined from the training photos
# by the init model (as below) and on the test split:
#   loss on the fixed tuples, trained / init:        0.005 .. 0.166   (seed 0: 0.005)
#   tuples ranked right (best positive nearer than every hard negative):
#                                     init 0.44 .. 0.61, trained 0.76 .. 0.99, gain +0.21 .. +0.54 (seed 0: +0.54)
#   test Recall@1 gain:               +1 .. +9 queries of 21 .. 51 (seed 0: +7 of 49); test mAP gain -0.011 .. +0.09
# No unit-sized setting found gives a held-out gain well outside seed noise (lr 3e-3: R@1 gain 0 on 2 of 8
# seeds; 6 epochs: early stopping ends 5 of 8 seeds after epoch 4 with the 3-epoch numbers), so the evidence of
# learning is asserted on the training tuples, with margins outside the measured spread; the held-out
# Recall@1 is kept as a no-regression guard (trained >= init), not as the proof.
MAX_LOSS_RATIO = 0.3  # measured at most 0.166
MIN_RANKING_GAIN = 0.15  # measured at least +0.21


def test_training_lowers_loss_and_beats_kmeans_init(trained):
    """Training works on what it optimises: on fixed tuples mined by the initial model, the trained model's loss
    is under MAX_LOSS_RATIO of the init's, and the fraction of tuples whose best positive is nearer than every
    hard negative rises by MIN_RANKING_GAIN (both far outside the spread over 11 seeds, see above). On the test
    split the trained model does not lose Recall@1 to its k-means init (a guard: the measured gain, +1 to +9
    queries, is within seed noise, so no margin is claimed)."""
    from models.loss import WeakTripletLoss
    from models.netvlad_model import NetVLADFromFrozenFeatures, load_checkpoint
    from photos.loading import TupleDataset
    from training.data import PhotoDataset, load_photos
    from training.fit import tuple_loss
    from training.mining import frozen_cache, mine_chunk, query_indices
    from warehouse import open_warehouse

    settings, split, _, run = trained
    wh = open_warehouse(settings)
    row = _model_row(wh, run)
    params, metrics = json.loads(row["params"]), json.loads(row["metrics"])
    trained_model, _ = load_checkpoint(settings.home / row["path"])
    init_model, _ = load_checkpoint(settings.home / params["init_path"])

    # fixed tuples mined with the initial model; the same tuples scored by both models. Both share the
    # frozen stages, so their cached output stands for the photos (equal: test_frozen_cache_is_exact).
    photos = load_photos(wh, split, "auto", ("train",))
    ds = PhotoDataset(settings, photos.paths, TRAIN_IMAGE_SIZE, init_model.backbone.mean, init_model.backbone.std)
    cache = frozen_cache(init_model, settings, ds, torch.device("cpu"))
    assert cache is not None
    init_net = NetVLADFromFrozenFeatures(init_model).eval()
    trained_net = NetVLADFromFrozenFeatures(trained_model).eval()
    tuples = mine_chunk(init_net, settings, photos, cache, query_indices(photos), torch.Generator().manual_seed(5),
                        torch.device("cpu"))
    batch = torch.stack([TupleDataset(cache, tuples)[i] for i in range(len(tuples))])
    crit = WeakTripletLoss(settings.train.margin)
    positives = settings.train.max_positives
    with torch.no_grad():
        before = float(tuple_loss(init_net, batch, crit, positives, torch.device("cpu")))
        after = float(tuple_loss(trained_net, batch, crit, positives, torch.device("cpu")))
        ranked_before, ranked_after = ranked_right(init_net, batch, positives), ranked_right(trained_net, batch, positives)
    assert len(tuples) >= 50
    assert after < before * MAX_LOSS_RATIO, (before, after)
    assert ranked_after >= ranked_before + MIN_RANKING_GAIN, (ranked_before, ranked_after)

    # test Recall@1: trained >= k-means init (a guard), measured by the evaluate step on the same test photos
    from tasks.evaluate import evaluate

    ev = evaluate(settings, row["model_id"])
    rows = {r["variant"]: r for r in wh.query("SELECT * FROM evaluations WHERE run_id = ?", [ev]).to_pylist()}
    assert set(rows) == {"imagenet", "kmeans_init", "trained"}
    assert rows["trained"]["recall_at_1"] >= rows["kmeans_init"]["recall_at_1"], rows  # guard, see docstring
    assert rows["trained"]["recall_at_1"] == pytest.approx(metrics["recall_at_1"])
    assert (settings.reports_dir / f"{ev}.md").exists() and (settings.reports_dir / f"{ev}.png").exists()

    # per-epoch metrics in the warehouse
    epochs = wh.query("SELECT epoch, loss, val_recall_at_1 FROM train_metrics WHERE model_id = ? ORDER BY epoch",
                      [row["model_id"]]).to_pylist()
    assert [e["epoch"] for e in epochs] == list(range(1, params["epochs_run"] + 1))
    assert all(math.isfinite(e["loss"]) for e in epochs)


def ranked_right(net, batch: torch.Tensor, positives: int) -> float:
    """Fraction of tuples (B x (1+P+N) x ...) whose nearest positive is nearer the query than every negative."""
    b, t = batch.shape[:2]
    desc = net(batch.flatten(0, 1)).float().view(b, t, -1)
    d = ((desc[:, 1:] - desc[:, :1]) ** 2).sum(-1)
    return float((d[:, :positives].min(1).values < d[:, positives:].min(1).values).float().mean())


def test_frozen_cache_is_exact(trained):
    """Feeding the cached frozen-stage output gives the same descriptors (and gradients) as photos."""
    from models.netvlad_model import NetVLADFromFrozenFeatures, load_checkpoint
    from warehouse import open_warehouse

    settings, _, _, run = trained
    model, _ = load_checkpoint(settings.home / _model_row(open_warehouse(settings), run)["path"])
    model.train()
    assert 0 < model.frozen_stages < len(model.backbone.blocks())
    x = torch.randn(3, 3, TRAIN_IMAGE_SIZE, TRAIN_IMAGE_SIZE)
    full = model(x)
    full.sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    cached = NetVLADFromFrozenFeatures(model)(model.frozen_features(x))
    cached.sum().backward()
    assert torch.allclose(full, cached, atol=1e-5)
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_flip_augmentation_trains_on_exactly_cached_mirrors(trained, monkeypatch):
    """``train.flip_augment``: the frozen-stage cache holds every photo and its mirror (each row equal to the frozen
    stages run on that image), and an epoch's tuples use both versions, seeded."""
    import training.fit as L
    from models.loss import WeakTripletLoss
    from models.netvlad_model import NetVLADFromFrozenFeatures
    from photos.loading import TupleDataset, mirror_some

    flip, model, train_set, photos = _trained_model_and_photos(trained, {"train.flip_augment": True})
    net, inputs = L.trainable(model, flip, photos, torch.device("cpu"), 1)
    n = len(photos)
    assert isinstance(net, NetVLADFromFrozenFeatures) and len(inputs) == 2 * n
    model.eval()
    with torch.no_grad():
        for i in (0, n - 1):
            assert torch.allclose(inputs[i], model.frozen_features(photos[i][None])[0], rtol=1e-4, atol=1e-4)
            mirrored = model.frozen_features(photos[i].flip(-1)[None])[0]
            assert torch.allclose(inputs[n + i], mirrored, rtol=1e-4, atol=1e-4)
            assert not torch.allclose(inputs[i], inputs[n + i], atol=1e-3)
    tuples = [[0, 1, 2, 3]] * 200
    a, b = (mirror_some(tuples, n, torch.Generator().manual_seed(3)) for _ in range(2))
    flipped = sum(j >= n for t in a for j in t)
    assert a == b and all(j in (k, k + n) for t, u in zip(tuples, a) for k, j in zip(t, u)) and 300 < flipped < 500
    fed = []

    def spy(dataset, epoch_tuples, augment=None):  # the tuples an epoch feeds
        fed.extend(epoch_tuples)
        return TupleDataset(dataset, epoch_tuples, augment)

    monkeypatch.setattr(L, "TupleDataset", spy)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss, _ = L.train_epoch(net, optimizer, WeakTripletLoss(0.1), flip, train_set, inputs, 0, torch.device("cpu"))
    assert math.isfinite(loss) and any(j >= n for t in fed for j in t) and any(j < n for t in fed for j in t)


def test_crop_colour_augmentation_trains_uncached_on_new_crops_of_the_photos(trained, monkeypatch):
    """``train.crop_colour_augment``: no frozen-stage cache (it would be inexact), and every epoch feeds tuples whose
    photos are new random crops / colours of the mined photos: same shape, pixels inside the photo's range,
    different on every draw; mining still sees the plain photos."""
    import training.fit as L
    from models.loss import WeakTripletLoss
    from models.netvlad_model import NetVLADFromFrozenFeatures
    from photos.loading import CropColour, TupleDataset

    aug, model, train_set, photos = _trained_model_and_photos(trained, {"train.crop_colour_augment": True})
    plain_net, _ = L.trainable(model, trained[0], photos, torch.device("cpu"), 1)
    net, inputs = L.trainable(model, aug, photos, torch.device("cpu"), 1)
    # the cache fits, yet is off
    assert isinstance(plain_net, NetVLADFromFrozenFeatures) and net is model and inputs is photos
    datasets = []

    def spy(dataset, epoch_tuples, augment=None):
        datasets.append(TupleDataset(dataset, epoch_tuples, augment))
        return datasets[-1]

    monkeypatch.setattr(L, "TupleDataset", spy)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss, _ = L.train_epoch(net, optimizer, WeakTripletLoss(0.1), aug, train_set, inputs, 0, torch.device("cpu"))
    assert math.isfinite(loss) and datasets and isinstance(datasets[0].augment, CropColour)
    fed, tuple_ = datasets[0], datasets[0].tuples[0]
    plain = torch.stack([photos[j] for j in tuple_])
    a, b = fed[0], fed[0]
    assert a.shape == b.shape == plain.shape and not torch.allclose(a, b) and not torch.allclose(a, plain)
    mean, std = fed.augment.mean, fed.augment.std
    pixels = a * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_cosine_schedule_trains_each_epoch_at_its_annealed_rate(trained):
    """``train.lr_schedule=cosine``: epoch e of E steps at lr * (1 + cos(pi e / E)) / 2 (half the rate mid-way,
    whatever rate the optimizer held, e.g. after a resume); ``constant`` (the default) keeps ``train.lr``; an unknown
    schedule is a one-line settings error."""
    import training.fit as L
    from core.errors import ShoesearchError
    from core.settings import Settings
    from models.loss import WeakTripletLoss

    cos, model, train_set, photos = _trained_model_and_photos(
        trained, {"train.lr_schedule": "cosine", "train.epochs": 4, "train.queries_per_epoch": 8})
    expected = [1, 0.853553, 0.5, 0.146447, 0]
    assert [L.epoch_lr(1.0, "cosine", e, 4) for e in range(5)] == pytest.approx(expected, abs=1e-6)
    assert L.epoch_lr(1e-4, "constant", 3, 4) == 1e-4 and Settings.load(home=cos.home).train.lr_schedule == "constant"
    with pytest.raises(ShoesearchError, match="lr_schedule"):
        Settings.load(home=cos.home, overrides={"train.lr_schedule": "step"})
    net, inputs = L.trainable(model, cos, photos, torch.device("cpu"), 1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=7.0)  # a stale rate
    rates = []
    real_step = optimizer.step
    optimizer.step = lambda *a, **k: (rates.append(optimizer.param_groups[0]["lr"]), real_step(*a, **k))[1]
    L.train_epoch(net, optimizer, WeakTripletLoss(0.1), cos, train_set, inputs, 2, torch.device("cpu"))
    assert rates and all(r == pytest.approx(cos.train.lr / 2) for r in rates)


def test_interrupted_training_resumes_from_last_epoch(trained, monkeypatch):
    """A run killed after epoch 1 leaves a checkpoint; the rerun does epoch 2 only, one metrics row each."""
    import tasks.train as T
    import training.fit as L
    from core.settings import Settings
    from warehouse import open_warehouse

    settings, split, km, _ = trained
    short = Settings.load(home=settings.home, overrides=SHORT)
    real_epoch, calls = L.train_epoch, []

    def dies_in_epoch_2(*args, **kwargs):
        epoch = args[6]
        calls.append(epoch)
        if epoch == 1:
            raise RuntimeError("killed")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(L, "train_epoch", dies_in_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        T.train_model(short, split, kmeans_run_id=km)
    assert calls == [0, 1]
    monkeypatch.setattr(L, "train_epoch", lambda *a, **k: (calls.append(a[6]), real_epoch(*a, **k))[1])
    run = T.train_model(short, split, kmeans_run_id=km)
    assert calls == [0, 1, 1]  # resumed at the second epoch (0-based 1), the first was not redone

    wh = open_warehouse(settings)
    row = _model_row(wh, run)
    assert _epochs(wh, row["model_id"]) == [1, 2]
    assert json.loads(row["params"])["epochs_run"] == 2
    failed = wh.query("SELECT count(*) AS n FROM runs WHERE step = 'train' AND status = 'failed'").column("n")[0]
    assert failed.as_py() == 1


def test_warm_start_from_a_trained_model(trained, monkeypatch):
    """``init_model_id``: training continues from that model's weights; k-means is not consulted."""
    import tasks.train as T
    from core.settings import Settings
    from models.netvlad_model import load_checkpoint
    from warehouse import open_warehouse

    settings, split, _, run = trained
    wh = open_warehouse(settings)
    parent = _model_row(wh, run)
    monkeypatch.setattr(T, "kmeans_model", lambda *a, **k: pytest.fail("k-means init used for a warm start"))
    short = Settings.load(home=settings.home, overrides={**SHORT, "train.epochs": 1})
    child = _model_row(wh, T.train_model(short, split, init_model_id=parent["model_id"]))

    assert child["parent_model_id"] == parent["model_id"] and child["model_id"] != parent["model_id"]
    start, _ = load_checkpoint(settings.home / json.loads(child["params"])["init_path"])
    parent_model, _ = load_checkpoint(settings.home / parent["path"])
    for (name, a), b in zip(start.state_dict().items(), parent_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _epochs(wh, child["model_id"]) == [1]


def test_train_flow_records_every_step(prefect_harness, trained, caplog):
    """The Prefect flow ``train``: split -> k-means -> train -> evaluate, with lineage back to the split; its run
    named ``train-<home>-<photos>`` and tagged with the home, the epochs and the outcome in its log."""
    from prefect.client.orchestration import get_client

    from flows.train import train_flow
    from warehouse import lineage, open_warehouse

    settings = trained[0]
    caplog.set_level(logging.INFO, logger="prefect.task_runs")  # the run loggers' lines, as the run's log gets them
    result = train_flow(home=str(settings.home), overrides={**SHORT, "train.epochs": 1, "train.kmeans_images": 16,
                                                          "train.kmeans_descriptors": 144})
    wh = open_warehouse(settings)
    # The flow run is named after what it does and its home, and tagged with the home (Prefect's own record).
    flow_run_id = wh.query("SELECT prefect_flow_run_id FROM runs WHERE run_id = ?", [result["train"]]).column(0)[0]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id.as_py())
    assert flow_run.name == f"train-{settings.home.name}-auto" and f"home:{settings.home.name}" in flow_run.tags
    # Each step's figures went to the run's log: the epoch's loss and validation Recall@1, why training stopped.
    logged = [r.getMessage() for r in caplog.records if r.name == "prefect.task_runs"]
    assert any(re.match(r"train: epoch 1/1: loss \d+\.\d{4}, val R@1 \d\.\d{3}", m) for m in logged), logged
    assert any(re.search(r"train \S+: ran its one epoch \(best val R@1 \d\.\d{3}\); model netvlad-\S+: test R@1", m)
               for m in logged), logged
    row = wh.query("SELECT kind, run_id FROM models WHERE model_id = ?", [result["model_id"]]).to_pylist()
    assert row == [{"kind": "netvlad", "run_id": result["train"]}]
    runs = {r["run_id"]: r["step"] for r in lineage(wh, result["evaluate"])}
    assert {result["split"]: "split", result["kmeans"]: "kmeans", result["train"]: "train"}.items() <= runs.items()
    variants = wh.query("SELECT variant FROM evaluations WHERE run_id = ?", [result["evaluate"]]).column("variant")
    assert sorted(variants.to_pylist()) == ["imagenet", "kmeans_init", "trained"]


def _run_with_spy(monkeypatch, settings, split, km):
    """train_model from k-means with ``train_epoch`` spied: returns (run id, [(net type, model weights) per epoch])."""
    import copy

    import tasks.train as T
    import training.fit as L
    from models.netvlad_model import NetVLADFromFrozenFeatures

    real_epoch, epochs = getattr(L.train_epoch, "real", L.train_epoch), []  # not an earlier spy

    def spy(net, *args, **kwargs):
        out = real_epoch(net, *args, **kwargs)
        model = net.model if isinstance(net, NetVLADFromFrozenFeatures) else net
        epochs.append((type(net).__name__, copy.deepcopy(model.state_dict())))
        return out

    spy.real = real_epoch
    monkeypatch.setattr(L, "train_epoch", spy)
    return T.train_model(settings, split, kmeans_run_id=km), epochs


def test_uncached_training_matches_the_cached_path(trained, monkeypatch):
    """``train.frozen_cache_mb=0`` (the one value changed: it selects the uncached path) decodes photos and runs the
    frozen stages in every step; it trains the same model as the default cached path (measured: bit-identical
    weights, loss and test metrics after one epoch), so a bug in either input path shows as a difference here.
    Settings: SHORT with one epoch (16 queries), for time."""
    from core.settings import Settings
    from models.netvlad_model import load_checkpoint
    from warehouse import open_warehouse

    settings, split, km, _ = trained
    wh = open_warehouse(settings)
    results = {}
    for name, extra in (("cached", {}), ("uncached", {"train.frozen_cache_mb": 0})):
        run_settings = Settings.load(home=settings.home, overrides={**SHORT, "train.epochs": 1, **extra})
        run, epochs = _run_with_spy(monkeypatch, run_settings, split, km)
        row = _model_row(wh, run)
        loss = wh.query("SELECT loss FROM train_metrics WHERE model_id = ?", [row["model_id"]]).column(0).to_pylist()
        results[name] = (epochs, loss, json.loads(row["metrics"]), load_checkpoint(settings.home / row["path"])[0])
    assert Settings.load(home=settings.home).train.frozen_cache_mb > 0  # the default is the cached path
    assert [kind for kind, _ in results["cached"][0]] == ["NetVLADFromFrozenFeatures"]
    assert [kind for kind, _ in results["uncached"][0]] == ["NetVLADModel"]  # photos in, no cache
    (_, loss_c, metrics_c, model_c), (_, loss_u, metrics_u, model_u) = results["cached"], results["uncached"]
    assert len(loss_u) == 1 and math.isfinite(loss_u[0]) and loss_u == pytest.approx(loss_c, rel=1e-5)
    assert metrics_u == pytest.approx(metrics_c, abs=1e-5)
    for (name, a), b in zip(model_c.state_dict().items(), model_u.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    epoch_c, epoch_u = results["cached"][0][0][1], results["uncached"][0][0][1]  # the weights after the epoch
    for (name, a), b in zip(epoch_c.items(), epoch_u.values()):  # (kept or not: the start may stay best)
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_early_stopping_keeps_the_best_epoch(trained, monkeypatch, capsys):
    """``train.patience`` at its default (3) with ``train.epochs`` at its default (10): validation Recall@1 is
    scripted (the real one plateaus after epoch 1 at this size, which would test the rule on one pattern only):
    the starting model scores 0.2, then best at epoch 2, a Recall@1 tie with lower mAP at 3 (mAP breaks ties: not
    a gain), lower at 4, an exact tie at 5: three epochs without gain, so training stops after epoch 5 of 10, and
    the model kept is epoch 2's.
    Settings: SHORT's 16 queries per epoch, for time."""
    import training.fit as L
    from core.settings import Settings
    from models.netvlad_model import load_checkpoint
    from warehouse import open_warehouse

    settings, split, km, _ = trained
    overrides = {k: v for k, v in SHORT.items() if k != "train.epochs"}
    run_settings = Settings.load(home=settings.home, overrides=overrides)
    assert (run_settings.train.patience, run_settings.train.epochs) == (3, 10)  # the defaults
    scripted = iter([(0.2, 0.1), (0.4, 0.3), (0.6, 0.5), (0.6, 0.4), (0.5, 0.6), (0.6, 0.5)])  # then gains
    real_recall = L.recall

    def val_recall(model, s, photo_set, device):
        if set(photo_set.splits) != {"val"}:
            return real_recall(model, s, photo_set, device)  # the test split: measured
        r1, ap = next(scripted, (0.9, 0.9))
        return {"queries": len(photo_set), "recall_at_1": r1, "recall_at_5": r1, "recall_at_10": r1, "mean_ap": ap}

    monkeypatch.setattr(L, "recall", val_recall)
    capsys.readouterr()
    run, epochs = _run_with_spy(monkeypatch, run_settings, split, km)
    wh = open_warehouse(settings)
    row = _model_row(wh, run)
    params = json.loads(row["params"])
    assert params["epochs_run"] == len(epochs) == 5
    # Said, not left at 5/10: stderr (not a terminal here, so plain lines) has each epoch and why it stopped.
    err = capsys.readouterr().err.splitlines()
    assert re.match(r"train: 160/160 queries \(100%\) · \S+ elapsed · stopped early at epoch 5: no gain for 3 epochs "
                    r"\(best val R@1 0.600\)", [line for line in err if line.startswith("train: ")][-1]), err
    assert any(line.startswith("train: epoch 2/10: loss ") and "val R@1 0.600 (new best)" in line for line in err)
    assert any(line.startswith("train: epoch 4/10: loss ") and "val R@1 0.500 (best 0.600, no gain for 2)" in line
               for line in err), err
    message = wh.query("SELECT message FROM runs WHERE run_id = ?", [run]).column(0)[0].as_py()
    assert message.startswith("stopped early at epoch 5: no gain for 3 epochs (best val R@1 0.600); model netvlad-")
    assert params["best_val_recall_at_1"] == pytest.approx(0.6)
    metrics = wh.query("SELECT epoch, val_recall_at_1 FROM train_metrics WHERE model_id = ? ORDER BY epoch",
                       [row["model_id"]]).to_pylist()
    assert [(m["epoch"], round(m["val_recall_at_1"], 6)) for m in metrics] == [(1, 0.4), (2, 0.6), (3, 0.6), (4, 0.5), (5, 0.6)]
    kept, _ = load_checkpoint(settings.home / row["path"])
    for epoch, (_, weights) in enumerate(epochs, start=1):
        same = all(torch.equal(a, b) for a, b in zip(weights.values(), kept.state_dict().values()))
        assert same == (epoch == 2), epoch  # epoch 2's weights, and no other epoch's (training moved them)


def test_training_that_never_beats_its_start_keeps_the_starting_model(trained, monkeypatch):
    """Validation Recall@1 scripted so that no epoch beats the starting model (0.7, then 0.5 each epoch): after
    ``patience`` (3) epochs training stops and the published model is the starting model (the k-means init,
    whitening fitted), not the last or a worse epoch."""
    import training.fit as L
    from core.settings import Settings
    from models.netvlad_model import load_checkpoint
    from warehouse import open_warehouse

    settings, split, km, _ = trained
    run_settings = Settings.load(home=settings.home, overrides={k: v for k, v in SHORT.items() if k != "train.epochs"})
    scripted = iter([(0.7, 0.6)])
    real_recall = L.recall

    def val_recall(model, s, photo_set, device):
        if set(photo_set.splits) != {"val"}:
            return real_recall(model, s, photo_set, device)
        r1, ap = next(scripted, (0.5, 0.4))
        return {"queries": len(photo_set), "recall_at_1": r1, "recall_at_5": r1, "recall_at_10": r1, "mean_ap": ap}

    monkeypatch.setattr(L, "recall", val_recall)
    run, epochs = _run_with_spy(monkeypatch, run_settings, split, km)
    row = _model_row(open_warehouse(settings), run)
    params = json.loads(row["params"])
    assert params["epochs_run"] == len(epochs) == 3 and params["start_val_recall_at_1"] == pytest.approx(0.7)
    kept, _ = load_checkpoint(settings.home / row["path"])
    init, _ = load_checkpoint(settings.home / params["init_path"])
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), init.state_dict().values()))
    assert not any(all(torch.equal(a, b) for a, b in zip(w.values(), kept.state_dict().values())) for _, w in epochs)


def test_a_diverged_training_is_refused_before_its_metrics_or_model_are_committed(trained):
    """Issue 25 item 10: ``train.lr=1e30`` (in range: a rate has no natural ceiling) makes the first epoch's loss or
    weights NaN; the run fails with one line before its ``train_metrics`` row, checkpoint or model is written, where
    it used to commit NaN losses and publish the model."""
    import tasks.train as T
    from core.finite import NotFinite
    from core.settings import Settings
    from warehouse import open_warehouse

    settings, split, km, _ = trained
    wh = open_warehouse(settings)

    def counts() -> list[int]:
        return [wh.query(f"SELECT count(*) FROM {t}").column(0)[0].as_py() for t in ("train_metrics", "models")]

    before, files = counts(), sorted((settings.home / "models").glob("*.pt"))
    diverging = Settings.load(home=settings.home, overrides={**SHORT, "train.epochs": 1, "train.lr": 1e30})
    with pytest.raises(NotFinite, match=r"^train: epoch 1 (loss|validation|weights)\b.* values are not finite .*"
                                        r"refused before committing \(training diverged: lower train.lr\)$"):
        T.train_model(diverging, split, kmeans_run_id=km)
    assert counts() == before and sorted((settings.home / "models").glob("*.pt")) == files
    last = wh.query("SELECT status, message FROM runs WHERE step = 'train' ORDER BY started_at DESC LIMIT 1"
                    ).to_pylist()
    assert last[0]["status"] == "failed" and "not finite" in last[0]["message"]


def test_models_trained_on_splits_of_the_same_content_compare(trained):
    """Two ``train`` commands used to write two split runs that placed every product identically, and
    ``evaluate --compare`` refused them as "trained on another split". A split run with the same content (written
    here as an older home has it: another run id, no content hash) is the same split: the models compare."""
    from core.settings import Settings
    from tasks.evaluate import _same_split, evaluate
    from tasks.train import model_id_of_run, train_model
    from warehouse import open_warehouse, start_run

    settings, split, km, run = trained
    wh = open_warehouse(settings)
    rows = wh.query("SELECT product_id, split, seed FROM splits WHERE run_id = ?", [split]).to_pylist()
    with start_run(wh, step="split", params={"seed": 0}) as copy:
        copy.write("splits", rows)
    short = Settings.load(home=settings.home, overrides={**SHORT, "train.epochs": 1})
    other = model_id_of_run(settings, train_model(short, copy.run_id, kmeans_run_id=km))
    first = model_id_of_run(settings, run)
    evaluated = evaluate(short, first, compare=[other])
    models = wh.query("SELECT DISTINCT model_id FROM evaluations WHERE run_id = ? AND variant LIKE 'trained%'",
                      [evaluated]).column(0).to_pylist()
    assert {first, other} <= set(models), models
    moved = [{**r, "split": "train" if r["split"] == "test" else "test"} for r in rows]
    with start_run(wh, step="split", params={"seed": 0}) as different:
        different.write("splits", moved)
    assert _same_split(wh, split, copy.run_id) and not _same_split(wh, split, different.run_id)  # content decides


def test_embeddings_name_the_model_run_that_made_them(trained):
    """``lineage --image``: the embed run of a trained model's vectors names the train run (and so the split,
    k-means and photos behind it); an ImageNet embedding says it has no training run; an embed run with nothing
    to do names the runs whose vectors stand, so an index built on it names the runs that wrote its vectors."""
    from embedding.vectors import embed_images
    from tasks.train import model_id_of_run
    from warehouse import lineage, open_warehouse, upstream_of

    settings, split, km, run = trained
    wh = open_warehouse(settings)
    some = wh.query("SELECT image_id FROM images_current WHERE status = 'ok' ORDER BY image_id LIMIT 3"
                    ).column(0).to_pylist()
    model_id = model_id_of_run(settings, run)
    embedded = embed_images(settings, model_id, image_ids=some)
    params = json.loads(wh.query("SELECT parameters FROM runs WHERE run_id = ?", [embedded]).column(0)[0].as_py())
    assert params["model_run_id"] == run and run in params["model_source"]
    steps = {r["run_id"]: r["step"] for r in upstream_of(wh, "embeddings", "image_id", some[0])}
    assert steps[embedded] == "embed" and steps[run] == "train" and steps[split] == "split" and steps[km] == "kmeans"
    again = embed_images(settings, model_id, image_ids=some)  # nothing new: the vectors of the first run stand
    assert again != embedded and embedded in [r["run_id"] for r in lineage(wh, again)]
    imagenet = embed_images(settings, None, image_ids=some)
    params = json.loads(wh.query("SELECT parameters FROM runs WHERE run_id = ?", [imagenet]).column(0)[0].as_py())
    assert params["model_run_id"] is None and "ImageNet-pretrained" in params["model_source"]
