"""Faults under a running API (a real uvicorn server, real files truncated in a real home):

* search reads what the loaded index holds, not the warehouse's other tables (a truncated ``products``
  part does not break it);
* an index file that cannot be read is named in one line (JSON 503 ``unavailable`` from ``/search``, ``/health``
  unhealthy),
  and a newer index with such a file leaves the last good one serving (``/health`` degraded, naming it);
* a switch whose ``CURRENT`` pointer write was lost (a kill between commit and pointer) reaches the running API;
* ``shoesearch api --home <missing>`` is refused, creating nothing.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.fixtures_search import serve_api
from tests.test_api_paths import png


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def cataloged_photo(settings) -> tuple[str, bytes]:
    """(product id, bytes) of a stored catalog photo, found from the files (the warehouse may be damaged)."""
    import pyarrow.parquet as pq

    index_id = (settings.indexes_dir / "CURRENT").read_text().strip()
    row = pq.read_table(settings.indexes_dir / index_id / "mapping.parquet").sort_by("row").slice(0, 1).to_pylist()[0]
    return row["product_id"], (settings.images_dir / row["path"]).read_bytes()


def search(base: str, photo: bytes) -> httpx.Response:
    return httpx.post(f"{base}/search", params={"k": 3}, files={"photo": ("q.jpg", photo, "image/jpeg")}, timeout=60)


def test_search_does_not_read_the_products_table(indexed_settings):
    """Issue 25 item 3: a truncated Parquet part of ``products`` turned every POST /search into a bare 500."""
    settings = indexed_settings
    parts = [p for p in (settings.warehouse_dir / "products").glob("batch-*/*.parquet") if "schema" not in str(p)]
    assert parts
    for part in parts:
        truncate(part)
    product_id, photo = cataloged_photo(settings)
    with serve_api(settings) as base:
        r = search(base, photo)
        health = httpx.get(f"{base}/health", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["product_id"] == product_id and r.json()["results"][0]["title"]
    assert health.status_code == 200 and health.json()["status"] == "ready", health.text


def test_an_unreadable_indexes_table_leaves_the_pointer_serving(indexed_settings):
    """The ``indexes`` table is the truth, the ``CURRENT`` pointer its fast path: with a truncated part of the
    table, the index the pointer names is served and /health is degraded, naming the part."""
    settings = indexed_settings
    product_id, photo = cataloged_photo(settings)
    parts = [p for p in (settings.warehouse_dir / "indexes").glob("batch-*/*.parquet") if "schema" not in str(p)]
    for part in parts:
        truncate(part)
    with serve_api(settings) as base:
        r = search(base, photo)
        health = httpx.get(f"{base}/health", timeout=60).json()
    assert r.status_code == 200 and r.json()["results"][0]["product_id"] == product_id, r.text
    assert health["status"] == "degraded" and "cannot read warehouse/indexes/batch-" in health["problem"], health


@pytest.mark.parametrize("name", ["meta.json", "index.faiss", "mapping.parquet"])
def test_an_unreadable_index_file_is_named_by_search_and_health(indexed_settings, name):
    """Issue 25 item 3: a truncated file of the current index gave a bare 500 text/plain while /health said ok."""
    settings = indexed_settings
    _, photo = cataloged_photo(settings)
    index_id = (settings.indexes_dir / "CURRENT").read_text().strip()
    truncate(settings.indexes_dir / index_id / name)
    with serve_api(settings) as base:
        r = search(base, photo)
        health = httpx.get(f"{base}/health", timeout=60)
    named = f"cannot read indexes/{index_id}/{name}"
    assert r.status_code == 503 and r.headers["content-type"] == "application/json", (r.status_code, r.text)
    assert r.json()["error"]["code"] == "unavailable", r.text
    assert r.json()["error"]["message"].startswith(named) and "\n" not in r.json()["error"]["message"], r.text
    assert health.status_code == 503, health.text
    assert health.json()["status"] == "unhealthy" and health.json()["error"]["code"] == "unhealthy", health.text
    assert health.json()["error"]["message"].startswith(named), health.text


def test_unreadable_product_details_degrade_results_to_ids(indexed_settings):
    settings = indexed_settings
    index_id = (settings.indexes_dir / "CURRENT").read_text().strip()
    truncate(settings.indexes_dir / index_id / "products.parquet")
    product_id, photo = cataloged_photo(settings)
    with serve_api(settings) as base:
        r = search(base, photo)
        health = httpx.get(f"{base}/health", timeout=60).json()
    assert r.status_code == 200 and r.json()["results"][0]["product_id"] == product_id, r.text
    assert r.json()["results"][0]["title"] is None
    assert health["status"] == "degraded" and f"indexes/{index_id}/products.parquet" in health["problem"], health


def test_non_finite_prices_of_an_older_index_are_answered_as_null(indexed_settings):
    """Issue 25 item 17: an index built before writes nulled non-finite prices holds NaN / inf; the answer
    stays strict JSON (price null) and the page shows no ``¥nan``."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = indexed_settings
    index_id = (settings.indexes_dir / "CURRENT").read_text().strip()
    path = settings.indexes_dir / index_id / "products.parquet"
    table = pq.read_table(path)
    bad = [float("nan"), float("inf")] * table.num_rows
    table = table.set_column(table.schema.get_field_index("price"), "price", pa.array(bad[: table.num_rows], pa.float64()))
    pq.write_table(table, path)
    product_id, photo = cataloged_photo(settings)
    with serve_api(settings) as base:
        r = search(base, photo)
        page = httpx.post(f"{base}/", files={"photo": ("q.jpg", photo, "image/jpeg")}, timeout=60)
    assert r.status_code == 200, r.text
    answer = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert answer["results"][0]["product_id"] == product_id and all(h["price"] is None for h in answer["results"])
    assert "¥nan" not in page.text and "¥inf" not in page.text


