"""Progress and run logs for every step: one overall bar per step, and its figures in the run's log.

* **One bar.** ``progress(label, total, unit)`` opens the step's bar (a context manager). A ``progress`` opened
  while another is open (a stage inside the step: the frozen cache, k-means descriptors, validation) does not
  draw a second bar: it shows as the outer bar's short stage label, with its own share done ("cache 40%").
* **Terminal or not.** On a terminal (stderr a TTY) the bar is a ``rich`` progress bar with elapsed time and
  ETA; otherwise (output to a file, a pipe, CI) it prints a plain line every ``PLAIN_EVERY_S`` seconds and
  nothing else, so a long first epoch still leaves a trace. ``note(text)`` prints a line either way (above
  the bar on a terminal): each epoch's loss and validation Recall@1, an early stop.
* **Honest ends.** ``finish(message)`` completes the bar and prints why (``stopped early at epoch 7: no gain
  for 3 epochs``); a bar left by an exception (Ctrl-C included) is marked ``interrupted`` and the display is
  stopped before the error is printed, so nothing is printed over it.
* **Run logs.** ``run_logger(name)`` is Prefect's run logger inside a flow or task run (lines in the run's log
  in the Prefect UI), the ``shoesearch.<name>`` logger otherwise.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

PLAIN_EVERY_S = 30.0  # plain mode: one line per this many seconds
LABEL_CHARS = 30  # the bar's label (step + stage) is cut to this many characters: the bar keeps its room
MODES = ("auto", "bar", "plain", "off")

_open: list[Progress] = []  # the open bars, outermost first (one per thread of work is enough: steps are serial)
_lock = threading.Lock()


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger when called inside a flow or task run, else the ``shoesearch.<name>`` logger."""
    try:
        from prefect import get_run_logger
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() or TaskRunContext.get():
            return get_run_logger()
    except Exception:  # noqa: BLE001 - no Prefect run context: the module logger
        pass
    return logging.getLogger(f"shoesearch.{name}")


