"""``core.progress``: one bar per step, plain lines when the output is not a terminal, honest ends."""

from __future__ import annotations

import io
import logging
import re

import pytest

from core.progress import Progress, progress, run_logger


class Clock:
    """A clock the test moves by hand: the 30 s plain lines without waiting 30 s."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_come_every_interval_with_stage_eta_and_epoch_notes():
    out, clock = io.StringIO(), Clock()
    with progress("train", 800, "queries", stream=out, clock=clock, every_s=30) as bar:
        assert bar.mode == "plain"  # a StringIO is not a terminal
        bar.stage("epoch 1/8")
        bar.advance(50)
        assert out.getvalue() == ""  # nothing before the first interval: short steps print nothing
        with progress("cache", 200, "photos") as stage:  # a stage inside the step: the same bar's label
            clock.now += 31
            stage.advance(80)
        bar.advance(50)
        clock.now += 29
        bar.advance(10)  # 29 s after the last line: no new line
        clock.now += 2
        bar.advance(90)
        bar.note("train: epoch 1/8: loss 0.1234, val R@1 0.812 (new best)")
    lines = out.getvalue().splitlines()
    assert lines[0] == "train · epoch 1/8, cache 40%: 50/800 queries (6%) · 31s elapsed · ETA 7m45s"
    assert lines[1] == "train · epoch 1/8: 200/800 queries (25%) · 1m02s elapsed · ETA 3m06s"
    assert lines[2] == "train: epoch 1/8: loss 0.1234, val R@1 0.812 (new best)"  # notes print at once
    assert lines[3] == "train · epoch 1/8: 200/800 queries (25%) · 1m02s elapsed · done"
    assert len(lines) == 4


def test_a_short_step_prints_nothing_and_an_interrupted_one_says_so():
    """A short step ends silently, also when it fails (its error is the one line printed); a step interrupted
    after the first interval says where it stopped."""
    out, clock = io.StringIO(), Clock()
    with progress("ingest", 10, "products", stream=out, clock=clock) as bar:
        bar.advance(10)
    with pytest.raises(ValueError), progress("embed", 10, "photos", stream=out, clock=clock) as bar:
        bar.advance(1)
        raise ValueError("bad vectors")
    assert out.getvalue() == ""
    with pytest.raises(KeyboardInterrupt), progress("embed", 10, "photos", stream=out, clock=clock) as bar:
        bar.advance(3)
        clock.now += 40
        raise KeyboardInterrupt
    assert out.getvalue() == "embed: 3/10 photos (30%) · 40s elapsed · interrupted\n"
    with progress("next", 1, stream=out, clock=clock) as bar:  # the interrupted bar is gone: a bar of its own
        assert isinstance(bar, Progress) and bar.label == "next"


def test_finish_completes_the_bar_and_says_why():
    out, clock = io.StringIO(), Clock()
    with progress("train", 80, "queries", stream=out, clock=clock) as bar:
        bar.advance(70)
        bar.finish("stopped early at epoch 7: no gain for 3 epochs")
        assert bar.done == 80
    assert out.getvalue().splitlines() == [
        "train: 80/80 queries (100%) · 0s elapsed · stopped early at epoch 7: no gain for 3 epochs"]


def test_the_terminal_bar_draws_one_line_with_a_short_label_and_stops_cleanly():
    """On a terminal: a rich bar (label cut to its room, the ETA), notes above it, and on Ctrl-C the bar
    marked ``interrupted`` and ended with a newline, so what is printed next starts on a line of its own."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    with pytest.raises(KeyboardInterrupt), progress("embed (imagenet)", 100, "photos", stream=out) as bar:
        assert bar.mode == "bar"
        bar.stage("a very long internal stage name that would eat the bar")
        assert len(bar.description()) <= 30 and bar.description().endswith("…")
        bar.advance(40)
        bar.note("a line above the bar")
        raise KeyboardInterrupt
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue())  # the terminal's colours and cursor codes
    assert "\ra line above the bar\n" in text and "40/100" in text
    assert re.search(r"\rembed \(imagenet\) · interrupted [━╸╺]+ +40% +40/100 0:00:00 ETA -:--:-- *\n$", text), text


def test_a_bar_that_is_off_shows_nothing_also_for_its_stages():
    out = io.StringIO()
    with progress("train", 10, enabled=False, stream=out) as bar, progress("cache", 5) as stage:
        stage.advance(5)
        bar.note("rank 1 says nothing")
        bar.finish("done")
    assert out.getvalue() == ""


def test_run_logger_is_the_module_logger_outside_a_prefect_run():
    log = run_logger("train")
    assert isinstance(log, logging.Logger) and log.name == "shoesearch.train"


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="progress mode"):
        Progress("x", 1, mode="fancy")
