"""The configuration users run: default loader workers inside Prefect flows, one-line errors from flow
commands, and ``--set`` reaching every step through the real ``shoesearch`` entry point.

Before the forkserver loader, every flow that embedded photos with the default ``num_workers`` died in
its DataLoader workers ("exited unexpectedly with exit code 1"): these tests run those defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def shoesearch(*args: str, home: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real entry point, as a user runs it (its own process, its own Prefect client)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SHOESEARCH_")}
    full_env.update({"TQDM_DISABLE": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "shoesearch", "--home", str(home), *args], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def test_defaults_use_loader_workers():
    """The point of this file: the defaults start worker processes (so the tests below exercise them)."""
    s = Settings.load(home="/nonexistent-home-for-defaults")
    assert s.embed.num_workers >= 2 and s.train.num_workers >= 2


@pytest.mark.e2e
def test_embedding_flow_with_default_workers_embeds_every_photo(prefect_harness, ingested_settings):
    """A real Prefect flow wrapping the embed task, ``embed.num_workers`` at its default (2 workers)."""
    from prefect import flow

    from tasks.embed import embed_images_task
    from warehouse import open_warehouse

    ingested_settings.set("embed.image_size", 96)  # small photos; workers stay at the default

    @flow(name="embed-with-workers")
    def embed_flow():
        return embed_images_task(ingested_settings, None)

    run_id = embed_flow()
    wh = open_warehouse(ingested_settings)
    ok = wh.query("SELECT count(DISTINCT sha1) AS n FROM images_current WHERE status = 'ok'").to_pylist()[0]["n"]
    row = wh.query("SELECT status, parameters FROM runs WHERE run_id = ?", [run_id]).to_pylist()[0]
    assert row["status"] == "success"
    assert json.loads(row["parameters"])["settings"]["embed.num_workers"] == 2
    assert wh.query("SELECT count(*) AS n FROM embeddings WHERE run_id = ?", [run_id]).to_pylist()[0]["n"] == ok > 0


def test_a_failing_photo_in_a_worker_names_the_photo_and_the_cause(ingested_settings):
    """A training photo that cannot be decoded, read by a worker process: one line with its path and cause."""
    import torch

    from core.errors import ShoesearchError
    from training.data import PhotoDataset, embed_dataset

    root = ingested_settings.images_dir
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:12]
    broken = root / paths[7]
    broken.write_bytes(b"this is not a JPEG")
    ds = PhotoDataset(ingested_settings, paths, 64, [0.5] * 3, [0.5] * 3)
    with pytest.raises(ShoesearchError) as err:
        embed_dataset(lambda x: x.mean(dim=(2, 3)), ds, 4, 2, torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message and "worker" in message
    assert str(broken) in message and "UnidentifiedImageError" in message


@pytest.mark.parametrize("args, env, expected", [
    (["denoise"], {}, "no product photos yet"),
    (["denoise", "--threshold", "3"], {}, "must be in [0, 2]"),
    (["denoise"], {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "cannot reach the Prefect server"),
    (["denoise"], {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0"}, "temporary server did not start"),
    (["train"], {}, "needs at least 3 products"),
], ids=["empty-home", "bad-threshold", "dead-prefect-server", "server-start-timeout", "train-empty-home"])
@pytest.mark.e2e
def test_flow_commands_fail_with_one_line(tmp_path, prefect_api_url, args, env, expected):
    """User errors and Prefect trouble: a non-zero exit and one line on stderr, no traceback wall.
    (User-error cases use the session's Prefect server through PREFECT_API_URL, as an operator would.)"""
    home = tmp_path / "home"
    prefect_trouble = "PREFECT" in "".join(env)
    if not prefect_trouble:
        env = {**env, "PREFECT_API_URL": prefect_api_url}
    if "--threshold" in args or prefect_trouble:  # these need photos to get as far as Prefect
        subprocess.run([sys.executable, "-m", "shoesearch", "--home", str(home), "ingest",
                        str(_tiny_catalog(tmp_path))], check=True, capture_output=True, cwd=REPO)
    done = shoesearch(*args, home=home, env={"PREFECT_HOME": str(tmp_path / "prefect"), **env}, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert len(lines) == 1 and lines[0].startswith("shoesearch: error:") and expected in lines[0], done.stderr


def _tiny_catalog(tmp_path: Path) -> Path:
    from demo_shop.synthetic import generate_catalog

    return generate_catalog(tmp_path / "tiny", 3, noise_rate=0.0, seed=1, image_size=64)


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The session's Prefect server, for subprocesses (``PREFECT_API_URL`` set -> that server is used)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


SMALL_TRAIN = [  # tiny but real training, as --set options (the values under test are the --set ones)
    "train.image_size=72", "train.clusters=4", "train.descriptor_dim=16", "train.kmeans_descriptors=200",
    "train.kmeans_images=20", "train.kmeans_iterations=3", "train.batch_size=4", "train.negatives_pool=16",
    "train.hard_negatives=2", "train.max_positives=2", "train.device=cpu", "embed.image_size=72",
]


def _sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _runs_since(home: Path, seen: set[str]) -> list[dict]:
    from warehouse import open_warehouse

    rows = open_warehouse(Settings.load(home=home)).query("SELECT run_id, step, status, parameters FROM runs").to_pylist()
    return [r for r in rows if r["run_id"] not in seen]


@pytest.mark.e2e
def test_set_and_environment_reach_every_step(tmp_path, ingested_home, prefect_api_url):
    """Each CLI command through the real entry point with a ``--set`` (and one list from the environment,
    as a JSON list): every run the command wrote recorded that value in its settings, and its behaviour
    shows it (denoise threshold, epochs trained, results returned). The Prefect flow runs land in the
    server named by PREFECT_API_URL."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(ingested_home, home)
    env = {"PREFECT_API_URL": prefect_api_url, "SHOESEARCH_CRAWL__KEYWORDS": '["靴子", "凉鞋"]'}
    seen = {r["run_id"] for r in _runs_since(home, set())}  # the ingest that built the home
    photo = next(p for p in sorted((home / "images").rglob("*.jpg")))
    commands = [
        (["embed"], "embed.image_size=72", {"embed"}),
        (["denoise"], "denoise.threshold=0.95", {"embed", "denoise"}),
        (["train"], "train.epochs=1", {"split", "kmeans", "train", "evaluate"}),
        (["evaluate"], "train.margin=0.2", {"evaluate"}),
        (["index"], "index.exact_max_vectors=100000", {"embed", "index"}),
    ]
    for args, pair, steps in commands:
        done = shoesearch(*_sets(*SMALL_TRAIN, pair), *args, home=home, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        new = _runs_since(home, seen)
        seen |= {r["run_id"] for r in new}
        assert steps <= {r["step"] for r in new}, (args, [r["step"] for r in new])
        key, value = pair.split("=")
        for run in new:
            recorded = json.loads(run["parameters"])["settings"]
            assert str(recorded[key]) == value and recorded["crawl.keywords"] == ["靴子", "凉鞋"], (args, run["step"])
    from warehouse import open_warehouse

    wh = open_warehouse(Settings.load(home=home))
    assert [round(r["threshold"], 4) for r in wh.query("SELECT DISTINCT threshold FROM denoise").to_pylist()] == [0.95]
    trained = wh.query("SELECT params FROM models WHERE kind = 'netvlad'").to_pylist()
    assert [json.loads(r["params"])["epochs_run"] for r in trained] == [1]
    done = shoesearch(*_sets("index.search_k=2"), "search", str(photo), "--format", "json", home=home, env=env)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 2
    _assert_flow_runs_in_server(wh)


def _assert_flow_runs_in_server(wh) -> None:
    """The steps' Prefect flow run ids exist in the PREFECT_API_URL server (not a temporary one)."""
    import asyncio

    from prefect.client.orchestration import get_client

    ids = {r["prefect_flow_run_id"] for r in wh.query(
        "SELECT DISTINCT prefect_flow_run_id FROM runs WHERE prefect_flow_run_id IS NOT NULL").to_pylist()}
    assert ids

    async def names():
        async with get_client() as client:
            return {(await client.read_flow((await client.read_flow_run(i)).flow_id)).name for i in ids}

    assert asyncio.run(names()) == {"denoise", "train"}  # the commands that run flows (embed/evaluate/index: none)


@pytest.mark.e2e
def test_nightly_command_carries_set_into_every_step(tmp_path, make_shop, prefect_api_url):
    """``shoesearch nightly --site`` with ``--set``: crawl (a subprocess of its own), embed, denoise
    (a subflow), split, k-means, train, evaluate and index all ran with the values given, at the
    default loader workers; Prefect's INFO lines stay off the terminal."""
    from tests.fixtures_crawl import FAST_CRAWL

    shop = make_shop(n=12)
    home = tmp_path / "home"
    fast = [f"{k}={v}" for k, v in FAST_CRAWL.items()]
    done = shoesearch(*_sets(*fast, *SMALL_TRAIN, "train.epochs=1", "crawl.max_pages=2", "schedule.task_retries=0"),
                      "nightly", "--site", shop.url, home=home, env={"PREFECT_API_URL": prefect_api_url})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| INFO" not in done.stderr and "| INFO" not in done.stdout
    runs = _runs_since(home, set())
    assert {"crawl", "embed", "denoise", "split", "kmeans", "train", "evaluate", "index"} <= {r["step"] for r in runs}
    for run in runs:
        recorded = json.loads(run["parameters"])["settings"]
        assert (recorded["crawl.max_pages"], recorded["train.epochs"], recorded["embed.num_workers"]) == (2, 1, 2), run
