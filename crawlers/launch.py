"""Running ``python -m scrapy crawl jd`` processes for the crawl step: one per shard, concurrently, supervised.

Twisted's reactor cannot restart inside one process, so every spider is a child process, started with the same
command whether there is one shard or several (``tasks/crawl.py`` builds the ``-s`` settings). Locally the crawl
task starts them (``LocalSpider``); under ``compute.engine = "ray"`` each is a Ray task that runs the very same
process on a cluster node (``run_spider``, ``RaySpider``; the node must see the data home, a shared filesystem).

``supervise`` waits for them all: it logs the summed progress, and when one stops because the site walled it
(captcha, login page, robots.txt: ``crawlers/shards.WALLS``) it stops the others cleanly (SIGTERM: Scrapy's
graceful shutdown, their JOBDIR kept), since the wall is the site's answer to the crawl, not to one shard.
Cancelled or interrupted, it never leaves a spider running on its own; a spider also stops when the process
that started it dies (``crawlers.extensions.StopWithParent``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from crawlers.shards import WALLS

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 30  # grace for a spider to close cleanly before it is killed


def spider_command(args: list[str]) -> list[str]:
    """The command line of one spider: ``args`` are its ``-s KEY=VALUE`` settings."""
    return [sys.executable, "-m", "scrapy", "crawl", "jd", "-s", f"SHOESEARCH_PARENT_PID={os.getpid()}", *args]


def spider_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment with ``env`` over it, set up to import the project from its checkout."""
    out = {**os.environ, **env, "SCRAPY_SETTINGS_MODULE": "crawlers.settings"}
    out["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [out.get("PYTHONPATH")] if p])
    return out


def _start(args: list[str], env: dict[str, str], out_path: str, pid_path: str) -> subprocess.Popen:
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(spider_command(args), cwd=REPO_ROOT, env=spider_env(env), stdout=out,
                                stderr=subprocess.STDOUT)
    Path(pid_path).write_text(f"{proc.pid}\n")  # for an operator (and a test) to find the shard's process
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # Scrapy stops cleanly on SIGTERM (JOBDIR stays resumable)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_spider(args: list[str], env: dict[str, str], out_path: str, pid_path: str) -> int:
    """Run one spider to its end and return its exit code: what a Ray task runs. Cancelled (``ray.cancel``
    raises KeyboardInterrupt here): the spider is stopped cleanly first."""
    proc = _start(args, env, out_path, pid_path)
    try:
        return proc.wait()
    finally:
        _stop(proc)


class LocalSpider:
    """A spider started by this process."""

    def __init__(self, args: list[str], env: dict[str, str], out_path: Path, pid_path: Path):
        self.proc = _start(args, env, str(out_path), str(pid_path))

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        _stop(self.proc)


class RaySpider:
    """A spider run by a Ray task (``run_spider`` on a cluster node); its exit code is the task's result."""

    def __init__(self, ray, args: list[str], env: dict[str, str], out_path: Path, pid_path: Path):
        self.ray = ray
        remote = ray.remote(num_cpus=1, max_retries=0)(run_spider)  # a rerun is a resume: never retried blindly
        self.ref = remote.remote(args, env, str(out_path), str(pid_path))
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            ready, _ = self.ray.wait([self.ref], timeout=0)
            if ready:
                try:
                    self.code = int(self.ray.get(self.ref))
                except Exception:  # noqa: BLE001 - the task died (worker lost, cancelled): no clean exit
                    self.code = -1
        return self.code

    def stop(self) -> None:
        if self.poll() is None:
            self.ray.cancel(self.ref)  # KeyboardInterrupt in run_spider: SIGTERM to the spider

    def close(self) -> None:
        self.stop()
        deadline = time.monotonic() + STOP_TIMEOUT_S + 5
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.code is None:
            self.ray.cancel(self.ref, force=True)  # kills the worker; the spider follows (StopWithParent)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def supervise(spiders: dict[int, object], stats_paths: dict[int, Path], progress_paths: dict[int, Path],
              report: Callable[[int, int], None], every_s: float) -> dict[int, int]:
    """Wait for every spider; ``report(products_written, pages)`` when the summed progress changes. Returns
    each spider's exit code. A spider stopped by a wall stops the others cleanly."""
    codes: dict[int, int] = {}
    last = None
    try:
        while len(codes) < len(spiders):
            time.sleep(min(1.0, every_s))
            for index, spider in spiders.items():
                if index in codes or spider.poll() is None:
                    continue
                codes[index] = spider.poll()
                stats = _read_json(stats_paths[index]) or {}
                if stats.get("finish_reason") in WALLS:
                    for other in spiders.values():
                        other.stop()
            progress = [_read_json(p) or {} for p in progress_paths.values()]
            now = (sum(p.get("products_written", 0) for p in progress), sum(p.get("pages", 0) for p in progress))
            if now != last and any(progress):
                last = now
                report(*now)
    finally:  # cancelled or interrupted: never leave a spider running on its own
        for spider in spiders.values():
            spider.close()
    return codes
