"""A home written before the integer keys (``product_key``, ``image_key``) opens: it is upgraded in place.

The old home is made the way the old version wrote it: the same tables without the key columns
(every committed file, the empty schema files included) and no ``_format.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from warehouse import key_of, open_warehouse, start_run
from warehouse.migrate import FORMAT_FILE, FORMAT_VERSION, backfill_keys
from warehouse.schemas import KEY_SOURCES

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "shoesearch"]
KEYED = ("products", "images", "denoise")


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOESEARCH_HOME": str(home)}
    return subprocess.run([*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def make_old_home(settings) -> Path:
    wh = open_warehouse(settings)
    with start_run(wh, "ingest") as run:
        run.write("products", [{"product_id": f"c:{p}", "source": "catalog", "brand": "Nike"} for p in range(3)])
        run.write("images", [{"image_id": f"c:{p}#{i}", "product_id": f"c:{p}", "position": i, "status": "ok",
                              "sha1": f"{p}{i}"} for p in range(3) for i in range(2)])
    with start_run(wh, "denoise") as run:
        run.write("denoise", [{"image_id": f"c:{p}#{i}", "product_id": f"c:{p}", "position": i, "sha1": f"{p}{i}",
                               "threshold": 1.0, "kept": i == 0, "reason": "anchor" if i == 0 else "far"}
                              for p in range(3) for i in range(2)])
    for table in KEYED:
        for part in (wh.root / table).glob("batch-*/*.parquet"):
            old = pq.read_table(part)
            pq.write_table(old.drop_columns([k for k in KEY_SOURCES if k in old.column_names]), part)
    (wh.root / FORMAT_FILE).unlink()
    return wh.root


def keyless_files(root: Path) -> list[Path]:
    return [part for table in KEYED for part in (root / table).glob("batch-*/*.parquet")
            if not set(KEY_SOURCES) & set(pq.read_schema(part).names)]


def tiny_catalog(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "catalog" / "boot"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (90, 20 * i, 20)).save(folder / f"{i}.jpg")
    return folder.parent


@pytest.mark.e2e
@pytest.mark.parametrize("first", ["tables", "sql", "ingest"])
def test_old_home_is_upgraded_on_open_and_every_command_works(first, settings, tmp_path):
    root = make_old_home(settings)
    assert len(keyless_files(root)) == 3 + 3  # two data batches + denoise, and the three empty schema files
    commands = {
        "tables": ["tables", "--format", "json"],
        "sql": ["sql", "SELECT count(*) AS n FROM images_current i JOIN denoise_current d USING (image_key) "
                "JOIN products_current p ON p.product_key = i.product_key WHERE d.kept", "--format", "csv"],
        "ingest": ["ingest", str(tiny_catalog(tmp_path))],
    }
    for name in [first] + [c for c in commands if c != first]:  # whichever opens the old home first
        res = run_cli(*commands[name], home=settings.home)
        assert res.returncode == 0, (name, res.stderr)
        if name == "sql":
            assert res.stdout.split() == ["n", "3"]
        if name == "tables":
            assert {r["table_name"]: r["rows"] for r in json.loads(res.stdout)}["products"] in (3, 4)
    assert keyless_files(root) == [] and json.loads((root / FORMAT_FILE).read_text()) == {"version": FORMAT_VERSION}
    wh = open_warehouse(settings)
    rows = wh.query("SELECT product_id, product_key FROM products").to_pylist()
    assert len(rows) == 4 and all(r["product_key"] == key_of(r["product_id"]) for r in rows)
    images = wh.query("SELECT image_id, image_key, product_id, product_key FROM images").to_pylist()
    assert len(images) == 8 and all(
        r["image_key"] == key_of(r["image_id"]) and r["product_key"] == key_of(r["product_id"]) for r in images)
    assert wh.query("SELECT count(*) FROM images_current JOIN products_current USING (product_key)").column(0)[0]\
        .as_py() == 8


def test_upgrade_is_idempotent_and_a_half_done_one_is_finished(settings):
    root = make_old_home(settings)
    from warehouse.migrate import _rewrite

    first = sorted(keyless_files(root))[0]
    # An upgrade killed midway: one file done, a temp file left behind, no format file yet.
    table = first.relative_to(root).parts[0]
    _rewrite(table, first)
    (first.parent / f".{first.name}.deadbeef.tmp").write_bytes(b"torn")
    assert not (root / FORMAT_FILE).exists()
    wh = open_warehouse(settings)
    assert keyless_files(root) == [] and not list(root.glob("*/batch-*/.*.tmp"))
    assert len(wh.migrated) == 5
    assert wh.query("SELECT count(*) FROM products WHERE product_key IS NULL").column(0)[0].as_py() == 0
    assert backfill_keys(root) == []  # nothing left to do
    assert open_warehouse(settings).migrated == []


def test_a_file_that_cannot_be_upgraded_is_refused_with_one_line(settings):
    root = make_old_home(settings)
    part = next((root / "products").glob("batch-ingest-*/*.parquet"))
    pq.write_table(pq.read_table(part).append_column("colour", [["red"] * 3]), part)
    res = run_cli("tables", home=settings.home)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot upgrade" in res.stderr and "'colour'" in res.stderr
    assert not (root / FORMAT_FILE).exists()


@pytest.mark.parametrize("bad", ["", "{}", '{"version": "x"}'])
def test_a_damaged_format_file_is_named(settings, bad):
    wh = open_warehouse(settings)
    (wh.root / FORMAT_FILE).write_text(bad)
    res = run_cli("tables", home=settings.home)
    assert res.returncode == 2 and FORMAT_FILE in res.stderr, res.stderr
