"""Terminal output people can read (issue 29): the ``table`` format drawn by rich, ``--format`` on listing
commands, and ``shoesearch settings`` / ``--explain`` saying where each value came from.

* a Chinese title's row lines up with its header (measured in terminal cells), long ids and paths are printed
  whole (folded; joined back they equal the value), prices show 2 decimals, booleans yes/no in the table and
  true/false in CSV / JSON; free text is cut only in the table, and says so with …;
* a pipe gets no colour codes and the width ``COLUMNS`` (else 100);
* ``settings`` names the layer of each value (``shoesearch.toml``, ``env SHOESEARCH_...``, ``--set``, default),
  ``--explain`` also the default and the values it overrode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pyarrow as pa
import pytest
from rich.cells import cell_len

from shoesearch.output import column_widths, format_table
from tests.test_cli_readonly import CLI, empty_home  # noqa: F401 - fixture

TITLE = "男士运动鞋 轻便透气 跑步鞋 休闲鞋 网面 夏季新款 耐磨防滑 减震 黑白配色 2026"  # 72 cells
LONG_ID = "demo:" + "p0002-very-long-product-id-" * 5  # 140 characters: wider than any column


def cells(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a table, each cell cut at the column spans of the dash line (in terminal
    cells); a row's wrapped / folded lines (blank in the first column, or up to the blank line that separates
    rows when the first column folds) are joined back: without separator after a full line (folded), with a
    space after a shorter one (wrapped at a space)."""
    lines = text.rstrip("\n").splitlines()
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[1])]

    def cut(line: str) -> list[str]:
        placed, at = [], 0
        for ch in line:
            placed.append((at, ch))
            at += cell_len(ch)
        return ["".join(ch for p, ch in placed if a <= p < b).strip() for a, b in spans]

    body = lines[2:-1]
    separated = any(not line.strip() for line in body)
    widths = [b - a - (i < len(spans) - 1) for i, (a, b) in enumerate(spans)]  # less the padding cell
    rows: list[list[str]] = []
    last: list[str] = []
    for i, line in enumerate(body):
        parts = cut(line)
        if not line.strip():
            continue
        if not rows or (not body[i - 1].strip() if separated else parts[0]):
            rows.append(parts)
        else:
            rows[-1] = [a + ("" if not b or cell_len(p) >= w else " ") + b
                        for a, b, p, w in zip(rows[-1], parts, last, widths)]
        last = [b or p for b, p in zip(parts, last or parts)]
    return cut(lines[0]), rows


def test_a_chinese_title_lines_up_with_its_header():
    rows = [{"product_id": "jd:100012345", "title": "运动鞋 白色", "brand": "李宁", "price": 452.99},
            {"product_id": "jd:7", "title": "Air Max 90", "brand": "Nike", "price": 1299.0},
            {"product_id": "jd:8", "title": "儿童凉鞋", "brand": "安踏", "price": 89.5}]
    text = format_table(pa.Table.from_pylist(rows), width=100)
    lines = text.splitlines()
    head = lines[0]
    brand_at = cell_len(head[:head.index("brand")])
    price_end = cell_len(head[:head.index("price")]) + len("price")  # numbers are right-aligned under it
    for line, row in zip(lines[2:5], rows):
        assert cell_len(line[:line.index(row["brand"])]) == brand_at, text  # len() would count 李宁 as 2, not 4
        assert cell_len(line[:line.index(f"{row['price']:.2f}")]) + len(f"{row['price']:.2f}") >= price_end
    assert len({cell_len(line[:line.index(r["brand"])]) for line, r in zip(lines[2:5], rows)}) == 1
    assert cells(text)[1] == [[r["product_id"], r["title"], r["brand"], f"{r['price']:.2f}"] for r in rows], text
    assert "452.99" in text and "1299.00" in text and "89.50" in text and "453" not in text


