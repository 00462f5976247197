"""Defaults exercised through their real entry points: Prefect task retries in the nightly flow
(``schedule.task_retries`` / ``schedule.retry_delay_s``), the ``crawl-summary`` and ``nightly`` artifacts as the
Prefect server holds them, ``shoesearch api`` and ``shoesearch serve-flows`` as real processes, and a nightly
run that failed at its index step resumed by the next run without retraining.

Every flow runs on a tiny demo shop with tiny training settings (as ``tests/test_nightly.py``), so each
test takes seconds; Prefect state is read back from the session's test server (``prefect_harness``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.fixtures_crawl import FAST_CRAWL
from tests.fixtures_search import free_port

pytestmark = pytest.mark.e2e  # nightly Prefect flows over a live shop: outside the fast loop

BIN = Path(sys.executable).parent
N_PRODUCTS = 10  # of the session's 40-product shop catalog: 4 train / 6 test with SPLIT_FRACTIONS
SPLIT_FRACTIONS = "0.4;0.1;0.5"  # test-heavy: enough test products for an evaluation on 10 products
IMAGE_SIZE = 64  # tiny photos: the wiring, not the pixels, is under test
# As tests/test_nightly.py's NIGHTLY_SETTINGS, without its schedule.* values: the retry settings stay at their
# defaults unless a test says otherwise.
TINY = {
    **FAST_CRAWL,
    "crawl.keywords": "鞋", "crawl.categories": "",
    "embed.image_size": IMAGE_SIZE, "embed.batch_size": 32,
    "train.image_size": IMAGE_SIZE, "train.clusters": 4, "train.descriptor_dim": 16,
    "train.kmeans_descriptors": 200, "train.kmeans_images": 20, "train.kmeans_iterations": 3,
    "train.epochs": 1, "train.batch_size": 8, "train.negatives_pool": 8, "train.hard_negatives": 2,
    "train.max_positives": 2, "train.cache_refresh_queries": 64, "train.device": "cpu",
    "train.split_fractions": SPLIT_FRACTIONS,
    "embed.num_workers": 0, "train.num_workers": 0,  # photos decoded in-process: no worker start-up per step
}
# The one value changed for the retry tests: the default 60 s would make the nightly idle for four minutes
# (two crawl and two index retries). 1 s is still ten times what the test's stand-in for "the site recovers"
# needs to bring the shop up (< 0.1 s), and long enough to see that a retry waits for it.
RETRY_DELAY_S = 1.0


# --- helpers -----------------------------------------------------------------------------------------------


def prefect_client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def wait_for(what: str, probe, timeout: float = 60, every: float = 0.2):
    """``probe()`` until it returns something truthy (exceptions count as not yet); that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - not there yet
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


def task_runs(flow_run_id) -> list:
    """The task runs of one flow run (not of its subflows), as the Prefect server holds them."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_client() as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def artifact(flow_run_id, key: str):
    """The one artifact with ``key`` that ``flow_run_id`` published, as the Prefect server holds it."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    def read():
        with prefect_client() as client:
            return client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    found = wait_for(f"artifact {key!r} of flow run {flow_run_id}", read, timeout=20)
    assert len(found) == 1, found
    return found[0]


def dead_url() -> tuple[str, int]:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}", port


def cli_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOESEARCH_", "PREFECT_API_URL"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    return {**env, **extra}


def stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 30) -> tuple[int, str]:
    """Signal ``proc`` as Ctrl-C (or ``sig``) would; (exit status, its stderr)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"{proc.args[:4]} did not stop within {timeout} s of {sig!r}:\n{err[-3000:]}")
    return proc.returncode, err


def warehouse(home: Path):
    from core.settings import Settings
    from warehouse import open_warehouse

    return open_warehouse(Settings.load(home=home, overrides=TINY))


def runs_of(home: Path, step: str) -> list[dict]:
    return warehouse(home).query("SELECT run_id, status, message FROM runs WHERE step = ? ORDER BY started_at",
                                 [step]).to_pylist()


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_products(shop_catalog):
    from demo_shop.server import load_catalog

    return load_catalog(shop_catalog)[:N_PRODUCTS]


@pytest.fixture(scope="module")
def two_nights(prefect_harness, tmp_path_factory, shop_products):
    """Two runs of the same nightly on one home, with the retry settings at their defaults but RETRY_DELAY_S.

    Night 1: the site is down for the crawl's first two attempts and up for the third (a thread stands in for
    the site recovering: it starts the demo shop on the dead port as soon as the second failed attempt has
    written its summary, i.e. during the retry delay); later the index step fails on every attempt, because
    the home's ``indexes`` path is a file (a wrong mount, a full disk: no index directory can be made). Night 2
    reruns it once the path is fixed. Yields a dict: home, the two final flow-run states, the crawl summaries
    seen when the shop started, and the ``runs`` rows after night 1.
    """
    from demo_shop.server import DemoShop
    from flows.nightly import nightly

    home = tmp_path_factory.mktemp("two-nights") / "home"
    home.mkdir()
    blocker = home / "indexes"
    blocker.write_text("not a directory")
    site, port = dead_url()
    summaries = home / "crawl" / "runs"
    out: dict = {"home": home}
    done = threading.Event()

    def recover():
        while len(list(summaries.glob("*.json"))) < 2:
            if done.wait(0.02):
                return  # night 1 ended without two failed attempts: the site never comes up
        out["seen"] = sorted(summaries.glob("*.json"))
        out["shop"] = DemoShop(shop_products, port=port, page_size=10).start()

    recoverer = threading.Thread(target=recover, name="site-recovers", daemon=True)
    recoverer.start()
    overrides = {**TINY, "schedule.retry_delay_s": RETRY_DELAY_S}
    try:
        out["first"] = nightly(site=site, home=str(home), overrides=overrides, return_state=True)
        done.set()
        recoverer.join(timeout=10)
        out["runs_after_first"] = warehouse(home).query(
            "SELECT step, run_id, status, message FROM runs ORDER BY started_at").to_pylist()
        if blocker.is_file():
            blocker.unlink()
        out["second"] = nightly(site=site, home=str(home), overrides=overrides, return_state=True)
        yield out
    finally:
        if "shop" in out:
            out["shop"].stop()


def history(task_run) -> list:
    """The states of a finished task run, oldest first, once the server has recorded its final one."""
    def read():
        with prefect_client() as client:
            states = client.read_task_run_states(task_run.id)
        return states if states and states[-1].is_final() else None

    return sorted(wait_for(f"the final state of task run {task_run.name}", read, timeout=30),
                  key=lambda s: s.timestamp)


def the_task_run(flow_run_id, task: str):
    """The one run of ``task`` in a flow run (Prefect names task runs ``<task name>-<3 characters>``)."""
    every = task_runs(flow_run_id)
    runs = [t for t in every if t.name.rsplit("-", 1)[0] == task]
    assert len(runs) == 1, (task, [t.name for t in every])
    return runs[0]


def assert_retried_after_the_delay(states: list, retries: int) -> None:
    waits = [s for s in states if s.name == "AwaitingRetry"]
    assert len(waits) == retries, [s.name for s in states]
    for wait in waits:
        delay = wait.state_details.scheduled_time - wait.timestamp
        assert abs(delay - timedelta(seconds=RETRY_DELAY_S)) < timedelta(seconds=0.5), delay
        after = [s for s in states if s.timestamp > wait.timestamp and s.is_running()]
        assert after, [s.name for s in states]  # a retry attempt ran ...
        assert after[0].timestamp - wait.timestamp >= timedelta(seconds=RETRY_DELAY_S - 0.2)  # ... after the delay


# --- 1. Prefect task retries ---------------------------------------------------------------------------------


def test_nightly_steps_are_retried_after_the_delay_and_a_recovered_crawl_succeeds(two_nights):
    """``schedule.task_retries`` at its default (2): the site is down for night 1's first two crawl attempts,
    so only the third, the last the default allows, can succeed (with 1 retry the nightly fails at its crawl).
    ``schedule.retry_delay_s`` is RETRY_DELAY_S (see there): each retry is scheduled that long after the
    failure and does not start before. The index step, whose fault does not go away, is tried 3 times too."""
    from core.settings import ScheduleSettings

    assert ScheduleSettings().task_retries == 2 and "schedule.task_retries" not in TINY
    home, first = two_nights["home"], two_nights["first"]
    assert two_nights.get("seen") is not None and len(two_nights["seen"]) == 2  # shop up after two failures
    crawls = [r for r in two_nights["runs_after_first"] if r["step"] == "crawl"]
    assert [r["status"] for r in crawls] == ["failed", "failed", "success"], crawls
    assert all("crawl reached no site" in r["message"] for r in crawls[:2])
    wh = warehouse(home)
    written = wh.query("SELECT count(*) AS n FROM products WHERE run_id = ?", [crawls[2]["run_id"]])
    assert written.column("n")[0].as_py() == N_PRODUCTS

    flow_run_id = first.state_details.flow_run_id
    crawl = the_task_run(flow_run_id, "crawl")
    states = history(crawl)
    assert_retried_after_the_delay(states, 2)
    assert states[-1].is_completed()
    with prefect_client() as client:
        assert client.read_task_run(crawl.id).run_count == 3
    embed = history(the_task_run(flow_run_id, "embed"))  # the crawl's success let the nightly go on
    assert embed[-1].is_completed() and not [s for s in embed if s.name == "AwaitingRetry"]

    index = history(the_task_run(flow_run_id, "build-index"))
    assert_retried_after_the_delay(index, 2)
    assert index[-1].is_failed()
    assert [r["status"] for r in two_nights["runs_after_first"] if r["step"] == "index"] == ["failed"] * 3


# --- 2. artifacts --------------------------------------------------------------------------------------------


def test_crawl_flow_publishes_its_crawl_summary_artifact(prefect_harness, tmp_path, make_shop):
    """The ``crawl`` flow's ``crawl-summary`` markdown, read back from the Prefect server, states the counts
    the warehouse holds. The shop corrupts every 2nd product's second photo so a refused status is counted."""
    from flows.crawl import crawl_flow

    shop = make_shop(n=6, faults="corrupt=2")
    home = tmp_path / "home"
    state = crawl_flow(home=str(home), overrides=TINY, site=shop.url, return_state=True)
    run_id = state.result()
    md = artifact(state.state_details.flow_run_id, "crawl-summary")
    assert md.type == "markdown" and md.description == f"crawl {run_id}"
    text = md.data
    assert text.startswith(f"# Crawl {run_id}\n") and f"site: `{shop.url}`" in text

    wh = warehouse(home)

    def count(sql: str) -> int:
        return wh.query(sql, [run_id]).column(0)[0].as_py()

    products = count("SELECT count(*) FROM products WHERE run_id = ?")
    photos = count("SELECT count(*) FROM images WHERE run_id = ?")
    assert products == 6 and photos > products
    assert f"| products written | {products} |" in text
    assert f"| photos written | {photos} |" in text
    by_status = wh.query("SELECT status, count(*) AS n FROM images WHERE run_id = ? GROUP BY 1", [run_id]).to_pylist()
    assert {r["status"] for r in by_status} >= {"ok", "corrupt"}, by_status
    for row in by_status:
        assert f"| photos: {row['status']} | {row['n']} |" in text, (row, text)
    assert "| finish reason | finished |" in text


