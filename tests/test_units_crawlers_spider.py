"""Unit tests of the JD spider (crawlers/spiders/jd.py): its callbacks fed pages the demo shop renders.

No crawl runs here: each callback gets an ``HtmlResponse`` built from ``demo_shop.render`` (the JD page
structure ``crawlers/jdsite.py`` parses) and the requests / items / stats it produces are checked.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from scrapy.exceptions import CloseSpider
from scrapy.http import HtmlResponse, Request, TextResponse

SITE = "http://127.0.0.1:8765"
KEYWORD = "跑步鞋"
CATEGORY = "1318,12099,9756"


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """Four demo shop products (7 photos each) from a tiny synthetic catalog."""
    from demo_shop.catalog import load_catalog
    from demo_shop.synthetic import generate_catalog

    folder = generate_catalog(tmp_path_factory.mktemp("shop") / "catalog", 4, noise_rate=0.0, seed=0, image_size=64)
    return load_catalog(folder)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A data home whose warehouse stays empty (the spider only reads it)."""
    return tmp_path_factory.mktemp("spider") / "home"


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """A data home of its own, for a test that writes crawl runs."""
    monkeypatch.setenv("SHOESEARCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_spider(home: Path, done_runs: list[str] | None = None, **crawl):
    from scrapy.utils.test import get_crawler

    from crawlers.spiders.jd import JdSpider

    cfg = {"site": SITE, "keywords": [KEYWORD], "categories": [], **crawl}
    crawler = get_crawler(JdSpider, {"SHOESEARCH_HOME": str(home), "SHOESEARCH_CRAWL": json.dumps(cfg),
                                     "SHOESEARCH_DONE_RUNS": json.dumps(done_runs or [])})
    spider = JdSpider.from_crawler(crawler)
    crawler.spider = spider
    return spider


def stat(spider, key: str):
    return spider.crawler.stats.get_value(key)


def source_stat(kind: str, name: str, counter: str):
    from crawlers.outcome import source_label
    from crawlers.outcome import source_stat as name_of

    return name_of(source_label(kind, name), counter)


def search_page(spider, products, total_pages: int = 1, url: str | None = None) -> HtmlResponse:
    from demo_shop.render import esc, listing_items, template

    body = template("search.html").substitute(
        keyword=esc(KEYWORD), keyword_js=KEYWORD, page=1, total_pages=total_pages, raw_page=1,
        items=listing_items(products, eager=True))
    return HtmlResponse(url=url or spider.site.search_url(KEYWORD, 1), body=body.encode("utf-8"), encoding="utf-8")


def lazy_half(spider, products) -> HtmlResponse:
    from demo_shop.render import listing_items

    body = listing_items(products, eager=False)
    return HtmlResponse(url=spider.site.lazy_url(KEYWORD, 1, ["1"]), body=body.encode("utf-8"), encoding="utf-8")


def list_page(spider, products, next_href: str | None) -> HtmlResponse:
    from demo_shop.render import listing_items, template

    pager = f'<a class="pn-next" href="{next_href}"><em>下一页</em></a>' if next_href else ""
    body = template("list.html").substitute(category_name="跑步鞋", items=listing_items(products, eager=True),
                                            pager=pager)
    return HtmlResponse(url=spider.site.list_url(CATEGORY, 1), body=body.encode("utf-8"), encoding="utf-8")


def item_response(spider, product, **render) -> HtmlResponse:
    from demo_shop.render import item_page

    body = item_page(product, **render).encode("gbk", errors="xmlcharrefreplace")
    return HtmlResponse(url=spider.site.item_url(product.sku), body=body, encoding="gbk")


def price_response(spider, skus: list[str], payload) -> TextResponse:
    return TextResponse(url=spider.site.price_url(skus), body=json.dumps(payload).encode(), encoding="utf-8")


def shop_prices(product, factor: float = 1.0) -> list[dict]:
    price, list_price = float(product.meta["price"]) * factor, float(product.meta["list_price"])
    return [{"id": f"J_{product.sku}", "p": f"{price:.2f}", "m": f"{list_price:.2f}"}]


def test_from_crawler_reads_the_crawl_section_and_drops_blank_sources(home):
    spider = make_spider(home, keywords=[KEYWORD, "  "], categories=[CATEGORY, ""], max_products=7, max_pages=3,
                         max_photos_per_product=5)
    assert (spider.keywords, spider.categories) == ([KEYWORD], [CATEGORY])
    assert (spider.max_products, spider.max_pages, spider.max_photos) == (7, 3, 5)
    assert spider.site.item_url("42") == f"{SITE}/42.html"
    assert spider.known_hashes == {} and spider.incomplete == set() and spider.done_skus == set()


def test_start_requests_every_keyword_and_category_and_refuses_none(home):
    async def collect(spider):
        return [request async for request in spider.start()]

    spider = make_spider(home, keywords=["a", "b"], categories=[CATEGORY])
    requests = asyncio.run(collect(spider))
    assert [r.url for r in requests] == [spider.site.search_url("a", 1), spider.site.search_url("b", 1),
                                         spider.site.list_url(CATEGORY, 1)]
    assert [r.callback for r in requests] == [spider.parse_search, spider.parse_search, spider.parse_list]
    assert all(r.errback == spider.request_failed and r.dont_filter for r in requests)
    with pytest.raises(CloseSpider):
        asyncio.run(collect(make_spider(home, keywords=[" "], categories=[])))


def test_search_page_schedules_items_its_lazy_half_and_further_pages(home, products):
    spider = make_spider(home, max_pages=2)
    out = list(spider.parse_search(search_page(spider, products[:2], total_pages=3), keyword=KEYWORD, page=1))
    items = [r for r in out if r.callback == spider.parse_item]
    assert [r.url for r in items] == [f"{SITE}/{p.sku}.html" for p in products[:2]]
    assert [r.cb_kwargs for r in items] == [{"sku": p.sku} for p in products[:2]]
    (lazy,) = [r for r in out if r.callback == spider.parse_lazy]
    assert lazy.url == spider.site.lazy_url(KEYWORD, 1, [p.sku for p in products[:2]])
    assert lazy.headers.get("X-Requested-With") == b"XMLHttpRequest"
    assert lazy.headers.get("Referer").decode() == spider.site.search_url(KEYWORD, 1)
    pages = [r for r in out if r.callback == spider.parse_search]
    assert [r.cb_kwargs["page"] for r in pages] == [2]  # 3 pages listed, --max-pages 2
    assert stat(spider, "shoesearch/pages/search") == 1
    assert stat(spider, source_stat("keyword", KEYWORD, "new")) == 2
    assert stat(spider, source_stat("keyword", KEYWORD, "more_pages")) == 1


def test_items_are_scheduled_once_and_no_more_than_max_products(home, products):
    spider = make_spider(home, max_products=3)
    list(spider.parse_search(search_page(spider, products[:2]), keyword=KEYWORD, page=1))
    out = list(spider.parse_lazy(lazy_half(spider, products[1:4]), keyword=KEYWORD, page=1))
    assert [r.cb_kwargs["sku"] for r in out] == [products[2].sku]  # [1] listed before, [3] over the limit
    assert stat(spider, source_stat("keyword", KEYWORD, "duplicates")) == 1
    assert stat(spider, "shoesearch/products/over_limit") == 1
    assert stat(spider, "shoesearch/products/listed") == 4
    assert spider.origin[products[2].sku] == f"keyword:{KEYWORD}"


def test_a_page_without_an_item_grid_is_a_parse_failure(home):
    spider = make_spider(home)
    page = HtmlResponse(url=spider.site.search_url(KEYWORD, 1), body=b"<html><body>changed</body></html>")
    assert list(spider.parse_search(page, keyword=KEYWORD, page=1)) == []
    assert stat(spider, "shoesearch/parse_failed/search") == 1
    assert stat(spider, source_stat("keyword", KEYWORD, "parse_failed")) == 1


def test_list_page_follows_its_next_link_on_the_site_only(home, products):
    spider = make_spider(home, keywords=[], categories=[CATEGORY])
    out = list(spider.parse_list(list_page(spider, products[:1], f"/list.html?cat={CATEGORY}&page=2"),
                                 category=CATEGORY, page=1))
    assert out[-1].url == f"{SITE}/list.html?cat={CATEGORY}&page=2" and out[-1].cb_kwargs["page"] == 2
    out = list(spider.parse_list(list_page(spider, products[1:2], "http://elsewhere.example/list.html?page=2"),
                                 category=CATEGORY, page=1))
    assert out[-1].url == spider.site.list_url(CATEGORY, 2)  # the canonical URL instead of the off-site one
    assert stat(spider, "shoesearch/offsite/link") == 1


def test_list_page_at_max_pages_notes_more_pages_instead_of_following(home, products):
    spider = make_spider(home, keywords=[], categories=[CATEGORY], max_pages=1)
    out = list(spider.parse_list(list_page(spider, products[:1], "/list.html?page=2"), category=CATEGORY, page=1))
    assert [r.callback for r in out] == [spider.parse_item]
    assert stat(spider, source_stat("category", CATEGORY, "more_pages")) == 1


def test_item_page_asks_for_its_price_with_the_parsed_gallery(home, products):
    spider = make_spider(home)
    product = products[0]
    (price,) = list(spider.parse_item(item_response(spider, product), sku=product.sku))
    assert price.url == spider.site.price_url([product.sku]) and price.callback == spider.parse_price
    page = price.cb_kwargs["page"]
    assert page.sku == product.sku and page.layout == "pageConfig"
    assert page.gallery == [photo.jfs for photo in product.gallery]
    assert list(spider.parse_item(item_response(spider, product), sku=product.sku)) == []  # parsed once


def test_item_page_gallery_is_capped_at_max_photos_per_product(home, products):
    spider = make_spider(home, max_photos_per_product=3)
    product = products[1]
    (price,) = list(spider.parse_item(item_response(spider, product), sku=product.sku))
    assert price.cb_kwargs["page"].gallery == [photo.jfs for photo in product.gallery[:3]]
    assert stat(spider, "shoesearch/capped/photos") == len(product.gallery) - 3


def test_item_page_naming_another_sku_is_refused(home, products):
    spider = make_spider(home)
    product = products[0]
    assert list(spider.parse_item(item_response(spider, product, sku="999999"), sku=product.sku)) == []
    assert stat(spider, "shoesearch/parse_failed/sku_mismatch") == 1


def test_item_page_without_page_config_is_read_from_the_dom(home, products):
    import dataclasses

    spider = make_spider(home)
    product = dataclasses.replace(products[2], layout_fault=True)
    (price,) = list(spider.parse_item(item_response(spider, product), sku=product.sku))
    assert price.cb_kwargs["page"].layout == "dom"
    assert price.cb_kwargs["page"].gallery == [photo.jfs for photo in product.gallery]
    assert stat(spider, "shoesearch/layout/dom") == 1


def _item_for(spider, product, factor: float = 1.0):
    """What the spider yields for ``product`` from its item page and price answer (None when unchanged)."""
    (price,) = list(spider.parse_item(item_response(spider, product), sku=product.sku))
    out = list(spider.parse_price(price_response(spider, [product.sku], shop_prices(product, factor)),
                                  **price.cb_kwargs))
    return out[0] if out else None


def test_price_answer_completes_the_product_item(home, products):
    spider = make_spider(home)
    product = products[0]
    list(spider.parse_search(search_page(spider, [product]), keyword=KEYWORD, page=1))
    item = _item_for(spider, product)
    row = item.product_row()
    assert set(row) == set(item.PRODUCT_FIELDS) and "gallery" not in row
    assert row["product_id"] == f"jd:{product.sku}" and row["source"] == "jd"
    assert row["price"] == pytest.approx(float(product.meta["price"]))
    assert row["list_price"] == pytest.approx(float(product.meta["list_price"]))
    assert (row["title"], row["brand"], row["shop_name"]) == (product.meta["title"], product.meta["brand"],
                                                              product.meta["shop_name"])
    assert row["variants"] == product.meta["variants"] and row["n_images"] == len(product.gallery)
    assert item["gallery"] == [spider.site.image_url(photo.jfs, "n1") for photo in product.gallery]
    assert item["found_via"] == f"keyword:{KEYWORD}" and len(row["content_hash"]) == 40


def test_content_hash_follows_the_parsed_content(home, products):
    first, again, cheaper = (_item_for(make_spider(home), products[0], f) for f in (1.0, 1.0, 0.5))
    assert first["content_hash"] == again["content_hash"]
    assert cheaper["content_hash"] != first["content_hash"]


def test_price_answer_with_a_captcha_stops_the_crawl(home, products):
    spider = make_spider(home)
    (price,) = list(spider.parse_item(item_response(spider, products[0]), sku=products[0].sku))
    with pytest.raises(CloseSpider) as stopped:
        list(spider.parse_price(price_response(spider, [products[0].sku], {"error": "pdos_captcha"}),
                                **price.cb_kwargs))
    assert stopped.value.reason == "captcha" and spider.stop_reason == "captcha"
    assert stat(spider, "shoesearch/stopped/captcha") == 1
    with pytest.raises(CloseSpider):  # a login wall met while stopping: the first reason is kept
        list(spider.parse_search(search_page(spider, products[:1], url=f"{SITE}/new/login.aspx"), keyword=KEYWORD,
                                 page=1))
    assert spider.stop_reason == "captcha" and stat(spider, "shoesearch/stopped/login_wall") is None


def test_a_price_answer_that_is_not_json_is_a_parse_failure_without_prices(home, products):
    spider = make_spider(home)
    (price,) = list(spider.parse_item(item_response(spider, products[0]), sku=products[0].sku))
    broken = TextResponse(url=price.url, body=b"<html>busy</html>", encoding="utf-8")
    (item,) = list(spider.parse_price(broken, **price.cb_kwargs))
    assert item["price"] is None and item["list_price"] is None
    assert stat(spider, "shoesearch/parse_failed/price") == 1


def test_a_redirect_to_the_login_page_stops_the_crawl(home, products):
    spider = make_spider(home)
    wall = search_page(spider, products[:1], url=f"{SITE}/new/login.aspx?ReturnUrl=x")
    with pytest.raises(CloseSpider) as stopped:
        list(spider.parse_search(wall, keyword=KEYWORD, page=1))
    assert stopped.value.reason == "login_wall" and "login" in spider.stop_message


def test_failed_request_is_counted_by_cause_and_for_its_source(home):
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    spider = make_spider(home)
    failure = Failure(ConnectionRefusedError())
    failure.request = Request(spider.site.search_url(KEYWORD, 1), cb_kwargs={"keyword": KEYWORD, "page": 1})
    spider.request_failed(failure)
    assert stat(spider, "shoesearch/request_failed/unreachable/connection refused by 127.0.0.1:8765") == 1
    assert stat(spider, source_stat("keyword", KEYWORD, "refused")) == 1


def test_robots_unreachable_before_any_page_waits_for_the_first_page(home, products):
    spider = make_spider(home)
    spider.stop_cleanly("robots_unreachable", "robots.txt did not answer")
    assert spider.stop_reason is None and spider.pending_stop == ("robots_unreachable", "robots.txt did not answer")
    with pytest.raises(CloseSpider):
        list(spider.parse_search(search_page(spider, products[:1]), keyword=KEYWORD, page=1))
    assert spider.stop_reason == "robots_unreachable"


def _write_crawl(home: Path, product, content_hash: str, photo_status: str) -> str:
    from datetime import datetime, timezone

    from core.settings import Settings
    from warehouse import open_warehouse, start_run

    wh = open_warehouse(Settings.load(home=home))
    product_id = f"jd:{product.sku}"
    with start_run(wh, step="crawl", params={}) as run:  # the newest crawled_at is the current row
        run.write("products", [{"product_id": product_id, "source": "jd", "sku": product.sku,
                                "content_hash": content_hash, "crawled_at": datetime.now(timezone.utc)}])
        run.write("images", [{"image_id": f"{product_id}#0", "product_id": product_id, "position": 0,
                              "status": photo_status}])
    return run.run_id


def test_known_products_are_skipped_unless_a_photo_may_be_retried(fresh_home, products):
    product = products[0]
    content_hash = _item_for(make_spider(fresh_home), product)["content_hash"]
    run_id = _write_crawl(fresh_home, product, content_hash, "missing")  # permanent: not retried
    spider = make_spider(fresh_home)
    assert spider.known_hashes == {f"jd:{product.sku}": content_hash}
    assert _item_for(spider, product) is None
    assert stat(spider, "shoesearch/products/unchanged") == 1
    _write_crawl(fresh_home, product, content_hash, "timeout")  # transient: fetched again
    spider = make_spider(fresh_home)
    assert spider.incomplete == {f"jd:{product.sku}"}
    assert _item_for(spider, product)["content_hash"] == content_hash  # unchanged, yielded for its photos
    assert make_spider(fresh_home, done_runs=[run_id]).done_skus == {product.sku}


def test_products_written_by_an_earlier_attempt_are_not_fetched_again(fresh_home, products):
    run_id = _write_crawl(fresh_home, products[0], "x" * 40, "ok")
    spider = make_spider(fresh_home, done_runs=[run_id])
    out = list(spider.parse_search(search_page(spider, products[:2]), keyword=KEYWORD, page=1))
    assert [r.cb_kwargs["sku"] for r in out if r.callback == spider.parse_item] == [products[1].sku]
    assert stat(spider, "shoesearch/products/already_done") == 1
    assert list(spider.parse_item(item_response(spider, products[0]), sku=products[0].sku)) == []
