"""Unit tests of the crawl's Scrapy wiring: items, pipelines (crawlers/pipelines.py), the stats-file extension
(crawlers/extensions.py), the ``scrapy crawl`` command (crawlers/commands/crawl.py) and the project settings
(crawlers/settings.py). Each class is built from a real Scrapy crawler (``scrapy.utils.test.get_crawler``)
over a fresh data home; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from scrapy.http import Request, Response
from twisted.python.failure import Failure

SITE = "http://127.0.0.1:8765"
KEYWORD = "跑步鞋"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SHOESEARCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def photo_bytes(tmp_path_factory) -> list[bytes]:
    """Three real JPEG photos (64 px) of a synthetic product."""
    from demo_shop.synthetic import generate_catalog

    folder = generate_catalog(tmp_path_factory.mktemp("shop") / "catalog", 1, noise_rate=0.0, seed=3, image_size=64)
    return [path.read_bytes() for path in sorted(folder.glob("*/*.jpg"))[:3]]


def make_crawler(home: Path, extra: dict | None = None, **crawl):
    """A crawler with the JD spider attached (as Scrapy has it when pipelines open)."""
    from scrapy.utils.test import get_crawler

    from crawlers.spiders.jd import JdSpider

    cfg = {"site": SITE, "keywords": [KEYWORD], "categories": [], **crawl}
    crawler = get_crawler(JdSpider, {"SHOESEARCH_HOME": str(home), "SHOESEARCH_CRAWL": json.dumps(cfg),
                                     **(extra or {})})
    crawler.spider = JdSpider.from_crawler(crawler)
    return crawler


def product_item(sku: str, n_photos: int = 2):
    from datetime import datetime, timezone

    from crawlers.items import ProductItem

    gallery = [f"{SITE}/n1/jfs/t1/{sku}/{i}.jpg" for i in range(n_photos)]
    return ProductItem(product_id=f"jd:{sku}", source="jd", sku=sku, title=f"鞋 {sku}", price=99.0,
                       variants=[], n_images=n_photos, content_hash=hashlib.sha1(sku.encode()).hexdigest(),
                       crawled_at=datetime.now(timezone.utc), gallery=gallery, found_via=f"keyword:{KEYWORD}")


def gallery_pipeline(crawler):
    from crawlers.pipelines import GalleryPipeline

    pipeline = GalleryPipeline(crawler=crawler)
    pipeline.open_spider()
    return pipeline


def image_response(url: str, status: int, body: bytes = b"") -> Response:
    return Response(url=url, status=status, body=body, request=Request(url))


def test_product_row_holds_the_products_fields_only():
    item = product_item("1001")
    row = item.product_row()
    assert list(row) == list(item.PRODUCT_FIELDS)
    assert row["sku"] == "1001" and row["brand"] is None  # a field never set reads as None
    assert "gallery" not in row and "found_via" not in row


@pytest.mark.parametrize("exc, status", [
    ("PhotoFailed", "missing"), ("CancelledError", "too_large"), ("TimeoutError", "timeout"),
    ("IgnoreRequest", "refused"), ("ValueError", "download_failed")])
def test_a_failed_photo_download_gets_its_images_status(exc, status):
    from scrapy.exceptions import IgnoreRequest
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import TimeoutError

    from crawlers.pipelines import PhotoFailed, _failure_status

    made = {"PhotoFailed": lambda: PhotoFailed("missing", "HTTP 404"), "CancelledError": CancelledError,
            "TimeoutError": TimeoutError, "IgnoreRequest": lambda: IgnoreRequest("robots.txt"),
            "ValueError": lambda: ValueError("boom")}[exc]()
    got, reason = _failure_status(made)
    assert got == status and reason


def test_gallery_requests_carry_the_photo_size_cap(home):
    crawler = make_crawler(home, max_image_bytes=123_456)
    pipeline = gallery_pipeline(crawler)
    item = product_item("1002", n_photos=3)
    requests = pipeline.get_media_requests(item, pipeline.spiderinfo)
    assert [r.url for r in requests] == item["gallery"]
    assert all(r.meta["download_maxsize"] == 123_456 == r.meta["download_warnsize"] for r in requests)


def test_downloaded_photos_are_stored_by_content_hash_and_errors_refused(home, photo_bytes):
    from crawlers.pipelines import PhotoFailed

    pipeline = gallery_pipeline(make_crawler(home))
    url = f"{SITE}/n1/jfs/t1/a.jpg"
    stored = pipeline.media_downloaded(image_response(url, 200, photo_bytes[0]), Request(url), pipeline.spiderinfo)
    assert stored.status == "ok" and stored.sha1 == hashlib.sha1(photo_bytes[0]).hexdigest()
    assert (pipeline.images_dir / stored.path).read_bytes() == photo_bytes[0]
    for status, expected in ((404, "missing"), (503, "http_error")):
        with pytest.raises(PhotoFailed) as failed:
            pipeline.media_downloaded(image_response(url, status), Request(url), pipeline.spiderinfo)
        assert failed.value.status == expected
    assert pipeline.media_downloaded(image_response(url, 200, b"<html>"), Request(url),
                                     pipeline.spiderinfo).status == "not_image"


def test_item_completed_turns_each_photo_into_an_images_row(home, photo_bytes):
    from crawlers.pipelines import PhotoFailed

    pipeline = gallery_pipeline(make_crawler(home))
    item = product_item("1003", n_photos=2)
    stored = pipeline.media_downloaded(image_response(item["gallery"][0], 200, photo_bytes[0]),
                                       Request(item["gallery"][0]), pipeline.spiderinfo)
    results = [(True, stored), (False, Failure(PhotoFailed("missing", "HTTP 404 from the image CDN")))]
    rows = pipeline.item_completed(results, item, pipeline.spiderinfo)["images"]
    assert [(r["image_id"], r["position"], r["status"]) for r in rows] == [
        ("jd:1003#0", 0, "ok"), ("jd:1003#1", 1, "missing")]
    assert rows[0]["sha1"] == stored.sha1 and rows[1]["sha1"] is None and rows[1]["bytes"] is None
    stats = pipeline.stats
    assert stats.get_value("shoesearch/images/status/ok") == 1 == stats.get_value("shoesearch/images/status/missing")


def test_a_photo_lost_to_a_stopping_crawl_drops_its_product(home):
    from scrapy.exceptions import DropItem

    crawler = make_crawler(home)
    pipeline = gallery_pipeline(crawler)
    crawler.spider.stop_reason = "captcha"
    with pytest.raises(DropItem, match="captcha"):
        pipeline.item_completed([(False, Failure(TimeoutError("slow")))], product_item("1004", 1),
                                pipeline.spiderinfo)


def _crawl_items(home: Path, photo_bytes, skus: list[str], extra: dict | None = None, **crawl):
    """Items through both pipelines as Scrapy runs them; returns (crawler, the warehouse pipeline)."""
    from crawlers.pipelines import WarehousePipeline

    crawler = make_crawler(home, {"SHOESEARCH_PROGRESS_FILE": str(home / "progress.json"), **(extra or {})},
                           **crawl)
    gallery = gallery_pipeline(crawler)
    warehouse = WarehousePipeline.from_crawler(crawler)
    warehouse.open_spider()
    for sku, data in zip(skus, photo_bytes):
        item = product_item(sku, n_photos=1)
        stored = gallery.media_downloaded(image_response(item["gallery"][0], 200, data),
                                          Request(item["gallery"][0]), gallery.spiderinfo)
        warehouse.process_item(gallery.item_completed([(True, stored)], item, gallery.spiderinfo))
    return crawler, warehouse


def test_warehouse_pipeline_commits_every_n_products_and_records_its_run(home, photo_bytes):
    from core.settings import Settings
    from warehouse import open_warehouse

    crawler, pipeline = _crawl_items(home, photo_bytes, ["2001", "2002", "2003"], commit_every=2)
    before_close = dict(pipeline.written), len(pipeline.products)
    crawler.stats.inc_value("shoesearch/pages/search")
    pipeline.close_spider()
    assert before_close == ({"products": 2, "images": 2}, 1)  # two committed, one buffered
    wh = open_warehouse(Settings.load(home=home))
    run = wh.query("SELECT * FROM runs WHERE run_id = ?", [pipeline.run_id]).to_pylist()[-1]
    assert (run["step"], run["status"], run["flow"]) == ("crawl", "success", "scrapy")
    assert sorted(wh.query("SELECT sku FROM products_current").column("sku").to_pylist()) == ["2001", "2002", "2003"]
    assert wh.query("SELECT count(*) AS n FROM images_current WHERE status = 'ok'").to_pylist()[0]["n"] == 3
    assert crawler.stats.get_value(f"shoesearch/source/keyword:{KEYWORD}/written") == 3
    assert json.loads((home / "progress.json").read_text())["products_written"] == 3


def test_photos_stored_by_an_earlier_crawl_are_reused_not_downloaded(home, photo_bytes):
    from core.settings import Settings
    from warehouse import open_warehouse

    _, first = _crawl_items(home, photo_bytes[:2], ["5001", "5002"])
    first.close_spider()
    rows = open_warehouse(Settings.load(home=home)).query("SELECT url, sha1, path FROM images_current").to_pylist()
    stored = {r["url"]: r for r in rows}
    kept, lost = product_item("5001", 1)["gallery"][0], product_item("5002", 1)["gallery"][0]
    crawler = make_crawler(home)
    pipeline = gallery_pipeline(crawler)
    (pipeline.images_dir / stored[lost]["path"]).unlink()  # its file is gone: downloaded again
    pipeline.open_spider()
    reused = pipeline.media_to_download(Request(kept), pipeline.spiderinfo)
    assert (reused.status, reused.sha1, reused.path) == ("ok", stored[kept]["sha1"], stored[kept]["path"])
    assert pipeline.media_to_download(Request(lost), pipeline.spiderinfo) is None
    assert pipeline.media_to_download(Request(f"{SITE}/n1/jfs/t1/new.jpg"), pipeline.spiderinfo) is None
    assert crawler.stats.get_value("shoesearch/images/reused") == 1


def test_a_crawl_that_reached_no_site_records_a_failed_run(home):
    from core.settings import Settings
    from crawlers.pipelines import WarehousePipeline
    from warehouse import open_warehouse

    crawler = make_crawler(home)
    pipeline = WarehousePipeline.from_crawler(crawler)
    pipeline.open_spider()
    crawler.stats.inc_value("shoesearch/request_failed/unreachable/connection refused by 127.0.0.1:8765", 3)
    pipeline.close_spider()
    run = open_warehouse(Settings.load(home=home)).query(
        "SELECT status, message FROM runs WHERE run_id = ?", [pipeline.run_id]).to_pylist()[-1]
    assert run["status"] == "failed" and "crawl reached no site" in run["message"]


def test_a_run_given_by_the_crawl_task_is_written_to_not_recorded(home, photo_bytes):
    from core.settings import Settings
    from warehouse import open_warehouse

    given = "crawl-20260101T000000-abcdef"  # SHOESEARCH_RUN_ID: the crawl task records this run itself
    _, pipeline = _crawl_items(home, photo_bytes[:1], ["3001"], {"SHOESEARCH_RUN_ID": given}, commit_every=5)
    assert pipeline.written["products"] == 0  # buffered below commit_every
    pipeline.close_spider()
    wh = open_warehouse(Settings.load(home=home))
    assert wh.query("SELECT run_id FROM products WHERE sku = '3001'").column("run_id").to_pylist() == [given]
    assert wh.query("SELECT count(*) AS n FROM runs").to_pylist()[0]["n"] == 0
