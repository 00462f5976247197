"""``shoesearch sql`` within bounds, and hostile data printed and stored safely (issue 25, items 5, 16, 17).

* 5: the table format fetches only the rows it shows, CSV / JSON stream in batches (peak memory of the real
  subprocess, from ``wait4``), a query past ``sql.timeout_s`` is stopped with one line, Ctrl-C (SIGINT) stops
  a running query within seconds (exit 130), and ``sql.memory_limit`` / ``sql.max_temp_directory_size`` reach DuckDB.
* 16: control characters in data (a title holding ``ESC ] 0 ; pwned BEL``) are escaped in the terminal tables of
  ``sql`` and ``search``; CSV and JSON keep the data exact.
* 17: NaN / Infinity / 1e999 prices are stored as null and counted; ``sql --format json`` is strict JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_cli_readonly import CLI, empty_home, one_line_error, run_cli  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e  # each test runs `python -m shoesearch` as a process: outside the fast loop

HOSTILE = "Air \x1b]0;pwned\x07Max\x9b2J\u202e"  # OSC (retitles the terminal), C1 CSI, a bidi override
ESCAPED = "Air \\x1b]0;pwned\\x07Max\\x9b2J\\u202e"


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _child_env(home: Path) -> dict:
    return {**os.environ, "SHOESEARCH_HOME": str(home)}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a terminal, whatever this test runner ignores


def run_measured(args: list[str], home: Path, cwd: Path) -> tuple[int, int, str, str]:
    """(exit code, peak RSS in MB, stdout's line count, stderr) of ``shoesearch ARGS``, its memory from ``wait4``."""
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, env=_child_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines, tail = 0, ""
    for line in proc.stdout:
        lines, tail = lines + 1, line
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss // 1024, f"{lines} {tail}", err


# --- 5. resource bounds ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured_home(tmp_path_factory) -> tuple[Path, int]:
    """An empty home, and the peak RSS (MB) of ``shoesearch sql 'SELECT 1'`` in it: the baseline."""
    from core.settings import Settings
    from warehouse import open_warehouse

    home = tmp_path_factory.mktemp("bounds") / "home"
    open_warehouse(Settings.load(home=home))
    code, base_mb, _, err = run_measured(["sql", "SELECT 1"], home, home.parent)
    assert code == 0, err
    return home, base_mb


def test_sql_table_fetches_only_the_rows_it_shows(measured_home):
    home, base_mb = measured_home
    code, peak_mb, out, err = run_measured(["sql", "SELECT * FROM range(20000000)", "--max-rows", "3"], home, home.parent)
    assert code == 0, err
    assert out == "6 (more than 3 rows, 3 shown)\n", out  # header, dashes, 3 rows, footer
    assert peak_mb < base_mb + 120, (peak_mb, base_mb)  # was 5 GB: every row became a Python dict first


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_sql_csv_and_json_stream_in_bounded_memory(fmt, measured_home):
    home, base_mb = measured_home
    query = "SELECT range AS n, repeat('x', 400) AS s FROM range(150000)"  # 61 MB of CSV
    code, peak_mb, out, err = run_measured(["sql", query, "--format", fmt], home, home.parent)
    assert code == 0, err
    assert out == ("150001 149999," + "x" * 400 + "\n" if fmt == "csv" else f"{150000 * 4 + 2} ]\n"), out[:80]
    assert peak_mb < base_mb + 120, (peak_mb, base_mb)  # was base + 280 MB (CSV) / + 370 MB (JSON): all rows at once


@pytest.mark.parametrize("query", [
    "SELECT count(*) FROM range(1000000000000000)",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
], ids=["1e15 rows", "endless recursive CTE"])
def test_sql_query_past_its_timeout_is_stopped(query, empty_home, tmp_path):
    started = time.monotonic()
    res = run_cli("--set", "sql.timeout_s=1", "sql", query, cwd=tmp_path, home=empty_home, timeout=60)
    assert one_line_error(res).startswith("query stopped after 1 s (sql.timeout_s; raise it with --set")
    assert time.monotonic() - started < 30  # the process start plus the second; before, it never stopped


def test_ctrl_c_stops_a_running_query(empty_home, tmp_path):
    proc = subprocess.Popen([*CLI, "sql", "SELECT count(*) FROM range(1000000000000000)"], cwd=tmp_path,
                            env=_child_env(empty_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 60
        while "_duckdb" not in Path(f"/proc/{proc.pid}/maps").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)  # DuckDB is loaded once the command runs (inside the CLI's error handling)
        time.sleep(3)  # ... and the query is running well before this
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=20)  # before: still running 15 s after SIGINT
    finally:
        proc.kill()
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130 and err.strip() == "interrupted" and out == "", (proc.returncode, err)


def test_sql_memory_and_spill_limits_reach_duckdb(empty_home, tmp_path):
    query = "SELECT current_setting('memory_limit') AS m, current_setting('max_temp_directory_size') AS t"
    res = run_cli("--set", "sql.memory_limit=300MB", "--set", "sql.max_temp_directory_size=200MB", "sql", query,
                  "--format", "csv", cwd=tmp_path, home=empty_home)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1] == "286.1 MiB,190.7 MiB", res.stdout  # DuckDB shows them in MiB
    heavy = "SELECT range % 1000003 AS k, list(range) FROM range(30000000) GROUP BY 1 ORDER BY 1 DESC LIMIT 1"
    error = one_line_error(run_cli("--set", "sql.memory_limit=60MB", "--set", "sql.max_temp_directory_size=30MB",
                                   "sql", heavy, cwd=tmp_path, home=empty_home))
    assert error.startswith("query failed: Out of Memory Error") and "sql.memory_limit=60MB" in error, error
    bad = run_cli("--set", "sql.memory_limit=lots", "sql", "SELECT 1", cwd=tmp_path, home=empty_home)
    assert bad.returncode == 2 and "sql.memory_limit" in bad.stderr and len(bad.stderr.splitlines()) == 1