def test_nightly_publishes_its_nightly_artifact(two_nights):
    """The ``nightly`` markdown of the resumed night (night 2), read back from the Prefect server: the
    switched-in index, its photo count, every evaluation row and every step's run id, as in the warehouse.
    Night 1 failed before its report: it published none."""
    home, second = two_nights["home"], two_nights["second"]
    outcome = second.result()
    md = artifact(second.state_details.flow_run_id, "nightly")
    text = md.data
    assert md.type == "markdown" and md.description == "nightly: current"
    wh = warehouse(home)
    [index] = wh.query("SELECT * FROM indexes_current").to_pylist()
    assert index["index_id"] == outcome["index_id"]
    assert text.startswith(f"# Nightly: index {index['index_id']} CURRENT\n")
    kept = wh.query("SELECT count(*) AS n FROM denoise_current WHERE kept").column("n")[0].as_py()
    assert index["n_vectors"] == kept
    assert f"index: {index['kind']}, {kept} photos, recall vs exact {index['recall_vs_exact']:.3f}" in text
    evals = wh.query("SELECT * FROM evaluations WHERE run_id = ? ORDER BY variant",
                     [outcome["steps"]["evaluate"]]).to_pylist()
    assert {e["variant"] for e in evals} == {"imagenet", "kmeans_init", "trained"}
    for e in evals:
        assert (f"| {e['variant']} | {e['photos']} | {e['recall_at_1']:.3f} | {e['recall_at_5']:.3f} | "
                f"{e['recall_at_10']:.3f} | {e['mean_ap']:.3f} |") in text
    for step in ("crawl", "embed", "denoise", "split", "train", "evaluate", "index", "switch"):
        run_id = outcome["steps"][step]
        assert f"| {step} | {run_id} |" in text
        assert wh.query("SELECT count(*) AS n FROM runs WHERE run_id = ? AND status = 'success'",
                        [run_id]).column("n")[0].as_py() == 1, step
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with prefect_client() as client:
        assert not client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["nightly"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[two_nights["first"].state_details.flow_run_id])))


