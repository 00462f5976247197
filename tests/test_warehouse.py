"""Foundation: atomic writes, concurrent readers, schema checks, lineage, SQL and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.files import atomic_path, atomic_write_text
from warehouse import SchemaError, Warehouse, conform, lineage, open_warehouse, start_run
from warehouse.runs import latest_run

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "shoesearch"]


def product(pid: str, **extra) -> dict:
    return {"product_id": pid, "source": "catalog", "title": f"shoe {pid}", **extra}


def run_cli(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOESEARCH_HOME": str(home)}
    return subprocess.run([*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_commit_is_visible_and_tagged_with_run_id(wh):
    with start_run(wh, "ingest", params={"n": 2}) as run:
        run.write("products", [product("c:1", brand="Nike"), product("c:2", brand="Anta")])
    rows = wh.query("SELECT product_id, run_id FROM products ORDER BY product_id").to_pylist()
    assert [r["product_id"] for r in rows] == ["c:1", "c:2"]
    assert {r["run_id"] for r in rows} == {run.run_id}
    status = wh.query("SELECT status, output_rows FROM runs WHERE run_id = ?", [run.run_id]).to_pylist()[0]
    assert status["status"] == "success" and json.loads(status["output_rows"]) == {"products": 2}


def test_failed_step_leaves_tables_as_they_were(wh):
    with start_run(wh, "ingest") as first:
        first.write("products", [product("c:1")])
    with pytest.raises(RuntimeError):
        with start_run(wh, "ingest") as second:
            second.write("products", [product("c:2"), product("c:3")])
            raise RuntimeError("boom")
    assert wh.query("SELECT product_id FROM products").column(0).to_pylist() == ["c:1"]
    failed = wh.query("SELECT status, message FROM runs WHERE run_id = ?", [second.run_id]).to_pylist()[0]
    assert failed["status"] == "failed" and "boom" in failed["message"]
    assert latest_run(wh, "ingest") == first.run_id


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from warehouse import Warehouse
    from warehouse.store import Warehouse as W
    wh = Warehouse(sys.argv[1])
    txn = wh.begin("crash-run")
    txn.write("products", [{"product_id": "c:new", "source": "catalog"}])
    if sys.argv[2] == "after-commit-marker":
        # The COMMIT marker is written, the renames are not: recovery must roll forward.
        W._roll_forward = lambda self, staged: os._exit(17)
        txn.commit()
    os._exit(17)  # a crash: no cleanup, no exception handling
    """
)


@pytest.mark.parametrize("moment, visible", [("before-commit", False), ("after-commit-marker", True)])
def test_crash_mid_commit_is_rolled_back_or_forward(settings, moment, visible):
    wh = open_warehouse(settings)
    wh.write("seed-run", {"products": [product("c:old")]})
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(wh.root), moment], cwd=REPO)
    assert proc.returncode == 17
    # Before recovery a reader already sees either the old table or the whole new batch, never a part.
    assert wh.query("SELECT count(*) FROM products WHERE product_id = 'c:old'").column(0)[0].as_py() == 1
    reopened = Warehouse(wh.root)  # opening recovers
    ids = sorted(reopened.query("SELECT product_id FROM products").column(0).to_pylist())
    assert ids == (["c:new", "c:old"] if visible else ["c:old"])
    assert list(reopened.staging_dir.iterdir()) == []


def test_atomic_file_write_keeps_old_content_on_crash(tmp_path, monkeypatch):
    target = tmp_path / "CURRENT"
    atomic_write_text(target, "old")

    def crash(*_):
        raise OSError("disk vanished between temp write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"


def test_a_writer_that_fails_inside_atomic_path_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "models" / "m.pt"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"v1")
    with pytest.raises(ValueError, match="half way"), atomic_path(target) as tmp:
        tmp.write_bytes(b"v2 torn")
        raise ValueError("the writer failed half way")
    assert target.read_bytes() == b"v1" and [p.name for p in target.parent.iterdir()] == ["m.pt"]


@pytest.mark.parametrize(
    "rows, column",
    [
        ([{"product_id": "c:1", "source": "catalog", "price": "cheap"}], "price"),
        ([{"product_id": None, "source": "catalog"}], "product_id"),
        ([{"source": "catalog"}], "product_id"),
        ([{"product_id": "c:1", "source": "catalog", "colour": "red"}], "colour"),
    ],
)
def test_schema_violations_name_the_column(rows, column):
    with pytest.raises(SchemaError, match=repr(column)):
        conform("products", rows, run_id="r")


def test_unknown_table_is_rejected():
    with pytest.raises(SchemaError, match="unknown table"):
        conform("shoes", [{"a": 1}])


