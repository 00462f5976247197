"""The API's product data, thumbnails, error shape and documentation, over real loopback HTTP on a real home:

* ``GET /products/{id}``: the product's fields, its whole gallery with each photo's denoise decision, distance
  and who decided (a correction by hand included), its lineage; HTML for a browser, JSON otherwise;
* ``GET /thumbs/<sha1>.webp``: 256 px WebP made once per content hash, cached on disk, immutable; a hostile
  stored photo is refused by the bounded decoder, and the server keeps serving;
* one error shape (``{"error": {"code", "message"}}``) for FastAPI's own 404/405/422 too; HTML on the form;
* ``/docs`` offline (no CDN URL, assets served, a 3.0 schema Swagger UI renders), ``/openapi.json`` typed;
* ``/health`` ``no_index`` on a home with no index; writes need ``api.write_token``.
"""

from __future__ import annotations

import io
import json
import re

import httpx
import pytest
from PIL import Image

from tests.fixtures_catalog import writable_copy
from tests.fixtures_search import multipart, raw_http, search_settings, serve_api

HTML = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}  # what a browser sends


def a_product(settings) -> tuple[str, list[dict]]:
    """(product id, its current photos by position) of a product with several photos."""
    from warehouse import open_warehouse

    rows = open_warehouse(settings).query(
        "SELECT product_id, image_id, position, sha1, status FROM images_current WHERE product_id = ("
        "SELECT product_id FROM images_current GROUP BY product_id HAVING count(*) > 2 ORDER BY product_id LIMIT 1) "
        "ORDER BY position").to_pylist()
    return rows[0]["product_id"], rows


@pytest.fixture(scope="module")
def denoised(tmp_path_factory, indexed_home):
    """A private copy of the indexed home with a denoise run (decisions and distances), served; (base, settings)."""
    from tasks.denoise import denoise

    monkeypatch = pytest.MonkeyPatch()
    settings = search_settings(writable_copy(indexed_home, tmp_path_factory.mktemp("products"), monkeypatch))
    denoise(settings)
    with serve_api(settings) as base:
        yield base, settings
    monkeypatch.undo()