# --- 3. shoesearch api --------------------------------------------------------------------------------------


def test_shoesearch_api_process_answers_health_and_search_then_stops_cleanly(two_nights, tmp_path):
    """``shoesearch --home H api --port P`` over the home the nightly runs left (its trained NetVLAD index
    current), with default settings (no shoesearch.toml, no --set, no SHOESEARCH_* variable) but a free port,
    so parallel runs do not collide. Stopped with SIGTERM (``terminate()``): uvicorn shuts down gracefully and
    then re-raises the signal (uvicorn >= 0.29), so the exit status is -SIGTERM."""
    from core.settings import Settings
    from serving.search import current_index_id

    home = two_nights["home"]
    two_nights["second"].result()
    assert not (home / "shoesearch.toml").exists()
    settings = Settings.load(home=home)
    port = free_port()
    assert port != settings.api.port
    front = warehouse(home).query(
        "SELECT product_id, path FROM images_current WHERE position = 0 AND status = 'ok' ORDER BY product_id "
        "LIMIT 1").to_pylist()[0]
    proc = subprocess.Popen([str(BIN / "shoesearch"), "--home", str(home), "api", "--port", str(port)],
                            cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def health():  # 503 "starting" while the index and model load and the warm-up search runs
            assert proc.poll() is None, "shoesearch api exited"
            r = httpx.get(base + "/health", timeout=2)
            return r if r.json()["status"] != "starting" else None

        r = wait_for("GET /health past 'starting'", health, timeout=90)
        assert r.status_code == 200
        assert r.json()["status"] == "ready" and r.json()["index_id"] == current_index_id(settings), r.text
        assert r.json()["index_id"]
        data = (settings.images_dir / front["path"]).read_bytes()
        r = httpx.post(base + "/search", files={"photo": ("shoe.jpg", data, "image/jpeg")}, timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results[0]["product_id"] == front["product_id"]
        assert len(results) == min(settings.index.search_k, N_PRODUCTS)  # the default k
    finally:
        rc, err = stop(proc, signal.SIGTERM)
    assert rc == -signal.SIGTERM, (rc, err[-3000:])
    assert "Application shutdown complete." in err and "Traceback" not in err, err[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(base + "/health", timeout=2)


# --- 4. shoesearch serve-flows ------------------------------------------------------------------------------


def test_serve_flows_registers_both_deployments_with_the_cron_and_the_set_overrides(prefect_harness, tmp_path):
    """``shoesearch --home H --set ... serve-flows`` against the session's Prefect server (PREFECT_API_URL):
    'nightly/nightly' on the default cron, 'denoise/manual' unscheduled, both carrying the home and the
    ``--set`` values (as given, text); then Ctrl-C stops it."""
    from prefect.settings import PREFECT_API_URL

    from core.settings import ScheduleSettings
    from flows.serve import local_timezone

    home = tmp_path / "home"
    sets = {"denoise.threshold": "0.9", "train.epochs": "3"}
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    proc = subprocess.Popen([str(BIN / "shoesearch"), "--home", str(home), *args, "serve-flows"], cwd=tmp_path,
                            env=cli_env(tmp_path, PREFECT_API_URL=PREFECT_API_URL.value()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def deployments():
            assert proc.poll() is None, "serve-flows exited"
            with prefect_client() as client:
                return (client.read_deployment_by_name("nightly/nightly"),
                        client.read_deployment_by_name("denoise/manual"))

        nightly, denoise = wait_for("both deployments", deployments, timeout=90, every=0.5)
    finally:
        rc, err = stop(proc, signal.SIGINT)
    try:
        params = {"home": str(home.resolve()), "overrides": sets}
        assert nightly.parameters == params and denoise.parameters == params
        [schedule] = nightly.schedules
        assert schedule.schedule.cron == ScheduleSettings().nightly_cron == "0 2 * * *"
        assert schedule.schedule.timezone == local_timezone() and schedule.active
        assert denoise.schedules == []
        assert rc == 0, (rc, err[-3000:])  # Prefect's serve() returns on Ctrl-C
        assert "Traceback" not in err, err[-3000:]
    finally:
        with prefect_client() as client:  # leave the session's server without a scheduled nightly
            client.delete_deployment(nightly.id)
            client.delete_deployment(denoise.id)


# --- 5. resuming a failed nightly run -----------------------------------------------------------------------


def test_nightly_failed_at_index_is_resumed_without_retraining(two_nights):
    """Night 1 fails at its index step (every attempt: see ``two_nights``) after training and evaluating.
    Night 2, the same nightly once the fault is fixed, reuses the split, the finished training and its
    evaluation (no new kmeans/train/evaluate run, no such Prefect task) and switches an index in."""
    from core.settings import Settings
    from index.store import current_index

    home, first, second = two_nights["home"], two_nights["first"], two_nights["second"]
    assert first.is_failed()
    with pytest.raises(Exception, match="indexes"):
        first.result()
    before = {}
    for r in two_nights["runs_after_first"]:
        before.setdefault(r["step"], []).append(r)
    for step in ("split", "kmeans", "train", "evaluate"):
        assert [r["status"] for r in before[step]] == ["success"], (step, before[step])
    assert "switch" not in before

    outcome = second.result()
    assert second.is_completed() and outcome["status"] == "current"
    steps = outcome["steps"]
    assert steps["split"] == before["split"][0]["run_id"] and "kmeans" not in steps
    assert steps["train"] == before["train"][0]["run_id"]
    assert steps["evaluate"] == before["evaluate"][0]["run_id"]
    for step in ("split", "kmeans", "train", "evaluate"):
        assert len(runs_of(home, step)) == 1, step  # nothing redone
    assert [r["status"] for r in runs_of(home, "index")] == ["failed"] * 3 + ["success"]
    names = {t.name.rsplit("-", 1)[0] for t in task_runs(second.state_details.flow_run_id)}
    assert {"finished-train", "finished-evaluation", "build-index"} <= names, names
    assert not names & {"kmeans", "train", "evaluate"}, names  # Prefect ran no training task either
    info = current_index(Settings.load(home=home, overrides=TINY))
    assert info.index_id == outcome["index_id"] == steps["index"] and info.model_id == outcome["model_id"]
