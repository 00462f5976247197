"""Processes sharing a home, for real (subprocesses, SIGKILL, another PID namespace):

* a reader's recovery never rolls back a live writer's transaction, even from another PID namespace,
  and a commit whose staged parts vanished fails loudly instead of reporting success;
* a killed writer's staging is rolled back by the next open;
* a killed step's ``running`` row is marked ``failed`` by the next run;
* two concurrent ``ingest`` runs of one folder write each product once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from warehouse import open_warehouse, start_run
from warehouse.store import TransactionLost

pytestmark = pytest.mark.e2e  # concurrent and killed writer processes: outside the fast loop

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "shoesearch"]
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]

# Stages one product, says so, and holds the transaction open until a line arrives on stdin.
HOLDING_WRITER = textwrap.dedent(
    """
    import sys
    from warehouse import Warehouse
    wh = Warehouse(sys.argv[1])
    txn = wh.begin("long-ingest")
    txn.write("products", [{"product_id": "c:slow", "source": "catalog"}])
    print(txn.txn_id, flush=True)
    sys.stdin.readline()
    print("committed", txn.commit(), flush=True)
    """
)

# Starts a run of ``embed`` that writes a row, says its id, and waits for stdin (then succeeds).
HOLDING_RUN = textwrap.dedent(
    """
    import sys
    from core.settings import Settings
    from warehouse import open_warehouse, start_run
    wh = open_warehouse(Settings.load(home=sys.argv[1]))
    with start_run(wh, "embed") as run:
        run.write("products", [{"product_id": "c:slow", "source": "catalog"}])
        print(run.run_id, flush=True)
        sys.stdin.readline()
    """
)


def env_for(home: Path) -> dict:
    return {**os.environ, "SHOESEARCH_HOME": str(home), "PYTHONPATH": str(REPO)}


def popen(script: str, *args: str, home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=env_for(home), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def count(wh, sql: str) -> int:
    return wh.query(sql).column(0)[0].as_py()


def test_reader_in_another_pid_namespace_keeps_a_live_writers_transaction(settings):
    if not unshare_works():
        pytest.skip("unshare --pid --fork --mount-proc is not available here")
    wh = open_warehouse(settings)
    writer = popen(HOLDING_WRITER, str(wh.root), home=settings.home)
    try:
        txn_id = writer.stdout.readline().strip()
        assert txn_id, writer.stderr.read()
        pid = int(txn_id.split("-")[0])
        # The premise: from the new namespace the writer's PID does not exist.
        probe = subprocess.run([*UNSHARE, sys.executable, "-c", f"import os; os.kill({pid}, 0)"],
                               capture_output=True, text=True, timeout=60)
        assert "ProcessLookupError" in probe.stderr, probe.stderr
        reader = subprocess.run([*UNSHARE, *CLI, "sql", "SELECT count(*) AS n FROM products", "--format", "csv"],
                                cwd=REPO, env=env_for(settings.home), capture_output=True, text=True, timeout=120)
        assert reader.returncode == 0, reader.stderr
        assert reader.stdout.split() == ["n", "0"]  # not committed yet: invisible
        assert (wh.staging_dir / txn_id / "products").is_dir()  # and not rolled back
        out, err = writer.communicate("go\n", timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    assert "committed {'products': 1}" in out
    assert count(wh, "SELECT count(*) FROM products WHERE product_id = 'c:slow'") == 1
    assert list(wh.staging_dir.iterdir()) == []  # the lock file went with the transaction


def test_commit_whose_staging_vanished_fails_loudly(wh):
    txn = wh.begin("r1")
    txn.write("products", [{"product_id": "c:1", "source": "catalog"}])
    shutil.rmtree(txn.dir)  # what a recovery that misjudged the writer as dead used to do
    with pytest.raises(TransactionLost, match="vanished before its commit.*nothing of it was committed"):
        txn.commit()
    assert count(wh, "SELECT count(*) FROM products") == 0
    with pytest.raises(TransactionLost):  # through a run: recorded as failed, then raised
        with start_run(wh, "ingest") as run:
            run.write("products", [{"product_id": "c:2", "source": "catalog"}])
            shutil.rmtree(run._txn.dir)
    row = wh.query("SELECT status, message FROM runs WHERE run_id = ?", [run.run_id]).to_pylist()[0]
    assert row["status"] == "failed" and "vanished before its commit" in row["message"]
    assert count(wh, "SELECT count(*) FROM products") == 0


def test_killed_writers_staging_is_rolled_back_by_the_next_open(settings):
    wh = open_warehouse(settings)
    writer = popen(HOLDING_WRITER, str(wh.root), home=settings.home)
    txn_id = writer.stdout.readline().strip()
    assert (wh.staging_dir / txn_id).is_dir(), writer.stderr.read()
    open_warehouse(settings)  # while it lives, an open leaves it alone
    assert (wh.staging_dir / txn_id).is_dir()
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=60)
    argv = [*UNSHARE, *CLI] if unshare_works() else CLI  # from another namespace when possible
    res = subprocess.run([*argv, "sql", "SELECT count(*) AS n FROM products", "--format", "csv"], cwd=REPO,
                         env=env_for(settings.home), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.split() == ["n", "0"], res.stderr
    assert list(wh.staging_dir.iterdir()) == []  # its parts and its lock file are gone


def test_killed_run_is_marked_failed_by_the_next_run(settings):
    wh = open_warehouse(settings)
    proc = popen(HOLDING_RUN, str(settings.home), home=settings.home)
    run_id = proc.stdout.readline().strip()
    assert run_id.startswith("embed-"), proc.stderr.read()

    def status(rid: str) -> dict:
        return wh.query("SELECT status, message FROM runs WHERE run_id = ?", [rid]).to_pylist()[0]

    with start_run(wh, "embed"):  # alive: another run leaves it running
        pass
    assert status(run_id)["status"] == "running"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    with start_run(wh, "denoise") as later:  # any step's next run closes it
        pass
    row = status(run_id)
    assert row["status"] == "failed" and "interrupted" in row["message"] and later.run_id in row["message"]
    assert status(later.run_id)["status"] == "success"
    assert count(wh, "SELECT count(*) FROM products") == 0  # what it staged stays invisible
    assert not (wh.root / "_locks" / f"run-{run_id}.lock").exists()


def test_run_that_finishes_normally_leaves_no_lock_and_is_not_touched(settings):
    wh = open_warehouse(settings)
    proc = popen(HOLDING_RUN, str(settings.home), home=settings.home)
    run_id = proc.stdout.readline().strip()
    proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0
    with start_run(wh, "embed"):
        pass
    assert wh.query("SELECT status FROM runs WHERE run_id = ?", [run_id]).column(0)[0].as_py() == "success"
    assert [p.name for p in (wh.root / "_locks").iterdir()] == []


def _blocked_on_a_flock(pids: list[int]) -> set[int]:
    """The given processes that wait for a ``flock`` (``/proc/locks`` marks waiters with ``->``)."""
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        m = re.match(r"\d+:\s+->\s+FLOCK\s+\S+\s+\S+\s+(\d+) ", line)
        if m and int(m.group(1)) in pids:
            waiting.add(int(m.group(1)))
    return waiting


def test_two_concurrent_ingests_of_one_folder_write_each_product_once(settings, tmp_path):
    from PIL import Image

    from warehouse.store import file_lock

    if not Path("/proc/locks").exists():
        pytest.skip("needs /proc/locks to see both ingests wait")
    catalog = tmp_path / "catalog"
    for p in range(6):
        (catalog / f"shoe{p}").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (40 * p, 30 * i, 90)).save(catalog / f"shoe{p}" / f"{i}.jpg")
    wh = open_warehouse(settings)
    procs = []
    # Hold the staging lock (every open takes it) until both ingests wait on a lock, then let them race.
    with file_lock(wh.root / ".staging.lock"):
        for _ in range(2):
            procs.append(subprocess.Popen([*CLI, "ingest", str(catalog)], cwd=REPO, env=env_for(settings.home),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 180
        while _blocked_on_a_flock([p.pid for p in procs]) != {p.pid for p in procs}:
            assert time.monotonic() < deadline, "the ingests never reached a lock"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.1)
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert count(wh, "SELECT count(*) FROM products") == 6  # one version of each product
    assert count(wh, "SELECT count(*) FROM images") == 18  # one row per photo
    messages = sorted(r["message"] for r in wh.query("SELECT message FROM runs WHERE step = 'ingest'").to_pylist())
    assert messages == ["0 products loaded, 6 unchanged", "6 products loaded, 0 unchanged"]
    waited = [err for _, err in outputs if "another ingest into this home is running; waiting" in err]
    assert len(waited) == 1, outputs
    assert json.dumps(outputs).count("ingest run ") == 2