# --- 16. control characters ---------------------------------------------------------------------------------
def write_products(home: Path, rows: list[dict]) -> str:
    from core.settings import Settings
    from warehouse import open_warehouse, start_run

    with start_run(open_warehouse(Settings.load(home=home)), step="ingest") as run:
        run.write("products", [{"source": "catalog", **row} for row in rows])
    return run.run_id


def test_sql_table_escapes_control_characters(empty_home, tmp_path):
    write_products(empty_home, [{"product_id": "shoes:\x1b[31mred", "title": HOSTILE}])
    table = run_cli("sql", "SELECT product_id, title FROM products", cwd=tmp_path, home=empty_home)
    assert table.returncode == 0, table.stderr
    assert ESCAPED in table.stdout and "shoes:\\x1b[31mred" in table.stdout, table.stdout
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) <= 0x9f for c in table.stdout), repr(table.stdout)
    as_json = run_cli("sql", "SELECT title FROM products", "--format", "json", cwd=tmp_path, home=empty_home)
    assert _strict(as_json.stdout) == [{"title": HOSTILE}]  # the data itself, exact
    assert not any(0x7f <= ord(c) <= 0x9f or ord(c) < 0x20 and c != "\n" for c in as_json.stdout)
    as_csv = run_cli("sql", "SELECT title FROM products", "--format", "csv", cwd=tmp_path, home=empty_home)
    assert as_csv.stdout == f"title\n{HOSTILE}\n"
    error = one_line_error(run_cli("sql", "SELECT title::INT FROM products", cwd=tmp_path, home=empty_home))
    assert "\\x1b]0;pwned\\x07" in error and "\x1b" not in error, error  # DuckDB's message quotes the data


