"""Materialised current views (``warehouse.current``): used while exact, never stale; views per query."""

from __future__ import annotations

import pytest

from warehouse import Warehouse, start_run
from warehouse.current import CURRENT_DIR, MATERIALISED, valid_files
from warehouse.views import views_for

VIEWS = ("products_current", "images_current", "denoise_current")


@pytest.fixture()
def wh(tmp_path):
    return Warehouse(tmp_path / "warehouse")


def crawl(wh, pids, sha="a"):
    with start_run(wh, "crawl") as run:
        run.write("products", [{"product_id": p, "source": "catalog", "brand": "B"} for p in pids])
        run.write("images", [{"image_id": f"{p}#{k}", "product_id": p, "position": k, "status": "ok",
                              "sha1": f"{sha}{p}{k}"} for p in pids for k in range(2)])
    return run.run_id


def denoise(wh, pids, sha="a", kept=True):
    with start_run(wh, "denoise") as run:
        run.write("denoise", [{"image_id": f"{p}#{k}", "product_id": p, "position": k, "sha1": f"{sha}{p}{k}",
                               "threshold": 1.0, "kept": kept, "reason": "near"} for p in pids for k in range(2)])
    return run.run_id


def answers(wh, materialised: bool) -> dict[str, list]:
    con = wh.connect(materialised=materialised)
    try:
        return {v: sorted(con.execute(f"SELECT * FROM {v}").fetchall()) for v in VIEWS}
    finally:
        con.close()


def test_runs_that_change_the_inputs_write_them_and_queries_read_them(wh):
    crawl(wh, ["c:1", "c:2"])
    denoise(wh, ["c:1", "c:2"])
    assert set(valid_files(wh)) == set(MATERIALISED)
    assert answers(wh, True) == answers(wh, False)
    assert len(answers(wh, True)["denoise_current"]) == 4
    sql = wh.connect().execute("SELECT sql FROM duckdb_views() WHERE view_name = 'denoise_current'").fetchone()[0]
    assert f"/{CURRENT_DIR}/denoise_current-" in sql  # read from the file, not computed


def test_a_commit_since_the_refresh_falls_back_to_the_live_views(wh):
    crawl(wh, ["c:1", "c:2"])
    denoise(wh, ["c:1", "c:2"])
    # A commit outside a run (no refresh): a re-crawled photo with new content and a new product.
    wh.write("crawl-by-hand", {
        "products": [{"product_id": p, "source": "catalog", "brand": "B"} for p in ("c:1", "c:3")],
        "images": [{"image_id": f"{p}#0", "product_id": p, "position": 0, "status": "ok", "sha1": f"new{p}"}
                   for p in ("c:1", "c:3")],
    })
    assert set(valid_files(wh)) == set()  # products, images changed: every view computed
    assert answers(wh, True) == answers(wh, False)
    assert wh.query("SELECT count(*) FROM denoise_current").column(0)[0].as_py() == 2  # c:2 only


def test_a_newer_denoise_run_without_rows_invalidates_denoise_current(wh):
    crawl(wh, ["c:1"])
    first = denoise(wh, ["c:1"])
    with start_run(wh, "denoise"):  # a run whose rows were all committed in chunks by another step
        pass
    assert "denoise_current" not in valid_files(wh) and "images_current" in valid_files(wh)
    assert answers(wh, True) == answers(wh, False)
    assert wh.query("SELECT count(*) FROM denoise_current").column(0)[0].as_py() == 0
    assert first  # its rows stay in the denoise table
    assert wh.query("SELECT count(*) FROM denoise").column(0)[0].as_py() == 2


def test_other_steps_keep_them_valid(wh):
    crawl(wh, ["c:1"])
    denoise(wh, ["c:1"])
    with start_run(wh, "train"):
        pass
    assert set(valid_files(wh)) == set(MATERIALISED)


def test_cached_query_connection_sees_new_commits(wh):
    crawl(wh, ["c:1"])
    assert wh.query("SELECT count(*) FROM products_current").column(0)[0].as_py() == 1
    wh.write("by-hand", {"products": [{"product_id": "c:9", "source": "catalog"}]})
    assert wh.query("SELECT count(*) FROM products_current").column(0)[0].as_py() == 2
    crawl(wh, ["c:5"])
    assert wh.query("SELECT count(*) FROM products_current").column(0)[0].as_py() == 3


def test_a_damaged_file_leaves_the_live_views(wh):
    crawl(wh, ["c:1"])
    denoise(wh, ["c:1"])
    for path in (wh.root / CURRENT_DIR).glob("images_current-*.parquet"):
        path.unlink()
    assert "images_current" not in valid_files(wh)
    assert answers(wh, True) == answers(wh, False)


@pytest.mark.parametrize("sql, views", [
    ("SELECT * FROM runs LIMIT 5", {"runs"}),
    ("SELECT count(*) FROM images_current i JOIN denoise_current d USING (image_key)",
     {"images_current", "denoise_current"}),
    ("SHOW TABLES", None),
    ("SELECT table_name FROM information_schema.tables", None),
    ("SELECT 1", None),
])
def test_a_query_connection_creates_the_views_it_names(wh, sql, views):
    assert views_for(sql) == views
    crawl(wh, ["c:1"])
    con = wh.connect(for_query=sql)
    created = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert created >= (views or {"products", "runs", "indexes_current"})
    con.execute(sql).fetchall()