def test_ids_and_paths_wider_than_the_table_are_folded_whole():
    row = {"rank": 1, "product_id": LONG_ID, "photo_file": "/srv/data/images/ab/" + "c" * 64 + ".jpg",
           "title": TITLE, "confident": True}
    text = format_table(pa.Table.from_pylist([row]), width=80)
    assert all(cell_len(line) <= 80 for line in text.splitlines()), text
    heads, rows = cells(text)
    got = dict(zip(heads, rows[0]))
    assert got["product_id"] == LONG_ID and got["photo_file"] == row["photo_file"], text  # folded, not cut
    assert got["confident"] == "yes" and "…" not in got["product_id"] + got["photo_file"]
    assert got["title"].endswith("…") and len(text.splitlines()) > 3  # free text: at most 60 cells or 2 lines
    as_csv = format_table(pa.Table.from_pylist([row]), "csv")
    assert as_csv.splitlines()[1] == f"1,{LONG_ID},{row['photo_file']},{TITLE},true"  # CSV: exact, whole
    assert json.loads(format_table(pa.Table.from_pylist([row]), "json"))[0] == row


def test_numbers_booleans_times_and_lists_in_the_table():
    from datetime import datetime, timezone

    row = {"run_id": "train-20261206T151613-54341b", "score": 0.8172803521156311, "unit_price": 452.99,
           "recall_at_1": 0.94213, "loss": 1234.5678, "kept": False,
           "finished_at": datetime(2026, 12, 6, 15, 25, 12, 341472, tzinfo=timezone.utc),
           "input_run_ids": ["split-20261206T151533-890701", "kmeans-20261206T151534-426b39"]}
    heads, rows = cells(format_table(pa.Table.from_pylist([row]), width=200))
    got = dict(zip(heads, rows[0]))
    assert (got["score"], got["unit_price"], got["recall_at_1"], got["loss"], got["kept"]) == (
        "0.817", "452.99", "0.942", "1235", "no")
    assert got["finished_at"] == "2026-12-06 15:25:12Z"
    assert got["input_run_ids"] == "split-20261206T151533-890701, kmeans-20261206T151534-426b39"
    narrow = format_table(pa.Table.from_pylist([row]), width=130)  # the list wraps between its ids
    assert any(line.rstrip().endswith("kmeans-20261206T151534-426b39") for line in narrow.splitlines()), narrow


def test_column_widths_narrow_free_text_first_then_ids():
    # title (free text), product_id (an id), price (short): 30 + 40 + 6 = 76 cells into 60
    natural, floors = [30, 40, 6], [[20, 30, 20, 10, 10], [40, 40, 40, 8, 8], [6] * 5]
    assert column_widths(natural, floors, 100) == natural
    assert column_widths(natural, floors, 66) == [20, 40, 6]  # the title gives first, the id stays whole
    assert column_widths(natural, floors, 50) == [20, 24, 6]  # then the widest gives: the id folds
    assert column_widths(natural, floors, 10) == [10, 8, 6]  # what cannot fit stays wider: nothing is cut


def test_empty_table_and_footer():
    empty = pa.table({"a": pa.array([], pa.int64()), "b": pa.array([], pa.string())})
    assert format_table(empty).splitlines() == ["a  b", "-- -", "(0 rows)"]
    table = pa.table({"n": list(range(5))})
    assert format_table(table, max_rows=2).splitlines()[-1] == "(more than 2 rows, 2 shown)"


# --- through the real command line ------------------------------------------------------------------------
def _cli(*args: str, home, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "SHOESEARCH_HOME")
             and not k.startswith("SHOESEARCH_")}
    return subprocess.run([*CLI, "--home", str(home), *args], env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=120, cwd=home.parent)


