"""Running one DuckDB query under a time limit, stoppable by Ctrl-C (``shoesearch sql``).

DuckDB has no statement timeout, and while a query runs in the main thread Python's SIGINT handler
never gets to run (Ctrl-C was ignored until the query ended). So the query, its fetching and its output
run in a worker thread; the main thread waits, and on the deadline or on Ctrl-C calls
``connection.interrupt()``, which DuckDB honours between vectors of work.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from core.errors import ShoesearchError

GRACE_S = 5.0  # how long an interrupted query may take to notice before the command leaves it behind
POLL_S = 0.25  # how often the main thread looks at the clock


class QueryTimeout(ShoesearchError):
    """The query ran past ``sql.timeout_s`` and was interrupted."""


class Budget:
    """The query's clock: wall time since the start, less the time spent blocked writing output."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._start = time.monotonic()
        self._blocked = 0.0
        self._since: float | None = None

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Time inside this block (a write to a pipe whose reader is slow) is not the query's."""
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._blocked += time.monotonic() - self._since
            self._since = None

    def writer(self, stream) -> "_TimedWriter":
        """``stream`` (``sys.stdout``) whose writes are not counted against the query's time."""
        return _TimedWriter(stream, self)

    def left(self) -> float:
        now = time.monotonic()
        since = self._since
        blocked = self._blocked + (now - since if since is not None else 0.0)
        return self.timeout_s - (now - self._start - blocked)


class _TimedWriter:
    def __init__(self, stream, budget: Budget):
        self.stream, self.budget = stream, budget

    def write(self, text: str) -> None:
        with self.budget.writing():
            self.stream.write(text)


class _Outcome:
    def __init__(self):
        self.done = threading.Event()
        self.error: BaseException | None = None


def run_bounded(con, work: Callable[[Budget], None], timeout_s: float) -> None:
    """Run ``work(budget)`` (which queries ``con``) in a worker thread; interrupt ``con`` at the deadline
    (:class:`QueryTimeout`) or on Ctrl-C (``KeyboardInterrupt`` again, once the query has stopped).
    ``timeout_s`` 0 means no deadline. An exception of ``work`` is raised here."""
    budget = Budget(timeout_s)
    outcome = _Outcome()

    def worker() -> None:
        try:
            work(budget)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome.error = exc
        finally:
            outcome.done.set()

    threading.Thread(target=worker, name="shoesearch-sql", daemon=True).start()
    try:
        while not outcome.done.wait(POLL_S if not timeout_s else max(0.0, min(POLL_S, budget.left()))):
            if timeout_s and budget.left() <= 0:
                _stop(con, outcome)
                raise QueryTimeout(f"query stopped after {timeout_s:g} s (sql.timeout_s; raise it with "
                                   f"--set sql.timeout_s=SECONDS, 0 for no limit)")
    except KeyboardInterrupt:
        _stop(con, outcome)
        raise
    if outcome.error is not None:
        raise outcome.error


def _stop(con, outcome: _Outcome) -> None:
    con.interrupt()
    outcome.done.wait(GRACE_S)
