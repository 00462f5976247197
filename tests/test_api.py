"""The HTTP API over real loopback HTTP: bad uploads get 4xx in the one error shape, a cataloged photo finds its
product, a photo of no shoe is answered with match level "none"."""

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
    assert results[0]["product_url"] == "/products/" + row["product_id"]
    assert all(round(h["score"], 4) == h["score"] for h in results), results  # rounded, not raw floats
    photo = httpx.get(base + results[0]["photo_url"], timeout=10)
    assert photo.status_code == 200 and photo.content[:2] == b"\xff\xd8"
    page = httpx.post(f"{base}/", files={"photo": ("shoe.jpg", data, "image/jpeg")}, timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'href="{results[0]["product_url"]}"' in page.text and 'src="data:image/webp;base64,' in page.text
    assert "<form" in httpx.get(base + "/", timeout=10).text


def test_bad_uploads_get_4xx_and_the_server_keeps_serving(api_server):
    base, settings = api_server
    good = _png(64, 64)
    bomb = _png(settings.api.max_upload_pixels // 1000 + 1, 1000)  # over the pixel limit, small file
    cases = {
        "not an image": (b"<html><body>hello</body></html>", 415, "not_image"),
        "truncated": (good[: len(good) // 2], 400, "corrupt"),
        "empty": (b"", 400, "empty"),
        "decompression bomb": (bomb, 413, "bomb"),
        "too large": (b"\xff\xd8" + b"\0" * (settings.api.max_upload_bytes + 10), 413, "too_large"),
        "too small": (_png(4, 4), 422, "too_small"),
    }
    for name, (payload, status, code) in cases.items():
        r = httpx.post(f"{base}/search", files={"photo": ("x.jpg", payload, "image/jpeg")}, timeout=60)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert list(r.json()) == ["error"] and r.json()["error"]["code"] == code, (name, r.text)
        assert r.json()["error"]["message"] and "\n" not in r.json()["error"]["message"], name
    none = httpx.post(f"{base}/search", timeout=10)  # no file at all
    assert none.status_code == 400 and none.json()["error"]["code"] == "no_photo", none.text
    assert httpx.get(f"{base}/photos/../../warehouse/runs", timeout=10).status_code == 404
    assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ready"
    r = httpx.post(f"{base}/search", files={"photo": ("ok.png", good, "image/png")}, timeout=60)
    assert r.status_code == 200 and r.json()["results"]


def _sample_jpeg(name: str) -> bytes:
    from sklearn.datasets import load_sample_image

    buf = io.BytesIO()
    Image.fromarray(load_sample_image(name)).save(buf, "JPEG")
    return buf.getvalue()


def test_a_photo_of_no_shoe_is_answered_with_match_level_none(api_server):
    """A cataloged shoe photo is the same product; a photo of a building matches nothing (JSON fields and page).
    Measured on this index (ImageNet GeM, 96 px): the building's best score 0.38."""
    from warehouse import open_warehouse

    base, settings = api_server
    row = open_warehouse(settings).query(
        "SELECT path FROM images_current WHERE status = 'ok' AND position = 0 ORDER BY product_id LIMIT 1").to_pylist()[0]
    shoe = httpx.post(f"{base}/search", files={"photo": ("s.jpg", (settings.images_dir / row["path"]).read_bytes(),
                                                         "image/jpeg")}, timeout=60).json()
    assert shoe["match_level"] == "same" and shoe["results"][0]["level"] == "same", shoe
    assert "confident_match" not in shoe and "match_threshold" not in shoe and "confident" not in shoe["results"][0]
    other = httpx.post(f"{base}/search", files={"photo": ("c.jpg", _sample_jpeg("china.jpg"), "image/jpeg")},
                       timeout=60).json()
    assert other["match_level"] == "none" and {h["level"] for h in other["results"]} == {"none"}, other
    lowest = other["levels"]["similar"] or other["levels"]["same"]
    assert other["results"][0]["score"] < lowest <= other["levels"]["same"] < shoe["results"][0]["score"]
    page = httpx.post(f"{base}/", files={"photo": ("c.jpg", _sample_jpeg("china.jpg"), "image/jpeg")}, timeout=60)
    assert page.status_code == 200 and "No match" in page.text and "Same product" not in page.text


def test_the_index_and_model_load_at_start_and_health_says_starting_until_then(indexed_home):
    """Issue 28: the first search paid ~5 s (the model loaded on the first query). The server loads the index and
    the model as it starts and runs a warm-up search; until then /health answers 503 ``starting`` (here held
    there by holding the loader's lock), then ``ready`` with no search asked, the searcher already in memory."""
    from serving import search as serving_search
    from tests.fixtures_search import search_settings, serve_api

    settings = search_settings(indexed_home)
    serving_search._SERVING.pop(str(settings.home), None)  # as a fresh process: nothing loaded
    with serving_search._LOAD_LOCK, serve_api(settings, wait_ready=False) as base:
        held = httpx.get(f"{base}/health", timeout=10)
        assert held.status_code == 503 and held.json()["status"] == "starting", held.text
        assert held.json()["error"]["code"] == "starting", held.text
        assert "<form" in httpx.get(base + "/", timeout=10).text  # the page is served meanwhile
        serving_search._LOAD_LOCK.release()
        try:
            for _ in range(600):
                if (health := httpx.get(f"{base}/health", timeout=10)).json()["status"] != "starting":
                    break
                time.sleep(0.1)
            assert health.status_code == 200 and health.json()["status"] == "ready", health.text
            assert serving_search._SERVING[str(settings.home)].searcher is not None  # loaded before any search
        finally:
            serving_search._LOAD_LOCK.acquire()
