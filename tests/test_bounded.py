"""shoesearch.bounded in-process, on a real DuckDB connection: a query past its time is interrupted with
QueryTimeout, time spent blocked writing output is not the query's, a query's own error reaches the caller.
(tests/test_cli_bounds.py checks the same through `shoesearch sql` processes, in the e2e set.)"""

from __future__ import annotations

import time

import duckdb
import pytest

from shoesearch.bounded import QueryTimeout, run_bounded

ENDLESS = "SELECT count(*) FROM range(1000000000000000)"
STALL_S = 10  # generous: an uninterrupted ENDLESS runs for hours


def test_a_query_past_its_deadline_is_interrupted_and_the_connection_still_answers():
    con = duckdb.connect()
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"query stopped after 0\.5 s \(sql\.timeout_s"):
        run_bounded(con, lambda budget: con.execute(ENDLESS).fetchall(), timeout_s=0.5)
    assert time.monotonic() - started < STALL_S
    assert con.execute("SELECT 41 + 1").fetchone() == (42,)


def test_time_blocked_writing_output_is_not_counted_against_the_query():
    class SlowReader:  # a pipe whose reader takes a while
        def __init__(self):
            self.lines: list[str] = []

        def write(self, text: str) -> None:
            time.sleep(0.4)
            self.lines.append(text)

    con, out = duckdb.connect(), SlowReader()

    def work(budget):
        writer = budget.writer(out)
        for (n,) in con.execute("SELECT range FROM range(3)").fetchall():
            writer.write(f"{n}\n")

    run_bounded(con, work, timeout_s=0.3)  # 1.2 s of writing, well within 0.3 s of query time
    assert out.lines == ["0\n", "1\n", "2\n"]


def test_the_querys_own_error_reaches_the_caller_and_no_deadline_means_none():
    con = duckdb.connect()
    with pytest.raises(duckdb.ParserException):
        run_bounded(con, lambda budget: con.execute("SELEC 1"), timeout_s=0)
    rows: list = []
    run_bounded(con, lambda budget: rows.extend(con.execute("SELECT 7").fetchall()), timeout_s=0)
    assert rows == [(7,)]