def test_product_json_has_the_whole_gallery_decisions_and_lineage(denoised):
    from warehouse import open_warehouse

    base, settings = denoised
    product_id, photos = a_product(settings)
    r = httpx.get(f"{base}/products/{product_id}", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    view = r.json()
    assert view["product_id"] == product_id and view["title"] and view["url"] is None  # file:// left out
    assert [p["image_id"] for p in view["photos"]] == [p["image_id"] for p in photos]
    wh = open_warehouse(settings)
    decisions = {d["image_id"]: d for d in wh.query("SELECT image_id, kept, distance, run_id FROM denoise_current "
                                                   "WHERE product_id = ?", [product_id]).to_pylist()}
    for photo in view["photos"]:
        decision = decisions[photo["image_id"]]
        assert photo["kept"] == decision["kept"] and photo["decided_by"] == "rule" and photo["override"] is None
        assert photo["distance"] == round(decision["distance"], 4), (photo, decision)
        assert photo["thumb_url"] == f"/thumbs/{next(p['sha1'] for p in photos if p['image_id'] == photo['image_id'])}.webp"
        assert httpx.get(base + photo["photo_url"], timeout=10).status_code == 200
    assert view["photos"][0]["distance"] == 0 and view["photos"][0]["kept"] is True  # the reference photo
    lineage = {entry["role"]: entry for entry in view["lineage"]}
    index = wh.query("SELECT index_id, model_id FROM indexes_current").to_pylist()[0]
    assert lineage["catalog"]["step"] == "ingest" and lineage["denoise"]["step"] == "denoise"
    assert (lineage["index"]["step"], lineage["index"]["run_id"], lineage["switch"]["step"]) == (
        "index", index["index_id"], "switch")  # the build run (its id is the index's), then the switch
    assert lineage["denoise"]["run_id"] == next(iter(decisions.values()))["run_id"]
    assert (lineage["index"]["name"], lineage["model"]["name"]) == (index["index_id"], index["model_id"])
    assert str(settings.home) not in r.text and "file://" not in r.text


def test_product_page_for_a_browser_and_404s_in_both_shapes(denoised):
    base, settings = denoised
    product_id, _ = a_product(settings)
    page = httpx.get(f"{base}/products/{product_id}", headers=HTML, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<!doctype html>" in page.text.lower() and "Lineage" in page.text and '"photos"' not in page.text
    missing = httpx.get(f"{base}/products/shoes:no-such-product", timeout=30)
    assert missing.status_code == 404 and missing.json() == {"error": {"code": "no_product",
                                                                       "message": "no current product has this id"}}
    missing_page = httpx.get(f"{base}/products/shoes:no-such-product", headers=HTML, timeout=30)
    assert missing_page.status_code == 404 and missing_page.headers["content-type"].startswith("text/html")
    assert '"error"' not in missing_page.text


def test_thumbnails_are_made_once_per_content_hash_and_cached(denoised, monkeypatch):
    from photos import decode_worker

    base, settings = denoised
    _, photos = a_product(settings)
    sha1 = photos[0]["sha1"]
    calls = []
    real = decode_worker.decode_rgb
    monkeypatch.setattr(decode_worker, "decode_rgb", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    first = httpx.get(f"{base}/thumbs/{sha1}.webp", timeout=30)
    cached = settings.home / "thumbs" / sha1[:2] / f"{sha1}.webp"
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp", first.text
    assert "immutable" in first.headers["cache-control"] and "max-age=31536000" in first.headers["cache-control"]
    thumb = Image.open(io.BytesIO(first.content))
    source = Image.open(next((settings.images_dir / sha1[:2]).glob(f"{sha1}.*")))
    assert thumb.format == "WEBP" and max(thumb.size) == min(256, max(source.size)), (thumb.size, source.size)
    assert cached.read_bytes() == first.content and calls == [256]
    stat = cached.stat()
    again = httpx.get(f"{base}/thumbs/{sha1}.webp", timeout=30)
    assert again.content == first.content and calls == [256]  # served from the cache: no second decode
    assert (cached.stat().st_ino, cached.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    for name in ["zz.webp", "..%2f..%2fshoesearch.toml", "0" * 40 + ".webp", sha1.upper() + ".webp"]:
        r = httpx.get(f"{base}/thumbs/{name}", timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (name, r.text)


def test_a_hostile_stored_photo_gets_no_thumbnail_and_stalls_nothing(denoised):
    from tests.test_photo_decoding import progressive_jpeg

    base, settings = denoised
    sha1 = "ab" + "0" * 38
    (settings.images_dir / "ab").mkdir(exist_ok=True)
    (settings.images_dir / "ab" / f"{sha1}.jpg").write_bytes(progressive_jpeg(3000, 1200))  # 1,210 scans
    r = httpx.get(f"{base}/thumbs/{sha1}.webp", timeout=30)
    assert r.status_code == 404 and "scans" in r.json()["error"]["message"], r.text
    assert not (settings.home / "thumbs" / "ab" / f"{sha1}.webp").exists()
    assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ready"


def test_frameworks_own_errors_have_the_one_error_shape(api_server):
    base, _ = api_server
    unknown = httpx.get(f"{base}/no/such/route", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found", unknown.text
    wrong_method = httpx.get(f"{base}/search", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["allow"]
    bad_k = httpx.post(f"{base}/search", params={"k": "many"}, files={"photo": ("x.png", b"x")}, timeout=10)
    assert bad_k.status_code == 422 and bad_k.json()["error"]["code"] == "invalid", bad_k.text
    assert bad_k.json()["error"]["message"].startswith("query k:"), bad_k.text
    out_of_range = httpx.post(f"{base}/search", params={"k": 0}, files={"photo": ("x.png", b"x")}, timeout=10)
    assert out_of_range.status_code == 422 and out_of_range.json()["error"]["code"] == "invalid"
    for r in (unknown, wrong_method, bad_k, out_of_range):
        assert list(r.json()) == ["error"] and set(r.json()["error"]) == {"code", "message"}, r.text
    browser = httpx.get(f"{base}/no/such/route", headers=HTML, timeout=10)
    assert browser.status_code == 404 and browser.headers["content-type"].startswith("text/html")


def test_the_form_never_shows_json_also_for_an_oversized_upload(api_server):
    """Issue 29: an oversized upload through the form showed raw JSON. Refused from its declared length by
    BodyGuard (before any of the body is read: a raw request head), or while reading the photo, or as not a photo."""
    base, settings = api_server
    opening, _, content_type = multipart(b"")
    head = (f"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
            f"Content-Length: {settings.api.max_upload_bytes * 2}\r\n\r\n").encode() + opening
    status, response = raw_http(base, head)
    assert status == 413 and b"content-type: text/html" in response.lower() and b"<form" in response, response[:500]
    just_over = b"\xff\xd8" + b"\0" * (settings.api.max_upload_bytes + 10)  # within the form framing allowance
    for payload, status in [(just_over, 413), (b"<html>not a photo</html>", 415)]:
        page = httpx.post(f"{base}/", files={"photo": ("x.jpg", payload, "image/jpeg")}, timeout=60)
        assert page.status_code == status and page.headers["content-type"].startswith("text/html"), page.text[:300]
        assert '"error"' not in page.text and "<form" in page.text


def test_docs_work_offline_and_the_schema_is_typed(api_server):
    base, _ = api_server
    docs = httpx.get(f"{base}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert not re.search(r"https?://|//cdn", docs.text), docs.text  # nothing from outside this server
    assets = re.findall(r'(?:href|src)="([^"]+)"', docs.text)
    assert len(assets) >= 3 and all(httpx.get(base + a, timeout=10).status_code == 200 for a in assets), assets
    url = re.search(r"url: '([^']+)'", docs.text).group(1)
    spec_30 = httpx.get(base + url, timeout=10).json()
    assert spec_30["openapi"].startswith("3.0.") and '"type": "null"' not in json.dumps(spec_30)  # Swagger UI 4
    assert httpx.get(f"{base}/redoc", timeout=10).status_code == 404  # ReDoc would load from a CDN: off
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    schemas = spec["components"]["schemas"]
    search = spec["paths"]["/search"]["post"]["responses"]
    assert search["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResponse")
    for status in ("400", "413", "415", "422", "503"):
        assert search[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody"), status
    assert "HTTPValidationError" not in schemas
    assert {"rank", "product_id", "score", "level", "title", "brand", "price", "url", "product_url", "photo_url",
            "thumb_url"} <= set(schemas["Hit"]["properties"])
    assert {"index_id", "model_id", "match_level", "levels", "results"} <= set(schemas["SearchResponse"]["properties"])
    product = spec["paths"]["/products/{product_id}"]["get"]["responses"]
    assert product["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Product")
    assert "text/html" in product["200"]["content"]
    assert product["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"Health", "Product", "Photo", "ErrorBody"} <= set(schemas)


def test_health_says_no_index_on_a_home_without_one(ingested_home, tmp_path, monkeypatch):
    from tests.test_api_paths import png

    settings = search_settings(writable_copy(ingested_home, tmp_path, monkeypatch))
    with serve_api(settings) as base:
        health = httpx.get(f"{base}/health", timeout=30)
        r = httpx.post(f"{base}/search", files={"photo": ("q.png", png())}, timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "no_index", health.text
    assert health.json()["error"]["code"] == "no_index" and "shoesearch index" in health.json()["error"]["message"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_index", r.text


def test_a_correction_by_hand_needs_the_token_and_shows_on_the_product(denoised):
    base, settings = denoised
    product_id, photos = a_product(settings)
    photo = next(p for p in reversed(photos) if p["status"] == "ok")
    url = f"{base}/products/{product_id}/photos/{photo['image_id'].replace('#', '%23')}/decision"
    body = {"decision": "drop", "reason": "a box, not the shoe", "who": "ana"}
    off = httpx.post(url, json=body, headers={"Authorization": "Bearer x"}, timeout=30)
    assert off.status_code == 403 and off.json()["error"]["code"] == "writes_disabled", off.text
    settings.set("api.write_token", "s3cret")  # the served app reads the same settings object
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden", wrong.text
    bad = httpx.post(url, json={**body, "decision": "maybe"}, headers={"Authorization": "Bearer s3cret"}, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid", bad.text
    not_an_object = httpx.post(url, json=["drop"], headers={"Authorization": "Bearer s3cret"}, timeout=30)
    assert not_an_object.status_code == 400 and not_an_object.json()["error"]["code"] == "bad_request"
    done = httpx.post(url, json=body, headers={"Authorization": "Bearer s3cret"}, timeout=60)
    assert done.status_code == 200, done.text
    assert done.json()["photo"]["kept"] is False and done.json()["photo"]["decided_by"] == "person"
    view = httpx.get(f"{base}/products/{product_id}", timeout=30).json()
    shown = next(p for p in view["photos"] if p["image_id"] == photo["image_id"])
    assert shown["override"]["who"] == "ana" and shown["override"]["reason"] == "a box, not the shoe"
    assert shown["override"]["decision"] == "drop" and shown["override"]["run_id"] == done.json()["run_id"]
    form = httpx.post(url, data={**body, "decision": "keep", "token": "s3cret"}, headers=HTML, timeout=60)
    assert form.status_code == 200 and form.headers["content-type"].startswith("text/html"), form.text[:300]
    after = httpx.get(f"{base}/products/{product_id}", timeout=30).json()
    assert next(p for p in after["photos"] if p["image_id"] == photo["image_id"])["kept"] is True
    settings.set("api.write_token", "")


def test_an_unreadable_products_table_is_a_503_naming_the_file_not_a_500(indexed_settings):
    from tests.test_api_faults import truncate

    settings = indexed_settings
    product_id, _ = a_product(settings)
    for part in (settings.warehouse_dir / "products").glob("batch-*/*.parquet"):
        if "schema" not in str(part):
            truncate(part)
    for current in (settings.warehouse_dir / "_current").glob("products_current-*.parquet"):
        truncate(current)
    with serve_api(settings) as base:
        r = httpx.get(f"{base}/products/{product_id}", timeout=30)
        search = httpx.post(f"{base}/search", files={"photo": ("q.jpg", next(settings.images_dir.glob("*/*.jpg"))
                                                              .read_bytes())}, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    assert "cannot read warehouse/products/" in r.json()["error"]["message"] and str(settings.home) not in r.text
    assert search.status_code == 200, search.text  # searches read the index's own files