@pytest.mark.e2e
def test_sql_table_through_a_pipe(empty_home):
    from core.settings import Settings
    from warehouse import open_warehouse, start_run

    with start_run(open_warehouse(Settings.load(home=empty_home)), step="ingest") as run:
        run.write("products", [{"source": "catalog", "product_id": "jd:1", "title": TITLE, "brand": "李宁",
                                "price": 452.99},
                               {"source": "catalog", "product_id": LONG_ID, "title": "Air Max", "brand": "Nike",
                                "price": 12.5}])
    query = "SELECT product_id, title, brand, price, price > 100 AS dear FROM products ORDER BY price DESC"
    res = _cli("sql", query, home=empty_home)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and max(cell_len(line) for line in res.stdout.splitlines()) <= 100, res.stdout
    heads, rows = cells(res.stdout)
    assert [r[0] for r in rows] == ["jd:1", LONG_ID] and [r[3] for r in rows] == ["452.99", "12.50"], res.stdout
    assert [r[4] for r in rows] == ["yes", "no"] and heads == ["product_id", "title", "brand", "price", "dear"]
    narrow = _cli("sql", query, home=empty_home, env={"COLUMNS": "50"})
    assert max(cell_len(line) for line in narrow.stdout.splitlines()) <= 50, narrow.stdout
    assert [r[0] for r in cells(narrow.stdout)[1]] == ["jd:1", LONG_ID], narrow.stdout
    as_csv = _cli("sql", query, "--format", "csv", home=empty_home)
    assert as_csv.stdout.splitlines()[1] == f"jd:1,{TITLE},李宁,452.99,true", as_csv.stdout


@pytest.mark.e2e
def test_lineage_table_shows_whole_run_ids_one_row_per_run(empty_home):
    from core.settings import Settings
    from warehouse import open_warehouse, start_run

    wh = open_warehouse(Settings.load(home=empty_home))
    with start_run(wh, step="ingest") as first:
        first.write("products", [{"source": "catalog", "product_id": "jd:1", "title": "x"}])
    with start_run(wh, step="split", inputs=[first.run_id]) as second:
        pass
    res = _cli("lineage", second.run_id, home=empty_home)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 5 and max(cell_len(line) for line in lines) <= 100, res.stdout  # head, dashes, 2, footer
    heads, rows = cells(res.stdout)
    assert [r[heads.index("run_id")] for r in rows] == [second.run_id, first.run_id], res.stdout
    assert rows[1][heads.index("output_rows")] == "products=1" and rows[0][heads.index("input_run_ids")] == first.run_id
    as_json = json.loads(_cli("lineage", second.run_id, "--format", "json", home=empty_home).stdout)
    assert as_json[0]["input_run_ids"] == [first.run_id] and "finished_at" in as_json[0]  # every column


# --- settings ----------------------------------------------------------------------------------------------
def _settings(capsys, home, *args: str) -> str:
    from shoesearch.cli import main

    assert main(["--home", str(home), "--set", "train.epochs=3", "settings", *args]) == 0
    return capsys.readouterr().out


