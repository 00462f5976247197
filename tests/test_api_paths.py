"""The API names no server paths: results carry served ``/photos/`` URLs (no absolute file, no ``file://``
product URL), the page links only this server's URLs, a 503 message has its paths replaced; ``/photos/`` refuses
NUL, ``..`` (also percent-encoded), absolute and over-long names with a 404 and no traceback in the
log. Requests go over a raw socket: a client library would normalise ``/photos/../x`` before sending."""

from __future__ import annotations

import io
import json
import logging
import re

import httpx
from PIL import Image

from tests.fixtures_search import raw_http, serve_api

BAD_PHOTO_PATHS = [
    "%00", "ab%00cd.jpg", "a%01b", "a" * 300, "/".join(["a" * 200] * 8),
    "../../warehouse/runs", "../catalog.duckdb", "%2e%2e/catalog.duckdb", "%2e%2e%2fcatalog.duckdb",
    "..%2f..%2fshoesearch.toml", "%5C..%5Ccatalog.duckdb", "/etc/passwd", "%2Fetc%2Fpasswd", "./x", "",
]


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()


def png(side: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def assert_no_server_path(text: str, home) -> None:
    assert str(home) not in text and "file://" not in text, text[:2000]


def test_results_and_page_name_only_served_urls(api_server):
    base, settings = api_server
    photo = next(settings.images_dir.glob("*/*.jpg")).read_bytes()
    r = httpx.post(f"{base}/search", params={"k": 5}, files={"photo": ("q.jpg", photo)}, timeout=60)
    assert r.status_code == 200, r.text
    assert_no_server_path(r.text, settings.home)
    for hit in r.json()["results"]:
        assert "photo_file" not in hit and hit["url"] is None  # the test catalog's URLs are file://
        assert hit["photo_url"] == "/photos/" + hit["photo_path"] and not hit["photo_path"].startswith("/")
        assert httpx.get(base + hit["photo_url"], timeout=10).status_code == 200
    page = httpx.post(f"{base}/", files={"photo": ("q.jpg", photo)}, timeout=60)
    assert page.status_code == 200
    assert_no_server_path(page.text, settings.home)
    links = re.findall(r'(?:href|src|action)="([^"]*)"', page.text)
    assert links and all(link.startswith("/") and not link.startswith("//") or link.startswith("data:image/")
                         for link in links), links
    hits = r.json()["results"]
    assert {h["product_url"] for h in hits} <= set(links) and {h["thumb_url"] for h in hits} <= set(links), links


def test_unavailable_index_message_names_no_server_path(indexed_settings):
    settings = indexed_settings
    index_id = (settings.indexes_dir / "CURRENT").read_text().strip()
    (settings.indexes_dir / index_id / "meta.json").unlink()  # a broken index directory
    with serve_api(settings) as base:
        r = httpx.post(f"{base}/search", files={"photo": ("q.png", png())}, timeout=60)
    assert r.status_code == 503 and f"cannot read indexes/{index_id}/meta.json" in r.json()["error"]["message"], r.text
    assert_no_server_path(r.text, settings.home)
    assert not re.search(r"(?<![\w:/])/(tmp|home|work|root)\b", r.text), r.text


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_photos_refuses_malformed_names_with_404_and_no_traceback(api_server):
    base, settings = api_server
    served = next(settings.images_dir.glob("*/*.jpg")).relative_to(settings.images_dir).as_posix()
    records, loggers = Records(), [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn", "fastapi", "")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        assert raw_http(base, get(f"/photos/{served}"))[0] == 200  # the control: a stored photo is served
        answers = {path: raw_http(base, get(f"/photos/{path}")) for path in BAD_PHOTO_PATHS}
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    assert {path: status for path, (status, _) in answers.items()} == {path: 404 for path in BAD_PHOTO_PATHS}
    for status, response in answers.values():
        body = response.split(b"\r\n\r\n", 1)[1].decode()
        assert json.loads(body)["error"]["code"] == "not_found" and str(settings.home) not in body
    assert not [r for r in records.records if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in records.records]
