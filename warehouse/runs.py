"""Runs: every step's outputs are tagged with a run id, and ``runs`` records the lineage.

Use :func:`start_run` around a step::

    with start_run(wh, step="denoise", params={...}, inputs=[embed_run]) as run:
        run.write("denoise", rows)          # staged, visible when the block succeeds
    run.run_id                             # the dataset version the step returns

On success the staged rows and the ``success`` row of ``runs`` are committed in one transaction;
on an exception nothing staged becomes visible and a ``failed`` row records the error.
Long steps call ``run.commit_chunk`` to make finished work durable so that a rerun resumes.
While a run is ``running`` its process holds a lock on ``<warehouse>/_locks/run-<run_id>.lock``; the
next run of any step but crawl (whose resume closes its own attempts) marks each ``running`` run whose
lock it can take, i.e. whose process is gone (killed, out of memory, power loss), as ``failed``.
Every run's ``parameters`` also hold ``settings``: every effective setting the step ran with
(``Settings.as_overrides()``, recorded by ``open_warehouse``), so a figure can be traced to them.
A successful run that wrote ``products``, ``images`` or ``denoise`` then rewrites the materialised current
views (:mod:`warehouse.current`), so analysts' queries over them stay fast.
"""

from __future__ import annotations

import json
import logging
import subprocess
import traceback
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from warehouse.current import refresh
from warehouse.locks import LOCKS_DIR, HeldLock, take_if_abandoned
from warehouse.store import Warehouse

_CODE_VERSION: str | None = None
log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id(step: str) -> str:
    return f"{step}-{now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from core.version import __version__

        version = __version__
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(__file__).resolve().parent.parent,
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            if sha:
                version += f"+g{sha}"
        except (OSError, subprocess.SubprocessError):
            pass
        _CODE_VERSION = version
    return _CODE_VERSION


def _prefect_flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    except Exception:  # noqa: BLE001 - lineage must never fail a step because Prefect is absent
        return None


def _flow_name() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return ctx.flow.name if ctx and ctx.flow else None
    except Exception:  # noqa: BLE001
        return None


class Run:
    """One step's run: its id, parameters, inputs and staged outputs."""

    def __init__(self, wh: Warehouse, step: str, params: dict[str, Any], inputs: list[str], flow: str | None):
        self.wh = wh
        self.step = step
        self.run_id = new_run_id(step)
        self.params = params
        self.inputs = [i for i in dict.fromkeys(inputs) if i]
        self.flow = flow or _flow_name() or "cli"
        self.started_at = now()
        self.message: str | None = None
        self.rows: dict[str, int] = {}
        self._lock = HeldLock(run_lock_path(wh, self.run_id))  # held until the outcome is recorded
        self._txn = wh.begin(self.run_id)

    def write(self, table: str, data: Any) -> int:
        n = self._txn.write(table, data)
        self.rows[table] = self.rows.get(table, 0) + n
        return n

    def commit_chunk(self, table: str, data: Any) -> int:
        """Commit rows now (durable even if the step later fails), for resumable long steps."""
        n = self.wh.write(self.run_id, {table: data}).get(table, 0)
        self.rows[table] = self.rows.get(table, 0) + n
        return n

    def _row(self, status: str, message: str | None) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "flow": self.flow,
            "step": self.step,
            "status": status,
            "started_at": self.started_at,
            "finished_at": None if status == "running" else now(),
            "parameters": json.dumps({**self.params, "settings": self.wh.effective_settings}, sort_keys=True,
                                     default=str),
            "code_version": code_version(),
            "input_run_ids": self.inputs,
            "output_rows": json.dumps({**self.rows, **{f"{column} not finite, stored null": n
                                                       for column, n in self._txn.nulled.items()}}, sort_keys=True),
            "message": message,
            "prefect_flow_run_id": _prefect_flow_run_id(),
            "recorded_at": now(),
        }

    def _finish(self, status: str, message: str | None) -> None:
        try:
            if status == "success":
                try:
                    self._txn.write("runs", [self._row(status, message)])
                    self._txn.commit()
                    return
                except Exception as exc:  # the commit itself failed (e.g. TransactionLost): say so in runs
                    self._record_failed("".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000])
                    raise
            self._record_failed(message)
        finally:
            self._lock.release()  # after the outcome is committed: see mark_dead_runs

    def _record_failed(self, message: str | None) -> None:
        self._txn.abort()
        self.wh.write(self.run_id, {"runs": [self._row("failed", message)]})