def test_search_table_escapes_control_characters(indexed_settings, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from index.store import PRODUCTS_FILE
    from warehouse import open_warehouse

    settings = indexed_settings
    wh = open_warehouse(settings)
    front = wh.query("SELECT product_id, path FROM images_current WHERE position = 0 ORDER BY product_id LIMIT 1"
                     ).to_pylist()[0]
    products = settings.home / wh.query("SELECT path FROM indexes_current").to_pylist()[0]["path"] / PRODUCTS_FILE
    rows = [{**p, "title": HOSTILE} if p["product_id"] == front["product_id"] else p
            for p in pq.read_table(products).to_pylist()]  # the titles the search shows (copied at index time)
    pq.write_table(pa.Table.from_pylist(rows), products)
    res = run_cli("search", str(settings.images_dir / front["path"]), "-k", "2", cwd=tmp_path, home=settings.home)
    assert res.returncode == 0, res.stderr
    assert "Air \\x1b]0;pwned\\x07Max" in res.stdout and "\x1b" not in res.stdout and "\x07" not in res.stdout


# --- 17. non-finite numbers ---------------------------------------------------------------------------------
def test_non_finite_prices_are_stored_null_and_counted(empty_home, tmp_path):
    from crawlers.jdsite import parse_prices

    quoted = json.loads('{"nan": NaN, "inf": Infinity, "big": 1e999, "ok": 399.0}')  # as products.json reads
    api = parse_prices('[{"id": "J_7", "p": "Infinity", "m": "1e999"}]')["7"]  # as the price API answers
    run_id = write_products(empty_home, [
        {"product_id": "shoes:nan", "price": quoted["nan"], "list_price": quoted["ok"]},
        {"product_id": "shoes:inf", "price": quoted["inf"], "list_price": -quoted["inf"]},
        {"product_id": "shoes:big", "price": quoted["big"]},
        {"product_id": "jd:7", "price": api["price"], "list_price": api["list_price"]},
    ])
    res = run_cli("sql", "SELECT product_id, price, list_price FROM products ORDER BY 1", "--format", "json",
                  cwd=tmp_path, home=empty_home)
    assert res.returncode == 0, res.stderr
    assert _strict(res.stdout) == [
        {"product_id": "jd:7", "price": None, "list_price": None},
        {"product_id": "shoes:big", "price": None, "list_price": None},
        {"product_id": "shoes:inf", "price": None, "list_price": None},
        {"product_id": "shoes:nan", "price": None, "list_price": 399.0},
    ]
    runs = run_cli("sql", f"SELECT output_rows FROM runs WHERE run_id = '{run_id}'", "--format", "json",
                   cwd=tmp_path, home=empty_home)
    assert json.loads(_strict(runs.stdout)[0]["output_rows"]) == {
        "products": 4, "products.price not finite, stored null": 4, "products.list_price not finite, stored null": 2}


def test_sql_json_is_strict_even_for_computed_non_finite_values(empty_home, tmp_path):
    query = "SELECT 'nan'::DOUBLE AS a, '-inf'::DOUBLE AS b, [1.5, 'inf'::DOUBLE] AS c, {'x': 'nan'::FLOAT} AS d"
    res = run_cli("sql", query, "--format", "json", cwd=tmp_path, home=empty_home)
    assert res.returncode == 0, res.stderr
    assert _strict(res.stdout) == [{"a": None, "b": None, "c": [1.5, None], "d": {"x": None}}]


def test_crawl_stores_a_price_apis_nan_and_infinity_as_null_and_counts_them(crawl_settings, make_shop, tmp_path):
    """A real Scrapy crawl of the demo shop whose price API answers NaN / Infinity / 1e999 for products 0, 3, 6
    (fault bad_price=3): those prices are null, the others kept, and the crawl's stats count them."""
    import httpx

    from tasks.crawl import crawl, crawl_summary

    shop = make_shop(faults="bad_price=3", n=8)
    wanted = {p["sku"]: p["price"] for p in httpx.get(f"{shop.url}/_shop/manifest.json").json()["products"]}
    summary = crawl_summary(crawl_settings, crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[]))
    assert summary["products_written"] == 8, summary
    assert summary["stats"]["shoesearch/not_finite_nulled/products.price"] == 3
    assert summary["stats"]["shoesearch/not_finite_nulled/products.list_price"] == 3
    res = run_cli("sql", "SELECT sku, price FROM products ORDER BY sku", "--format", "json", cwd=tmp_path,
                  home=crawl_settings.home)
    got = {row["sku"]: row["price"] for row in _strict(res.stdout)}
    assert got == {sku: None if i % 3 == 0 else round(price, 2) for i, (sku, price) in enumerate(wanted.items())}, got