def test_lineage_of_three_step_run(wh):
    with start_run(wh, "crawl") as crawl:
        crawl.write("products", [product("jd:1")])
        crawl.write("images", [{"image_id": "jd:1#0", "product_id": "jd:1", "position": 0, "status": "ok",
                                "sha1": "ab"}])
    with start_run(wh, "embed", inputs=[crawl.run_id]) as embed:
        pass
    with start_run(wh, "denoise", inputs=[embed.run_id, crawl.run_id]) as denoise:
        denoise.write("denoise", [{"image_id": "jd:1#0", "product_id": "jd:1", "sha1": "ab", "threshold": 1.0,
                                   "kept": True, "reason": "anchor"}])
    chain = lineage(wh, denoise.run_id)
    assert [(r["run_id"], r["depth"]) for r in chain] == [
        (denoise.run_id, 0), (embed.run_id, 1), (crawl.run_id, 1)]
    assert {r["step"] for r in chain} == {"crawl", "embed", "denoise"}
    assert wh.query("SELECT count(*) FROM denoise_current").column(0)[0].as_py() == 1
    with pytest.raises(KeyError):
        lineage(wh, "no-such-run")


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from warehouse import Warehouse
    wh = Warehouse(sys.argv[1])
    for i in range(int(sys.argv[2])):
        time.sleep(0.1)  # keep appending while the reader queries
        wh.write(f"w{i}", {"images": [{"image_id": f"x{i}-{k}", "product_id": f"x{i}", "position": k,
                                        "status": "ok"} for k in range(50)]})
    """
)


@pytest.mark.e2e
def test_sql_reader_while_another_process_appends(settings):
    wh = open_warehouse(settings)
    writer = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(wh.root), "40"], cwd=REPO)
    counts = []
    try:
        while writer.poll() is None or not counts:
            out = run_cli("sql", "SELECT count(*) AS n FROM images", "--format", "json", home=settings.home)
            assert out.returncode == 0, out.stderr
            assert "lock" not in out.stderr.lower()
            counts.append(json.loads(out.stdout)[0]["n"])
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert all(n % 50 == 0 for n in counts), counts  # never half a batch
    assert any(0 < n < 2000 for n in counts), counts  # some reads really overlapped the writes
    assert counts == sorted(counts)
    final = run_cli("sql", "SELECT count(*) AS n FROM images", "--format", "csv", home=settings.home)
    assert final.stdout.strip().splitlines() == ["n", "2000"]
    # And the catalog file opens in the duckdb CLI while nothing else holds it.
    duckdb_cli = Path(sys.executable).with_name("duckdb")
    if duckdb_cli.exists():
        res = subprocess.run([str(duckdb_cli), "-readonly", "-csv", str(settings.views_path), "-c",
                              "SELECT count(*) AS n FROM images"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["n", "2000"]


@pytest.mark.e2e
def test_cli_help_tables_and_errors(settings):
    wh = open_warehouse(settings)
    with start_run(wh, "ingest") as run:
        run.write("products", [product("c:1", brand="Nike"), product("c:2", brand="Nike")])
    help_out = run_cli("--help", home=settings.home)
    assert help_out.returncode == 0
    for command in ("tables", "sql", "lineage", "catalog", "settings"):
        assert command in help_out.stdout
    tables = run_cli("tables", "--format", "json", home=settings.home)
    by_name = {r["table_name"]: r for r in json.loads(tables.stdout)}
    assert by_name["products"]["rows"] == 2 and by_name["products"]["last_run_id"] == run.run_id
    grouped = run_cli("sql", "SELECT brand, count(*) AS n FROM products_current GROUP BY brand", home=settings.home)
    assert "Nike" in grouped.stdout and "2" in grouped.stdout
    for bad in (["no-such-command"], ["sql", "SELEC nonsense"], ["sql", "DELETE FROM products"],
                ["lineage", "missing-run"], ["--set", "train.nope=1", "tables"]):
        res = run_cli(*bad, home=settings.home)
        assert res.returncode != 0, bad
        assert "Traceback" not in res.stderr and "error" in res.stderr.lower(), (bad, res.stderr)


def test_settings_layering(tmp_path, monkeypatch):
    from core.settings import Settings

    (tmp_path / "shoesearch.toml").write_text("[train]\nepochs = 7\nmargin = 0.2\n")
    monkeypatch.setenv("SHOESEARCH_TRAIN__EPOCHS", "9")
    s = Settings.load(home=tmp_path, overrides={"denoise.threshold": "0.8"})
    assert (s.train.epochs, s.train.margin, s.denoise.threshold) == (9, 0.2, 0.8)
    assert s.warehouse_dir == tmp_path.resolve() / "warehouse"
    with pytest.raises(KeyError, match="unknown setting"):
        s.set("train.epoch", 3)
    with pytest.raises(ValueError, match="train.epochs"):
        s.set("train.epochs", "many")


def test_integer_keys_are_filled_and_snapshot_is_a_stable_copy(settings):
    from warehouse import key_of
    from warehouse.views import write_views_file

    wh = open_warehouse(settings)
    wh.write("r1", {"products": [product("c:1", brand="Nike")],
                    "images": [{"image_id": "c:1#0", "product_id": "c:1", "position": 0, "status": "ok"}]})
    row = wh.query("SELECT i.image_key, i.product_key, p.product_key AS pk FROM images i JOIN products p "
                   "USING (product_key)").to_pylist()[0]
    assert row == {"image_key": key_of("c:1#0"), "product_key": key_of("c:1"), "pk": key_of("c:1")}
    write_views_file(wh, settings.snapshot_path, materialize=True)
    wh.write("r2", {"products": [product("c:2")]})
    snap = run_cli("sql", "--snapshot", "SELECT count(*) AS n FROM products_current", "--format", "csv", home=settings.home)
    live = run_cli("sql", "SELECT count(*) AS n FROM products_current", "--format", "csv", home=settings.home)
    assert snap.stdout.split() == ["n", "1"] and live.stdout.split() == ["n", "2"]