def run_lock_path(wh: Warehouse, run_id: str) -> Path:
    return wh.root / LOCKS_DIR / f"run-{run_id}.lock"


def mark_dead_runs(wh: Warehouse, found_by: str, skip_steps: tuple[str, ...] = ("crawl",)) -> list[str]:
    """Record as ``failed`` every ``running`` run whose process is gone (its lock can be taken).

    Each is checked again once its lock is held: a run that finished meanwhile committed its outcome
    before it let go of the lock. ``crawl`` is skipped: a resumed crawl closes its earlier attempts itself.
    """
    sql = "SELECT * FROM runs WHERE status = 'running'"
    if skip_steps:
        sql += f" AND step NOT IN ({','.join('?' for _ in skip_steps)})"
    marked = []
    for row in wh.query(sql, list(skip_steps)).to_pylist():
        lock = take_if_abandoned(run_lock_path(wh, row["run_id"]))
        if lock is None:  # its process holds it: still running
            continue
        try:
            still = wh.query("SELECT status FROM runs WHERE run_id = ?", [row["run_id"]]).to_pylist()
            if still and still[0]["status"] == "running":
                stamp = now()
                row.update(status="failed", finished_at=stamp, recorded_at=stamp,
                           message=f"interrupted: its process ended without recording an outcome "
                                   f"(found by {found_by}); only chunks it had committed are kept")
                wh.write(row["run_id"], {"runs": [row]})
                marked.append(row["run_id"])
        finally:
            lock.release()
    return marked


@contextmanager
def start_run(
    wh: Warehouse,
    step: str,
    params: dict[str, Any] | None = None,
    inputs: list[str] | tuple[str, ...] = (),
    flow: str | None = None,
) -> Iterator[Run]:
    run = Run(wh, step, dict(params or {}), list(inputs), flow)
    try:
        mark_dead_runs(wh, run.run_id)
        wh.write(run.run_id, {"runs": [run._row("running", None)]})
    except BaseException:
        run._txn.abort()
        run._lock.release()
        raise
    try:
        yield run
    except BaseException as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        run._finish("failed", detail[:2000])
        raise
    run._finish("success", run.message)
    if any(run.rows.get(table) for table in ("products", "images", "denoise")):
        refresh_current(wh)


def refresh_current(wh: Warehouse) -> None:
    """Rewrite the materialised current views (:mod:`warehouse.current`) after a run that changed their inputs.

    Never fails the run it follows: without them the views are computed live (slower, never stale).
    """
    try:
        refresh(wh)
    except Exception as exc:  # noqa: BLE001 - disk full, unreadable file: the live views answer instead
        log.warning("current views not refreshed (queries compute them live): %s", exc)


def lineage(wh: Warehouse, run_id: str) -> list[dict[str, Any]]:
    """Every run upstream of ``run_id`` (itself first), breadth first, with its depth."""
    runs = {r["run_id"]: r for r in wh.query("SELECT * FROM runs").to_pylist()}
    if run_id not in runs:
        raise KeyError(f"no run {run_id!r} in the runs table")
    out, seen, frontier = [], set(), [(run_id, 0)]
    while frontier:
        rid, depth = frontier.pop(0)
        if rid in seen or rid not in runs:
            continue
        seen.add(rid)
        out.append({**runs[rid], "depth": depth})
        frontier.extend((parent, depth + 1) for parent in runs[rid]["input_run_ids"] or [])
    return out


def latest_run(wh: Warehouse, step: str) -> str | None:
    """The newest successful run of ``step``, or None."""
    rows = wh.query(
        "SELECT run_id FROM runs WHERE step = ? AND status = 'success' ORDER BY finished_at DESC LIMIT 1",
        [step],
    ).to_pylist()
    return rows[0]["run_id"] if rows else None


def upstream_of(wh: Warehouse, table: str, key_column: str, key: str) -> list[dict[str, Any]]:
    """Lineage of the run that wrote the newest row of ``table`` where ``key_column`` = ``key``."""
    from warehouse.schemas import TABLES

    if table not in TABLES or TABLES[table].get_field_index(key_column) < 0:
        raise KeyError(f"{table}.{key_column} is not a column")
    rows = wh.query(
        f'SELECT run_id FROM {table} WHERE "{key_column}" = ? ORDER BY run_id DESC LIMIT 1', [key]
    ).to_pylist()
    if not rows:
        raise KeyError(f"no row in {table} with {key_column} = {key!r}")
    return lineage(wh, rows[0]["run_id"])

