"""Issue 27: multi-process training (DDP) verified on CPU: torchrun starts 2 gloo ranks of the same code that
runs NCCL on GPUs (``tasks.train.launch_ddp`` / ``rank_main``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_train import SHORT, train_home  # noqa: F401 - the small ingested catalog (a fixture)

pytestmark = pytest.mark.e2e
DDP = {**SHORT, "train.processes": 2, "train.num_workers": 0, "train.queries_per_epoch": 15}  # 15: uneven shards


@pytest.fixture(scope="module")
def split_and_kmeans(train_home):  # noqa: F811 - the fixture imported above
    from core.settings import Settings
    from tasks.kmeans import kmeans_init
    from tasks.split import make_split

    settings = Settings.load(home=train_home, overrides=SHORT)
    split = make_split(settings)
    return settings, split, kmeans_init(settings, split)


def _model(wh, run_id: str) -> dict:
    return wh.query("SELECT * FROM models WHERE run_id = ?", [run_id]).to_pylist()[0]


def test_two_gloo_ranks_write_the_models_row_one_process_would(split_and_kmeans):
    """15 queries over 2 ranks (uneven): both take the same number of steps (no hang); rank 0 alone writes one run,
    one metrics row per epoch and one ``models`` row with the fields, lineage and parameters a single process
    writes (``world_size`` aside), scored on the test photos."""
    from core.settings import Settings
    from tasks.train import train_model
    from warehouse import open_warehouse

    base, split, km = split_and_kmeans
    wh = open_warehouse(base)
    runs_before = wh.query("SELECT count(*) AS n FROM runs WHERE step = 'train'").to_pylist()[0]["n"]
    ddp_run = train_model(Settings.load(home=base.home, overrides=DDP), split, kmeans_run_id=km)
    one_run = train_model(Settings.load(home=base.home, overrides={**DDP, "train.processes": 1}), split,
                          kmeans_run_id=km)
    assert wh.query("SELECT count(*) AS n FROM runs WHERE step = 'train'").to_pylist()[0]["n"] == runs_before + 2
    ddp, one = _model(wh, ddp_run), _model(wh, one_run)
    assert set(ddp) == set(one) and ddp["kind"] == one["kind"] == "netvlad"
    assert ddp["parent_model_id"] == one["parent_model_id"] and ddp["backbone"] == one["backbone"]
    p_ddp, p_one = json.loads(ddp["params"]), json.loads(one["params"])
    assert (p_ddp.pop("world_size"), p_one.pop("world_size")) == (2, 1)
    assert (p_ddp["train"].pop("processes"), p_one["train"].pop("processes")) == (2, 1)
    assert set(p_ddp) == set(p_one) and p_ddp["train"] == p_one["train"] and p_ddp["dim"] == p_one["dim"]
    metrics = json.loads(ddp["metrics"])
    assert metrics["split"] == "test" and 0.0 <= metrics["recall_at_1"] <= 1.0
    epochs = [r["epoch"] for r in wh.query("SELECT epoch FROM train_metrics WHERE model_id = ? ORDER BY epoch",
                                           [ddp["model_id"]]).to_pylist()]
    assert epochs == list(range(1, p_ddp["epochs_run"] + 1))  # one row per epoch: only rank 0 wrote


def _ranks_of(home) -> list[int]:
    """Processes running a training rank for ``home`` (``python -m tasks.train HOME ...``)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if b"tasks.train" in cmd and str(home).encode() in cmd:
            found.append(int(proc.name))
    return found


def test_a_killed_ddp_run_resumes_from_its_last_epoch(split_and_kmeans, tmp_path):
    """The training command is killed (SIGKILL) after its first epoch's checkpoint: no rank trains on behind it,
    and the rerun (same inputs) starts at the second epoch on both ranks and finishes."""
    from core.settings import Settings
    from tasks.train import train_model
    from warehouse import open_warehouse

    base, split, km = split_and_kmeans
    overrides = {**DDP, "train.epochs": 3, "train.patience": 5, "train.seed": 7}  # its own checkpoint key
    code = ("import sys, json; from core.settings import Settings; from tasks.train import train_model; "
            "a = json.loads(sys.argv[1]); train_model(Settings.load(home=a['home'], overrides=a['o']), a['s'], "
            "kmeans_run_id=a['k'])")
    args = json.dumps({"home": str(base.home), "o": overrides, "s": split, "k": km})
    proc = subprocess.Popen([sys.executable, "-c", code, args], start_new_session=True)
    checkpoints = base.models_dir / "checkpoints"
    deadline = time.time() + 240
    while not any(checkpoints.glob("*/last.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before its first epoch's checkpoint"
    os.kill(proc.pid, signal.SIGKILL)  # the command only: torchrun and the ranks must follow it
    proc.wait()
    time.sleep(2)
    assert not _ranks_of(base.home), "a rank outlived the killed training command"
    run = train_model(Settings.load(home=base.home, overrides=overrides), split, kmeans_run_id=km)
    wh = open_warehouse(base)
    model_id = _model(wh, run)["model_id"]
    epochs = [r["epoch"] for r in wh.query("SELECT epoch FROM train_metrics WHERE run_id = ? ORDER BY epoch",
                                           [run]).to_pylist()]
    assert epochs and epochs[0] >= 2 and epochs[-1] == 3, epochs  # resumed, not redone
    assert not any(checkpoints.glob("*/last.pt")) and model_id
