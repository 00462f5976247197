"""A flow command whose temporary Prefect server dies, and one that gets SIGTERM (real processes and signals).

Before ``shoesearch.flow_guard``: killing the server after ``denoise`` had committed ``success`` gave
exit 1 with ``unexpected ConnectError`` after minutes of retries, and a SIGTERM left the temporary server
running with no parent. The two commands run side by side (each pays a temporary server's start).

A server lost *after* the flow run began leaves the outcome known: Prefect 3 reports task states as events,
so the steps go on and commit (a server killed during ``embed`` still gives a committed ``denoise``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_denoise import EMBED_TEST_OVERRIDES

REPO = Path(__file__).resolve().parent.parent
PROMPT_S = 60  # generous: the stall this guards against lasted 2-4 minutes (10 on a busy machine)


def children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def server_children(pid: int) -> list[int]:
    """The command's temporary Prefect server (``python -m uvicorn ... prefect.server``) among its children."""
    def cmdline(child):
        try:
            return Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""
    return [c for c in children(pid) if "uvicorn" in cmdline(c) and "prefect" in cmdline(c)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class FlowCommand:
    """``shoesearch denoise`` on a private copy of the embedded home, with a trigger: when a new batch of
    ``step`` appears in ``runs`` (the step started), ``action`` is done to the command or its server."""

    def __init__(self, embedded_home: Path, root: Path, step: str, action: str):
        self.home = root / "home"
        shutil.copytree(embedded_home, self.home)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOESEARCH_", "PREFECT_API_URL"))}
        env.update(TQDM_DISABLE="1", PREFECT_HOME=str(root / "prefect"))
        sets = [arg for k, v in EMBED_TEST_OVERRIDES.items() for arg in ("--set", f"{k}={v}")]  # nothing to embed
        self.out, self.err = (open(root / name, "w+") for name in ("stdout", "stderr"))
        self.process = subprocess.Popen([sys.executable, "-m", "shoesearch", "--home", str(self.home), *sets,
                                         "denoise"], cwd=REPO, env=env, stdout=self.out, stderr=self.err)
        self.step, self.action = step, action
        self.before = set(self.batches())  # the home's own runs of the step (embedded_home has embed runs)
        self.servers: list[int] = []
        self.acted_at: float | None = None

    def poll(self) -> None:
        if self.acted_at is None and self.process.poll() is None:
            self.servers = server_children(self.process.pid) or self.servers
            if self.servers and set(self.batches()) - self.before:
                for pid in (self.servers if self.action == "kill-server" else [self.process.pid]):
                    os.kill(pid, signal.SIGKILL if self.action == "kill-server" else signal.SIGTERM)
                self.acted_at = time.monotonic()

    def batches(self):
        return (self.home / "warehouse" / "runs").glob(f"batch-{self.step}-*")

    def result(self) -> tuple[int, float, str, str]:
        code = self.process.wait()
        seconds = time.monotonic() - self.acted_at
        self.out.seek(0)
        self.err.seek(0)
        return code, seconds, self.out.read(), self.err.read()


def runs(home: Path, step: str) -> list[dict]:
    from core.settings import Settings
    from warehouse import open_warehouse

    return open_warehouse(Settings.load(home=home)).query(
        "SELECT run_id, status FROM runs WHERE step = ? ORDER BY started_at", [step]).to_pylist()


@pytest.mark.e2e
def test_lost_server_and_sigterm_end_flow_commands_promptly(tmp_path, embedded_home):
    commands = {
        # the flow is running: denoise commits without Prefect; the report task's API calls fail after it
        "committed": FlowCommand(embedded_home, tmp_path / "committed", "embed", "kill-server"),
        "sigterm": FlowCommand(embedded_home, tmp_path / "sigterm", "embed", "sigterm"),
    }
    deadline = time.monotonic() + 600
    while any(c.acted_at is None and c.process.poll() is None for c in commands.values()):
        assert time.monotonic() < deadline, "the flow commands never reached their steps"
        for command in commands.values():
            command.poll()
        time.sleep(0.05)
    for name, command in commands.items():
        assert command.acted_at is not None, f"{name}: ended before its trigger: {command.result()}"

    code, seconds, out, err = commands["committed"].result()
    denoise = runs(commands["committed"].home, "denoise")
    assert [r["status"] for r in denoise] == ["success"], denoise
    lines = err.strip().splitlines()
    assert code == 0 and seconds < PROMPT_S and len(lines) == 1, (code, seconds, err)
    assert re.fullmatch(rf"shoesearch: warning: lost the Prefect server at http://127\.0\.0\.1:\d+ \(connection "
                        rf"refused.*\); the run {denoise[0]['run_id']} was committed: success", lines[0]), lines
    assert out.startswith(f"{denoise[0]['run_id']}: threshold"), out

    code, seconds, out, err = commands["sigterm"].result()
    assert code == 128 + signal.SIGTERM and seconds < 20, (code, seconds, err)
    assert err.strip().splitlines() == [err.strip()] and "terminated (SIGTERM)" in err, err
    time.sleep(0.5)
    for name, command in commands.items():
        assert command.servers and not any(alive(pid) for pid in command.servers), f"{name}: server left running"
    assert "running" not in {r["status"] for r in runs(commands["sigterm"].home, "embed")}


def test_sigterm_ends_the_process_even_when_the_signal_is_swallowed(tmp_path):
    """A handler installed over ours (Prefect's, during a flow) that does not end the process, or a main
    thread busy elsewhere: the watcher still ends it ``grace_s`` after SIGTERM, with one line (real signal)."""
    code = ("import signal, sys, time\n"
            "from shoesearch.flow_guard import stop_on_sigterm\n"
            "with stop_on_sigterm(grace_s=1):\n"
            "    signal.signal(signal.SIGTERM, lambda *a: None)\n"  # swallows SIGTERM, as a busy handler would
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 10, err
    assert err.strip().splitlines() == [
        "shoesearch: terminated (SIGTERM); the clean stop took over 1 s, ended at once"], err
