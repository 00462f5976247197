"""Decoding untrusted photo bytes in a worker process that is killed past a CPU-time bound.

A decoder runs in C and cannot be interrupted from Python: a crafted file (a JPEG of a few KB whose scans
repeat, or an input no header check foresees) can hold it for minutes. So every decode of bytes from the
outside (an API upload, a crawled or ingested photo before it is stored) runs in a small, long-lived worker
process (``photos.decode_worker._serve``, Pillow only: it starts in about 0.1 s, once), which the caller
watches while it waits: past ``cpu_s`` seconds of the worker's CPU time (``/proc/<pid>/stat``; wall time
where there is no /proc) the worker is killed, the call raises :class:`TooCostly`, and the next call
starts a fresh worker. CPU time, not wall time, so a loaded machine does not refuse good photos. A worker
that answers nothing and uses no CPU is killed after ``WALL_FACTOR`` times the bound in wall time; one
whose caller died is ended by its own ``RLIMIT_CPU`` (set per task, a little above the bound).

Photos already in the image store passed this decode when they were stored, so the catalog's DataLoader
workers decode them in-process (``photos.decoding.load_rgb``, with its cheap header checks only).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

from PIL import Image

POLL_S = 0.05  # how often a waiting caller looks at the worker's CPU time (a decode's answer ends the wait at once)
WALL_FACTOR = 10  # a worker neither answering nor using CPU (stopped, swapped out) is killed after this x the bound
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# The worker imports this module from the folder holding the ``photos`` package, whatever the current folder
# holds (a folder of photos named "photos" would otherwise shadow the package).
_ROOT = str(Path(__file__).resolve().parent.parent)
_START = "import sys; sys.path.insert(0, sys.argv[1]); from photos.decode_worker import _serve; _serve(int(sys.argv[2]))"


class DecodeFailed(ValueError):
    """The photo does not decode; ``kind`` is the decoder's exception type, the message its text."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class TooCostly(DecodeFailed):
    """The decode used more than its CPU-time bound and its worker was killed."""


def decode_rgb(data: bytes, size: int, max_pixels: int, max_scans: int, cpu_s: float) -> Image.Image:
    """``photos.decoding.load_rgb`` of untrusted bytes, in a worker bounded to ``cpu_s`` of CPU time."""
    mode, shape, pixels = _POOL.run(("rgb", data, size, max_pixels, max_scans), cpu_s)
    return Image.frombytes(mode, shape, pixels)


def verify_decode(data: bytes, cpu_s: float) -> None:
    """``photos.decoding.verify`` of untrusted bytes (a full decode), in a worker bounded to ``cpu_s``."""
    _POOL.run(("verify", data), cpu_s)


class _Worker:
    """One decode worker process and the pipe to it."""

    def __init__(self):
        mine, theirs = Pipe()
        self.proc = subprocess.Popen([sys.executable, "-c", _START, _ROOT, str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = mine

    def call(self, request: tuple, cpu_s: float):
        start_cpu, start = self.cpu_s(), time.monotonic()
        self.conn.send((cpu_s, request))
        while not self.conn.poll(POLL_S):
            wall, used = time.monotonic() - start, self.cpu_s()
            spent = wall if used is None or start_cpu is None else used - start_cpu
            if spent > cpu_s or wall > WALL_FACTOR * cpu_s:
                self.kill()
                took = f"{cpu_s:g} s of CPU time" if spent > cpu_s else f"{wall:.0f} s without an answer"
                raise TooCostly("TimeoutError", f"decoding took more than {took}")
        try:
            status, *reply = self.conn.recv()
        except EOFError:
            code = self.kill()
            raise DecodeFailed("WorkerDied", f"the decoder crashed (exit status {code})") from None
        if status == "ok":
            return reply[0]
        if reply[0] == "MemoryError":
            raise MemoryError(reply[1])
        raise DecodeFailed(*reply)

    def cpu_s(self) -> float | None:
        """CPU seconds the worker has used (user + system), or None where /proc cannot tell."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def kill(self) -> int | None:
        self.conn.close()
        self.proc.kill()
        return self.proc.wait()


class _Pool:
    """Idle workers, reused; one is taken per call (callers bound their own concurrency)."""

    def __init__(self):
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def run(self, request: tuple, cpu_s: float):
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not talk to its parent's workers
                self._idle, self._pid = [], os.getpid()
            worker = self._idle.pop() if self._idle else None
        if worker is None or worker.proc.poll() is not None:
            worker = _Worker()
        try:
            reply = worker.call(request, cpu_s)
        except (DecodeFailed, MemoryError):
            if worker.proc.returncode is None:  # the photo's fault, answered: the worker is fine
                self._keep(worker)
            raise
        except BaseException:
            worker.kill()
            raise
        self._keep(worker)
        return reply

    def _keep(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)


_POOL = _Pool()


def _serve(fd: int) -> None:
    """The worker's loop: (cpu bound, request) in, ("ok", result) or ("error", type, message) out, until
    the caller closes the pipe (or dies)."""
    import resource

    from photos import decoding

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # RLIMIT_CPU's SIGXCPU must not write a core file
    conn = Connection(fd)
    while True:
        try:
            cpu_s, (op, data, *args) = conn.recv()
        except EOFError:
            return
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        soft = math.ceil(used + 2 * cpu_s + 1)  # the caller kills at cpu_s; this ends an orphaned worker
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        try:
            if op == "verify":
                decoding.verify(data)
                result = None
            else:
                img = decoding.load_rgb(data, *args)
                result = (img.mode, img.size, img.tobytes())
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the photo's: sent back as one line
            conn.send(("error", type(exc).__name__, str(exc)))
        else:
            conn.send(("ok", result))