def test_a_newer_index_with_a_truncated_file_leaves_the_last_good_one_serving(indexed_settings):
    """Issue 25 item 3: the running API keeps the index it has when the newly switched one cannot be read."""
    from tasks.gate import switch_index
    from tasks.index import build_index

    settings = indexed_settings
    product_id, photo = cataloged_photo(settings)
    with serve_api(settings) as base:
        good = search(base, photo).json()["index_id"]
        broken = build_index(settings)
        switch_index(settings, broken, gate=False)
        truncate(settings.indexes_dir / broken / "meta.json")
        r = search(base, photo)
        health = httpx.get(f"{base}/health", timeout=60)
        assert r.status_code == 200 and r.json()["index_id"] == good, r.text
        assert r.json()["results"][0]["product_id"] == product_id
        assert health.status_code == 200 and health.json()["status"] == "degraded", health.text
        assert health.json()["index_id"] == good
        assert health.json()["problem"].startswith(f"cannot read indexes/{broken}/meta.json"), health.text
        fixed = build_index(settings)  # the next good index is served, and /health is ok again
        switch_index(settings, fixed, gate=False)
        assert search(base, photo).json()["index_id"] == fixed
        health = httpx.get(f"{base}/health", timeout=60).json()
        assert (health["status"], health["index_id"], health["problem"]) == ("ready", fixed, None), health


def test_a_switch_whose_pointer_write_was_lost_reaches_the_running_api(indexed_settings, monkeypatch):
    """Issue 25 item 12: a kill between the switch's commit and its CURRENT pointer write left a running API
    on the old index (it reconciled the pointer with the table only on its first load)."""
    from tasks import gate
    from tasks.index import build_index

    settings = indexed_settings
    _, photo = cataloged_photo(settings)
    with serve_api(settings) as base:
        old = search(base, photo).json()["index_id"]
        new = build_index(settings)

        def killed(*_):
            raise SystemExit("killed between the commit and the pointer write")

        monkeypatch.setattr(gate, "write_pointer", killed)
        with pytest.raises(SystemExit):
            gate.switch_index(settings, new, gate=False)
        assert (settings.indexes_dir / "CURRENT").read_text().strip() == old  # the crash state
        r = search(base, photo)
        assert r.status_code == 200 and r.json()["index_id"] == new != old, r.text
        assert httpx.get(f"{base}/health", timeout=60).json()["index_id"] == new


def test_api_refuses_a_missing_home_and_creates_nothing(tmp_path):
    """Issue 25 item 18: ``shoesearch api --home <typo>`` started, and its first /health created a full home."""
    home = tmp_path / "no-such-home"
    proc = subprocess.run([sys.executable, "-m", "shoesearch", "--home", str(home), "api", "--port", "1"],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode != 0 and not home.exists(), (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoesearch: error: no shoesearch home at"), proc.stderr
    assert "Traceback" not in proc.stderr and "search page" not in proc.stdout


def test_health_never_creates_a_home(tmp_path):
    """Issue 25 item 18: the API on a home removed (or never made) answers /health no_index and creates nothing."""
    from core.settings import Settings

    home = tmp_path / "gone"
    settings = Settings.load(home=home)
    with serve_api(settings) as base:
        health = httpx.get(f"{base}/health", timeout=60)
        r = search(base, png())
    assert health.status_code == 503 and health.json()["status"] == "no_index", health.text
    assert "no shoesearch home" in health.json()["error"]["message"], health.text
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_index", r.text
    assert "no shoesearch home" in r.json()["error"]["message"], r.text
    assert not home.exists()
