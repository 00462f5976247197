"""Read-only commands through the real entry point (a subprocess of ``python -m shoesearch``):

* a missing (mistyped) home is refused with one line and is not created; writers still create it,
* ``sql`` reports a syntax error as one, and refuses anything but one read-only query,
* ``sql`` reads no file outside the warehouse and cannot forge a batch inside it (live or ``--snapshot``),
* ``search -k`` is bounded like the HTTP API (1..``api.max_k``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # each test runs `python -m shoesearch` as a process: outside the fast loop

CLI = [sys.executable, "-m", "shoesearch"]


def run_cli(*args: str, cwd: Path, home: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SHOESEARCH_HOME"}
    if home is not None:
        env["SHOESEARCH_HOME"] = str(home)
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    """The single ``shoesearch: error: ...`` line of a refused command (exit 2, nothing on stdout)."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoesearch: error: "), res.stderr
    assert res.stdout == "", res.stdout
    return lines[0].removeprefix("shoesearch: error: ")


def missing_home_message(home: Path) -> str:
    return (f"no shoesearch home at {home}: run `shoesearch ingest DIR` or `shoesearch crawl` first, "
            "or check --home")


@pytest.fixture
def photo(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "query.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return path


@pytest.fixture
def empty_home(tmp_path) -> Path:
    """An existing home with an (empty) warehouse."""
    from core.settings import Settings
    from warehouse import open_warehouse

    home = tmp_path / "home"
    open_warehouse(Settings.load(home=home))
    return home


# --- 1. a mistyped home ---------------------------------------------------------------------------------
READ_ONLY = [
    ["tables"], ["sql", "SELECT 1"], ["sql", "--snapshot", "SELECT 1"], ["lineage", "ingest-1"],
    ["lineage", "--index", "idx-1"], ["lineage", "--image", "jd:1#0"], ["search", "{photo}"],
    ["search", "{photo}", "-k", "3"], ["catalog"], ["catalog", "--snapshot"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_read_only_command_refuses_a_missing_home_and_creates_nothing(args, tmp_path, photo):
    home = tmp_path / "no-such-home"
    argv = [a.format(photo=photo) for a in args]
    assert one_line_error(run_cli("--home", str(home), *argv, cwd=tmp_path)) == missing_home_message(home)
    assert not home.exists()


def test_missing_home_from_env_or_default_is_not_created(tmp_path):
    home = tmp_path / "typo-home"
    assert one_line_error(run_cli("tables", cwd=tmp_path, home=home)) == missing_home_message(home)
    assert one_line_error(run_cli("sql", "SELECT 1", cwd=tmp_path)) == missing_home_message(tmp_path / "data")
    res = run_cli("settings", cwd=tmp_path, home=home)  # prints the settings, creates nothing either
    assert res.returncode == 0 and str(home) in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_existing_folder_without_a_warehouse_is_left_untouched(tmp_path):
    """``--home ~`` by mistake must not leave warehouse/ and catalog.duckdb in the home directory."""
    folder = tmp_path / "somewhere"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for args in (["tables"], ["catalog"], ["lineage", "--index", "x"]):
        assert one_line_error(run_cli("--home", str(folder), *args, cwd=tmp_path)) == missing_home_message(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_writers_still_create_the_home(tmp_path):
    from PIL import Image

    catalog = tmp_path / "catalog"
    for product, colour in (("boot", (120, 60, 20)), ("sneaker", (20, 60, 200))):
        (catalog / product).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (96, 96), tuple(c + 20 * i for c in colour)).save(catalog / product / f"{i}.jpg")
    home = tmp_path / "new-home"
    res = run_cli("--home", str(home), "ingest", str(catalog), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (home / "warehouse").is_dir()
    tables = run_cli("--home", str(home), "sql", "SELECT count(*) AS n FROM images_current", "--format", "csv",
                     cwd=tmp_path)
    assert tables.returncode == 0 and tables.stdout.split() == ["n", "4"], tables.stderr


# --- 2. sql: syntax errors and the read-only guard ---------------------------------------------------------
@pytest.mark.parametrize("query, message", [
    ("SELEC 1", 'query does not parse: syntax error at or near "SELEC"'),
    ("SELECT 'abc", "query does not parse: unterminated quoted string at or near \"'abc\""),
    ("SELECT * FROM products WHERE", "query does not parse: syntax error at end of input"),
])
def test_sql_reports_syntax_errors_on_one_line(query, message, empty_home, tmp_path):
    error = one_line_error(run_cli("sql", query, cwd=tmp_path, home=empty_home))
    assert error == message and "read-only" not in error


def test_sql_query_errors_are_one_line(empty_home, tmp_path):
    error = one_line_error(run_cli("sql", "SELECT nope FROM products", cwd=tmp_path, home=empty_home))
    assert error.startswith('query failed: Binder Error: Referenced column "nope" not found'), error


WRITES = [  # (query, what the refusal says); {out} is a file that must not appear
    ("INSERT INTO products (product_id) VALUES ('x')", "read-only (INSERT refused)"),
    ("CREATE TABLE t AS SELECT 1", "read-only (CREATE refused)"),
    ("COPY (SELECT 42) TO '{out}'", "read-only (COPY refused)"),
    ("ATTACH '{out}' AS other", "read-only (ATTACH refused)"),
    ("EXPORT DATABASE '{out}'", "read-only (EXPORT refused)"),
    ("SELECT 1; COPY (SELECT 42) TO '{out}'", "one query at a time; got 2 statements"),
    ("WITH x AS (SELECT 1) SELECT * FROM x; COPY (SELECT 42) TO '{out}'", "one query at a time; got 2 statements"),
    ("EXPLAIN ANALYZE COPY (SELECT 42) TO '{out}'", "read-only (COPY refused)"),
    ("-- a comment\nEXPLAIN ANALYZE COPY (SELECT 42) TO '{out}'", "read-only (COPY refused)"),
    ("SET threads = 1", "read-only (SET refused)"),
    ("LOAD httpfs", "read-only (LOAD refused)"),
]


@pytest.mark.parametrize("query, message", WRITES, ids=[q for q, _ in WRITES])
def test_sql_refuses_anything_but_one_read_only_query(query, message, empty_home, tmp_path):
    out = tmp_path / "written.out"
    error = one_line_error(run_cli("sql", query.format(out=out), cwd=tmp_path, home=empty_home))
    assert message in error, error
    assert not out.exists()


@pytest.mark.parametrize("query", [
    "SELECT 1 AS n", "WITH x AS (SELECT 1 AS n) SELECT n FROM x", "FROM products", "DESCRIBE products",
    "SHOW TABLES", "SUMMARIZE runs", "VALUES (1)", "TABLE products", "(SELECT 1)", "EXPLAIN SELECT 1",
    "EXPLAIN ANALYZE SELECT count(*) FROM images", "-- why\nSELECT 1;", "PIVOT (VALUES ('a', 1)) t(k, v) ON k",
    # the README's analyst queries (the connection is confined to the warehouse: the views still read it)
    "SELECT p.brand, count(*) AS photos, round(avg(d.kept::INT), 3) AS kept_rate FROM images_current i "
    "JOIN denoise_current d USING (image_key) JOIN products_current p ON p.product_key = i.product_key "
    "GROUP BY 1 ORDER BY 2 DESC",
    "SELECT * FROM runs ORDER BY started_at DESC LIMIT 5", "SELECT step, status, count(*) FROM runs GROUP BY ALL",
    "SELECT count(*) FROM glob('{warehouse}/products/*')",
])
def test_sql_runs_read_only_queries(query, empty_home, tmp_path):
    query = query.replace("{warehouse}", str(empty_home / "warehouse"))
    res = run_cli("sql", query, "--format", "csv", cwd=tmp_path, home=empty_home)
    assert res.returncode == 0 and res.stdout.strip(), (query, res.stderr)


@pytest.fixture
def snapshot_home(empty_home, tmp_path) -> Path:
    res = run_cli("catalog", "--snapshot", cwd=tmp_path, home=empty_home)
    assert res.returncode == 0, res.stderr
    return empty_home


def outside_files(tmp_path: Path) -> dict[str, Path]:
    """Files a query must not read: outside the home, and inside the home but outside its warehouse."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text("password=hunter2\n")
    pq.write_table(pa.table({"password": ["hunter2"]}), secret.with_suffix(".parquet"))
    return {"secret": secret, "parquet": secret.with_suffix(".parquet")}


FILE_READS = [
    "SELECT * FROM read_csv('/etc/passwd', sep=':')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/root/**')",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT * FROM read_parquet('{parquet}')",
    "FROM '{parquet}'",
    "SELECT * FROM glob('{secret_dir}/*')",
    "SELECT * FROM read_text('{home}/catalog.sql')",  # in the home, not in its warehouse
    "SELECT * FROM read_text('{home}/warehouse/../catalog.sql')",
    "SELECT * FROM read_csv('https://example.com/x.csv')",
]


@pytest.mark.parametrize("snapshot", [False, True], ids=["live", "snapshot"])
@pytest.mark.parametrize("query", FILE_READS)
def test_sql_reads_no_file_outside_the_warehouse(query, snapshot, snapshot_home, tmp_path):
    files = outside_files(tmp_path)
    query = query.format(secret=files["secret"], parquet=files["parquet"], secret_dir=files["secret"].parent,
                         home=snapshot_home)
    argv = ["sql", *(["--snapshot"] if snapshot else []), query]
    error = one_line_error(run_cli(*argv, cwd=tmp_path, home=snapshot_home))
    assert error.startswith("query failed: Permission Error: "), error
    assert "shoesearch sql reads " in error and "hunter2" not in error and "root:" not in error


def test_sql_connection_cannot_lift_its_confinement(empty_home):
    """Engine level, beneath the parser check: the settings are locked once the views exist."""
    import duckdb

    from core.settings import Settings
    from warehouse import open_warehouse

    con = open_warehouse(Settings.load(home=empty_home)).connect(confined=True)
    for setting in ("SET enable_external_access = true", "SET allowed_directories = ['/']",
                    "SET lock_configuration = false", "RESET enable_external_access"):
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute(setting)
    with pytest.raises(duckdb.PermissionException):
        con.execute("SELECT * FROM read_text('/etc/passwd')")
    assert con.execute("SELECT count(*) FROM products_current").fetchone() == (0,)


FORGERIES = [  # each would add a batch of products if it ran
    "COPY (SELECT 'forged:1' AS product_id, 'catalog' AS source) TO '{batch}/part-0.parquet' (FORMAT parquet)",
    "SELECT 1; COPY (SELECT 'forged:1' AS product_id) TO '{batch}/part-0.parquet' (FORMAT parquet)",
    "EXPLAIN ANALYZE COPY (SELECT 'forged:1' AS product_id) TO '{batch}/part-0.parquet' (FORMAT parquet)",
    "COPY (SELECT 'forged:1' AS product_id) TO '{batch}' (FORMAT parquet, PARTITION_BY (product_id))",
    "SELECT 1; ATTACH '{batch}.duckdb' AS forged; CREATE TABLE forged.t AS SELECT 1",
    "EXPORT DATABASE '{batch}' (FORMAT parquet)",
]


@pytest.mark.parametrize("snapshot", [False, True], ids=["live", "snapshot"])
@pytest.mark.parametrize("query", FORGERIES)
def test_sql_cannot_forge_a_batch(query, snapshot, snapshot_home, tmp_path):
    products = snapshot_home / "warehouse" / "products"
    before = sorted(p.name for p in products.iterdir())
    argv = ["sql", *(["--snapshot"] if snapshot else []), query.format(batch=products / "batch-zz")]
    error = one_line_error(run_cli(*argv, cwd=tmp_path, home=snapshot_home))
    assert "read-only" in error or "one query at a time" in error, error
    assert sorted(p.name for p in products.iterdir()) == before
    counted = run_cli("sql", "SELECT count(*) AS n FROM products", "--format", "csv", cwd=tmp_path,
                      home=snapshot_home)
    assert counted.stdout.split() == ["n", "0"], counted.stderr


def test_sql_empty_query_is_refused(empty_home, tmp_path):
    assert one_line_error(run_cli("sql", " ; ", cwd=tmp_path, home=empty_home)).startswith("no query given")


# --- 3. search -k: the HTTP API's bound ---------------------------------------------------------------------
# The default api.max_k is 100; the last case shows the bound is the setting the API reads.
@pytest.mark.parametrize("k, overrides, bound", [
    ("0", [], 100), ("-1", [], 100), ("101", [], 100), ("6", ["--set", "api.max_k=5"], 5),
])
def test_search_k_outside_the_api_bound_is_refused(k, overrides, bound, empty_home, tmp_path, photo):
    error = one_line_error(run_cli(*overrides, "search", str(photo), "-k", k, cwd=tmp_path, home=empty_home))
    assert error == f"k must be between 1 and {bound} (api.max_k), got {k}"


def test_search_k_at_the_bound_searches(indexed_home, tmp_path):
    from core.settings import Settings
    from warehouse import open_warehouse

    settings = Settings.load(home=indexed_home)  # its shoesearch.toml holds the fixture's settings
    front = open_warehouse(settings).query(
        "SELECT product_id, path FROM images_current WHERE position = 0 ORDER BY product_id LIMIT 1").to_pylist()[0]
    photo = settings.images_dir / front["path"]
    res = run_cli("--set", "api.max_k=3", "search", str(photo), "-k", "3", "--format", "csv",
                  cwd=tmp_path, home=indexed_home)
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.strip().splitlines()
    assert len(rows) == 3 and rows[0].split(",")[header.split(",").index("product_id")] == front["product_id"], res.stdout


def test_output_into_a_closed_pipe_ends_quietly(empty_home, tmp_path):
    """``shoesearch sql ... | head -1``: the reader leaves early; the CLI exits 141 (SIGPIPE's status) with
    nothing on stderr, not an "unexpected BrokenPipeError"."""
    env = {**os.environ, "SHOESEARCH_HOME": str(empty_home)}
    proc = subprocess.Popen([*CLI, "sql", "--format", "csv", "SELECT range AS n FROM range(200000)"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().split() == [b"n"]
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""