def test_settings_explain_names_file_env_and_set(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "shoesearch.toml").write_text("[train]\nepochs = 7\n[denoise]\nthreshold = 0.9\n")
    for name in [n for n in os.environ if n.startswith("SHOESEARCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SHOESEARCH_TRAIN__EPOCHS", "5")
    monkeypatch.setenv("SHOESEARCH_TRAIN__MARGIN", "0.25")
    rows = {r["setting"]: r for r in json.loads(_settings(capsys, home, "--format", "json"))}
    assert rows["home"] == {"setting": "home", "value": str(home.resolve()), "source": "--home",
                            "default": "./data", "overridden": []}
    assert rows["train.epochs"] == {"setting": "train.epochs", "value": 3, "source": "--set", "default": 10,
                                    "overridden": [{"source": "env SHOESEARCH_TRAIN__EPOCHS", "value": "5"},
                                                   {"source": "shoesearch.toml", "value": 7}]}
    assert (rows["train.margin"]["value"], rows["train.margin"]["source"]) == (0.25, "env SHOESEARCH_TRAIN__MARGIN")
    assert (rows["denoise.threshold"]["value"], rows["denoise.threshold"]["source"]) == (0.9, "shoesearch.toml")
    assert rows["train.lr"]["source"] == "default" and rows["train.lr"]["value"] == rows["train.lr"]["default"]

    short = _settings(capsys, home)  # the table: only what a layer sets, with its source
    assert short.splitlines()[0] == f"home: {home.resolve()} (--home)"
    heads, table = cells("\n".join(short.splitlines()[1:-1]))
    assert heads == ["setting", "value", "source"]
    assert sorted(table) == [["denoise.threshold", "0.9", "shoesearch.toml"], ["train.epochs", "3", "--set"],
                             ["train.margin", "0.25", "env SHOESEARCH_TRAIN__MARGIN"]], short
    assert re.fullmatch(r"\d+ more settings at their defaults \(--all .*\)", short.splitlines()[-1])

    explained = _settings(capsys, home, "--explain")
    heads, table = cells("\n".join(explained.splitlines()[1:]))
    by_name = {r[0]: dict(zip(heads, r)) for r in table}
    assert len(by_name) == len(rows) - 1  # every setting (the home is the line above)
    overridden = by_name["train.epochs"]["overridden"]  # wrapped: compared without its spaces
    assert overridden.replace(" ", "") == "env SHOESEARCH_TRAIN__EPOCHS: 5; shoesearch.toml: 7".replace(" ", "")
    assert (by_name["train.epochs"]["default"], by_name["train.lr"]["default"]) == ("10", "")  # "": the same
    assert by_name["crawl.obey_robots"]["value"] == "true"  # as --set and the file write it


def test_setting_sources_is_pure_and_orders_layers():
    from core.settings import setting_sources

    found = setting_sources({"train": {"epochs": 7}, "crawl": {"site": "http://toml"}},
                            {"SHOESEARCH_TRAIN__EPOCHS": "5", "shoesearch_crawl__site": "http://env",
                             "SHOESEARCH_HOME": "/x", "PATH": "/bin"},
                            {"train.epochs": "3", "train.seed": None})
    assert found == {"train.epochs": [("--set", "3"), ("env SHOESEARCH_TRAIN__EPOCHS", "5"),
                                      ("shoesearch.toml", 7)],
                     "crawl.site": [("env shoesearch_crawl__site", "http://env"), ("shoesearch.toml", "http://toml")]}


# --- --format on the summaries of crawl and evaluate ---------------------------------------------------------
@pytest.mark.e2e
def test_crawl_summary_as_json(tmp_path, make_shop):
    from tests.test_crawl_outcome import _shoesearch

    shop = make_shop(n=3)
    home = tmp_path / "home"
    res = _shoesearch(tmp_path, home, "crawl", "--site", shop.url, "--keyword", "鞋", "--max-products", "3",
                      "--format", "json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)  # stdout is the JSON alone
    assert summary["run_id"].startswith("crawl-") and summary["products_written"] == 3, summary
    assert [(s["kind"], s["name"]) for s in summary["sources"]] == [("keyword", "鞋")]
    assert summary["outcome"].startswith("reached --max-products 3"), summary["outcome"]


def test_evaluate_report_rows_as_csv_and_json(tmp_path, capsys):
    from core.settings import Settings
    from shoesearch.commands.train import _print_report
    from warehouse import open_warehouse, start_run

    settings = Settings.load(home=tmp_path / "home")
    row = {"model_id": "netvlad-x", "variant": "trained", "photos": "denoised", "protocol": "all-vs-all",
           "split": "test", "queries": 40, "recall_at_1": 0.9421, "recall_at_5": 1.0, "recall_at_10": 1.0,
           "mean_ap": 0.8172803521156311}
    with start_run(open_warehouse(settings), step="evaluate") as run:
        run.write("evaluations", [row])
    _print_report(settings, run.run_id, "json")
    out, err = capsys.readouterr()
    assert json.loads(out) == [{**row, "run_id": run.run_id}] and err.startswith("report: ")  # exact values
    _print_report(settings, run.run_id, "csv")
    assert capsys.readouterr().out.splitlines()[1].startswith("netvlad-x,trained,denoised,all-vs-all,test,40,0.9421,")