def duration(seconds: float) -> str:
    """``42s``, ``12m04s``, ``3h05m``."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """One step's progress (see the module docstring). ``mode``: ``auto`` (a bar on a terminal, plain lines
    otherwise), ``bar``, ``plain`` or ``off``; ``clock`` and ``every_s`` set the plain lines' pace (tests)."""

    def __init__(self, label: str, total: float | None, unit: str = "", *, initial: float = 0,
                 mode: str = "auto", stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 every_s: float = PLAIN_EVERY_S):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if _isatty(self.stream) else "plain"
        self.label, self.total, self.unit, self.mode = label, total, unit, mode
        self.done, self.initial = initial, initial
        self.stage_text, self.info = "", ""
        self.clock, self.every_s = clock, every_s
        self.started = self.last_line = clock()
        self.lines = 0  # plain progress lines printed so far (notes not counted)
        self.ended = False
        self._rich = self._task = None
        if mode == "bar":
            self._start_bar()

    # -- what steps call ---------------------------------------------------------------------------------------
    def advance(self, n: float = 1) -> None:
        self.done += n
        self._show()

    def moveto(self, done: float) -> None:
        self.done = done
        self._show()

    def set_total(self, total: float | None) -> None:
        self.total = total
        self._show()

    def stage(self, text: str) -> None:
        """The short stage label shown after the step's label ("" clears it)."""
        self.stage_text = text
        self._show()

    def fields(self, **values) -> None:
        """Short figures shown after the bar (``loss=0.1234``): keep them few, full lines go to ``note``."""
        self.info = " ".join(f"{k} {v}" for k, v in values.items())
        self._show()

    def note(self, text: str) -> None:
        """A line of its own: above the bar on a terminal, as is elsewhere; nothing when ``off``."""
        if self.mode == "bar":
            self._rich.console.print(text, markup=False, highlight=False, soft_wrap=True)
        elif self.mode == "plain":
            self._write(text)

    def finish(self, message: str | None = None) -> None:
        """Done: the bar is completed (an early stop ends at 100 % too, saying why in ``message``)."""
        if self.total is not None:
            self.done = max(self.done, self.total)
        self.stage_text = ""
        if message and self.mode == "plain":  # one last line, whatever the step's length: the end and why
            self._write(self.line(end=message))
            self.ended = True
        elif message:
            self.note(f"{self.label}: {message}")
        self._end("done")

    def close(self, interrupted: bool = False) -> None:
        self._end("interrupted" if interrupted else "done")

    # -- drawing -----------------------------------------------------------------------------------------------
    def description(self) -> str:
        text = f"{self.label} · {self.stage_text}" if self.stage_text else self.label
        return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"

    def line(self, end: str = "") -> str:
        """The plain progress line: ``train · cache 40%: 120/800 queries (15%) · 4m10s elapsed · ETA 23m37s``."""
        now = self.clock()
        elapsed = now - self.started
        stage = f" · {self.stage_text}" if self.stage_text else ""
        head = f"{self.label}{stage}: {_num(self.done)}"
        if self.total:
            head += f"/{_num(self.total)}{' ' + self.unit if self.unit else ''} ({100 * self.done / self.total:.0f}%)"
        elif self.unit:
            head += f" {self.unit}"
        parts = [head, f"{duration(elapsed)} elapsed"]
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        if end:
            parts.append(end)
        elif self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        return " · ".join(parts) + (f" · {self.info}" if self.info else "")

    def _show(self) -> None:
        if self.ended:
            return
        if self.mode == "bar":
            self._rich.update(self._task, completed=self.done, total=self.total, description=self.description(),
                              info=self.info)
        elif self.mode == "plain" and self.clock() - self.last_line >= self.every_s:
            self._write(self.line())
            self.lines += 1
            self.last_line = self.clock()

    def _write(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stream: progress is not worth failing a step for
            pass

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.table import Column

        self._rich = RichProgress(
            TextColumn("{task.description}", table_column=Column(min_width=12, no_wrap=True)),
            BarColumn(bar_width=20), TaskProgressColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
            console=Console(file=self.stream), refresh_per_second=4, speed_estimate_period=120,
            redirect_stdout=False)  # stdout stays the command's output (a pipe gets no bar text)
        self._task = self._rich.add_task(self.description(), total=self.total, completed=self.done, info="")
        self._rich.start()

    def _end(self, how: str) -> None:
        if self.ended:
            return
        if self.mode == "bar":
            said = f"{self.label[:LABEL_CHARS - 14]} · interrupted" if how == "interrupted" else self.description()
            self._rich.update(self._task, completed=self.done, description=said, info=self.info)
            self._rich.stop()  # the last frame stays, followed by a newline: what comes next starts clean
        elif self.mode == "plain" and (self.lines or self.clock() - self.started >= self.every_s):
            # A step short enough to print no line ends silently, interrupted too: its error is the one line.
            self._write(self.line(end=how))
        self.ended = True


class Stage:
    """A ``progress`` opened inside another: it shows as the outer bar's stage label with its share done."""

    def __init__(self, outer: Progress, label: str, total: float | None):
        self.outer, self.label, self.total, self.done = outer, label, total, 0.0
        self.saved = outer.stage_text
        outer.stage(self._text())

    def _text(self) -> str:
        own = f"{self.label} {100 * self.done / self.total:.0f}%" if self.total else self.label
        return f"{self.saved}, {own}" if self.saved else own

    def advance(self, n: float = 1) -> None:
        self.done += n
        self.outer.stage(self._text())

    def moveto(self, done: float) -> None:
        self.done = done
        self.outer.stage(self._text())

    def set_total(self, total: float | None) -> None:
        self.total = total
        self.outer.stage(self._text())

    def stage(self, text: str) -> None:
        self.outer.stage(f"{self._text()} {text}" if text else self._text())

    def fields(self, **values) -> None:
        """Ignored on purpose: a stage shows as the outer bar's label; the outer bar keeps its own figures."""

    def note(self, text: str) -> None:
        self.outer.note(text)

    def finish(self, message: str | None = None) -> None:
        if message:
            self.outer.note(f"{self.label}: {message}")

    def close(self, interrupted: bool = False) -> None:
        self.outer.stage(self.saved)


@contextmanager
def progress(label: str, total: float | None = None, unit: str = "", *, initial: float = 0, enabled: bool = True,
             **options) -> Iterator[Progress | Stage]:
    """The step's bar, or a stage of the bar already open (module docstring). ``enabled=False`` (e.g. DDP ranks
    other than 0) gives a bar that shows nothing. ``options``: ``mode``, ``stream``, ``clock``, ``every_s``."""
    with _lock:
        outer = _open[-1] if _open else None
    if outer is not None and enabled:
        bar: Progress | Stage = Stage(outer, label, total)
    else:
        bar = Progress(label, total, unit, initial=initial, **({**options, "mode": "off"} if not enabled else options))
        with _lock:
            _open.append(bar)
    try:
        yield bar
    except BaseException:
        bar.close(interrupted=True)
        raise
    else:
        bar.close()
    finally:
        if isinstance(bar, Progress):
            with _lock:
                if bar in _open:
                    _open.remove(bar)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) and not x.is_integer() else f"{int(x):d}"
