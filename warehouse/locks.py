"""Locks between processes sharing a data home (``flock``; they work across PID namespaces).

Liveness is decided by a lock, never by a PID: a writer (a transaction, a run) holds an exclusive
``flock`` on its own lock file for as long as it lives, and the kernel drops the lock when the process
ends however it ends (exit, exception, SIGKILL). Another process that can take that lock knows the
writer is gone. A PID is no proof: from another PID namespace (a container, ``unshare --pid``) a live
writer's PID does not exist, and after a reboot it may belong to someone else.
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path

LOCKS_DIR = "_locks"  # under the warehouse directory: step locks and run locks


@contextmanager
def file_lock(path: Path, blocking: bool = True):
    """An exclusive lock between processes (``flock`` on ``path``); non-blocking raises BlockingIOError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class HeldLock:
    """An exclusive ``flock`` on ``path``, held until :meth:`release` (or the process ends).

    ``path`` names one owner (a transaction, a run); whoever holds the lock may delete the file, so
    :meth:`acquire` retries until the file it locked is still the one at ``path``. ``blocking=False``
    raises BlockingIOError when another process holds it: that owner is alive.
    """

    def __init__(self, path: Path, blocking: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                if _same_file(self.path, fd):
                    self.fd: int | None = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the owner before us deleted the file after we opened it: lock the new one

    def release(self, unlink: bool = True) -> None:
        """Drop the lock; ``unlink`` deletes the file first (while still holding it)."""
        if self.fd is None:
            return
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = None


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def take_if_abandoned(path: Path) -> HeldLock | None:
    """The lock at ``path`` if its owner is gone (the caller cleans up, then releases); None while held."""
    try:
        return HeldLock(path, blocking=False)
    except BlockingIOError:
        return None


def pid_alive(pid: int) -> bool:
    """Only for staging written by versions before lock files (they named the writer by PID alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def step_lock(warehouse_dir: Path, step: str):
    """One ``step`` at a time per data home: a second one waits (saying so on stderr once) for the first."""
    path = Path(warehouse_dir) / LOCKS_DIR / f"{step}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"shoesearch: another {step} into this home is running; waiting for it to finish ({path})",
                  file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
