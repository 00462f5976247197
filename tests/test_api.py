"""The HTTP API over real loopback HTTP: bad uploads get 4xx, a cataloged photo finds its product."""

from __future__ import annotations

import io
import time

import httpx
from PIL import Image


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_cataloged_photo_finds_its_product_and_page_renders(api_server):
    from warehouse import open_warehouse

    base, settings = api_server
    row = open_warehouse(settings).query(
        "SELECT product_id, path FROM images_current WHERE status = 'ok' AND position = 1 ORDER BY product_id LIMIT 1"
    ).to_pylist()[0]
    data = (settings.images_dir / row["path"]).read_bytes()
    r = httpx.post(f"{base}/search", params={"k": 3}, files={"photo": ("shoe.jpg", data, "image/jpeg")}, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["product_id"] == row["product_id"] and len(results) == 3
    photo = httpx.get(base + results[0]["photo_url"], timeout=10)
    assert photo.status_code == 200 and photo.content[:2] == b"\xff\xd8"
    page = httpx.post(f"{base}/", files={"photo": ("shoe.jpg", data, "image/jpeg")}, timeout=60)
    assert page.status_code == 200 and results[0]["photo_url"] in page.text
    assert "<form" in httpx.get(base + "/", timeout=10).text


def test_bad_uploads_get_4xx_and_the_server_keeps_serving(api_server):
    base, settings = api_server
    good = _png(64, 64)
    bomb = _png(settings.api.max_upload_pixels // 1000 + 1, 1000)  # over the pixel limit, small file
    cases = {
        "not an image": (b"<html><body>hello</body></html>", 415),
        "truncated": (good[: len(good) // 2], 400),
        "empty": (b"", 400),
        "decompression bomb": (bomb, 413),
        "too large": (b"\xff\xd8" + b"\0" * (settings.api.max_upload_bytes + 10), 413),
        "too small": (_png(4, 4), 422),
    }
    for name, (payload, status) in cases.items():
        r = httpx.post(f"{base}/search", files={"photo": ("x.jpg", payload, "image/jpeg")}, timeout=60)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json()["error"], name
    assert httpx.post(f"{base}/search", timeout=10).status_code in (400, 422)  # no file at all
    assert httpx.get(f"{base}/photos/../../warehouse/runs", timeout=10).status_code == 404
    assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"
    r = httpx.post(f"{base}/search", files={"photo": ("ok.png", good, "image/png")}, timeout=60)
    assert r.status_code == 200 and r.json()["results"]


def _sample_jpeg(name: str) -> bytes:
    from sklearn.datasets import load_sample_image

    buf = io.BytesIO()
    Image.fromarray(load_sample_image(name)).save(buf, "JPEG")
    return buf.getvalue()


def test_a_photo_of_no_shoe_is_answered_with_no_confident_match(api_server):
    """A cataloged shoe photo is a confident match; a photo of a building is not (JSON field and page notice).
    Measured on this index (ImageNet GeM, 96 px): threshold 0.82, the building's best score 0.38."""
    from warehouse import open_warehouse

    base, settings = api_server
    row = open_warehouse(settings).query(
        "SELECT path FROM images_current WHERE status = 'ok' AND position = 0 ORDER BY product_id LIMIT 1").to_pylist()[0]
    shoe = httpx.post(f"{base}/search", files={"photo": ("s.jpg", (settings.images_dir / row["path"]).read_bytes(),
                                                         "image/jpeg")}, timeout=60).json()
    assert shoe["confident_match"] is True and shoe["results"][0]["confident"] is True
    other = httpx.post(f"{base}/search", files={"photo": ("c.jpg", _sample_jpeg("china.jpg"), "image/jpeg")},
                       timeout=60).json()
    assert other["confident_match"] is False and not any(h["confident"] for h in other["results"])
    assert other["results"][0]["score"] < other["match_threshold"] < shoe["results"][0]["score"]
    page = httpx.post(f"{base}/", files={"photo": ("c.jpg", _sample_jpeg("china.jpg"), "image/jpeg")}, timeout=60)
    assert "No confident match" in page.text


def test_the_index_and_model_load_at_start_and_health_says_starting_until_then(indexed_home):
    """Issue 28: the first search paid ~5 s (the model loaded on the first query). The server loads the index and
    the model as it starts and runs a warm-up search; until then /health answers 503 ``starting`` (here held
    there by holding the loader's lock), then ``ok`` with no search asked, the searcher already in memory."""
    from serving import search as serving_search
    from tests.fixtures_search import search_settings, serve_api

    settings = search_settings(indexed_home)
    serving_search._SERVING.pop(str(settings.home), None)  # as a fresh process: nothing loaded
    with serving_search._LOAD_LOCK, serve_api(settings, wait_ready=False) as base:
        held = httpx.get(f"{base}/health", timeout=10)
        assert held.status_code == 503 and held.json()["status"] == "starting", held.text
        assert "<form" in httpx.get(base + "/", timeout=10).text  # the page is served meanwhile
        serving_search._LOAD_LOCK.release()
        try:
            for _ in range(600):
                if (health := httpx.get(f"{base}/health", timeout=10)).json()["status"] != "starting":
                    break
                time.sleep(0.1)
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
            assert serving_search._SERVING[str(settings.home)].searcher is not None  # loaded before any search
        finally:
            serving_search._LOAD_LOCK.acquire()
