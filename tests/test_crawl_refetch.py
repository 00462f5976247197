"""An item page is fetched again only when its listing entry changed (or its last fetch is older than
``crawl.refetch_after_days``): over real HTTP against the demo shop, counted by the shop's own request counters."""

from __future__ import annotations

import time

import httpx
import pytest

from core.settings import Settings
from tasks.crawl import crawl, crawl_summary
from tests.fixtures_crawl import FAST_CRAWL
from warehouse import open_warehouse

N = 10  # products: one search page of the shop (5 in the HTML, 5 in its lazy half)


def _served(shop) -> dict:
    return httpx.get(f"{shop.url}/_shop/stats.json").json()


def _delta(after: dict, before: dict, key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def _crawl(settings, shop) -> dict:
    run_id = crawl(settings, site=shop.url, keywords=["鞋"], categories=[], max_products=100)
    s = crawl_summary(settings, run_id)
    s["message"] = open_warehouse(settings).query("SELECT message FROM runs WHERE run_id = ?",
                                                  [run_id]).to_pylist()[0]["message"]
    return s


@pytest.mark.e2e
def test_only_the_item_whose_listing_changed_is_fetched_again(crawl_settings, make_shop):
    shop = make_shop(n=N)
    first = _crawl(crawl_settings, shop)
    assert first["products_written"] == N and first["products_unchanged_in_listing"] == 0

    before = _served(shop)
    second = _crawl(crawl_settings, shop)
    after = _served(shop)
    assert _delta(after, before, "item_pages") == 0 and _delta(after, before, "price_requests") == 0
    assert _delta(after, before, "images") == 0
    assert second["stats"].get("shoesearch/pages/item", 0) == 0
    assert second["products_written"] == 0
    assert second["products_unchanged"] == second["products_unchanged_in_listing"] == N
    assert second["sources"][0]["unchanged_in_listing"] == N
    assert f"{N} seen unchanged in the listing, item page not fetched" in second["message"]

    changed = shop.state.products[7]
    old_price = float(changed.meta["price"])
    changed.meta["price"] = round(old_price + 10.5, 2)  # the listing (and the price API) show the new price
    before = _served(shop)
    third = _crawl(crawl_settings, shop)
    after = _served(shop)
    assert _delta(after, before, "item_pages") == 1 and _delta(after, before, "price_requests") == 1
    assert _delta(after, before, "images") == 0  # its photos are known: not downloaded again
    assert third["products_written"] == 1 and third["products_unchanged_in_listing"] == N - 1
    wh = open_warehouse(crawl_settings)
    prices = wh.query("SELECT price FROM products WHERE sku = ? ORDER BY crawled_at", [changed.sku]).to_pylist()
    assert [p["price"] for p in prices] == [pytest.approx(old_price), pytest.approx(old_price + 10.5)]
    assert wh.query("SELECT count(*) n FROM products").to_pylist()[0]["n"] == N + 1  # nothing else rewritten

    # Past crawl.refetch_after_days every item page is fetched again; nothing changed, so nothing is written.
    time.sleep(0.2)
    aged = Settings.load(home=crawl_settings.home, overrides={**FAST_CRAWL, "crawl.refetch_after_days": 1e-6})
    before = _served(shop)
    fourth = _crawl(aged, shop)
    after = _served(shop)
    assert _delta(after, before, "item_pages") == N and _delta(after, before, "images") == 0
    assert fourth["products_written"] == 0 and fourth["products_unchanged"] == N
    assert fourth["products_unchanged_in_listing"] == 0


def test_the_listing_signature_follows_what_the_listing_shows(make_shop):
    """Title (however the keyword highlight splits it), price, photo and shop; no price shown: no signature."""
    from crawlers import jdsite
    from demo_shop.render import listing_items

    shop = make_shop(n=2)
    product = shop.state.products[0]
    (entry,) = jdsite.parse_listing(f'<ul class="gl-warp">{listing_items([product], eager=True)}</ul>')
    assert entry.price == f"{float(product.meta['price']):.2f}" and entry.title == product.meta["title"]
    assert entry.image == product.gallery[0].jfs and entry.shop == product.meta["shop_name"]
    lazy = jdsite.parse_listing(f'<ul class="gl-warp">{listing_items([product], eager=False)}</ul>')[0]
    assert lazy.signature == entry.signature  # the lazy half's data-lazy-img names the same photo
    title = product.meta["title"]
    highlighted = listing_items([product], eager=True).replace(
        f"<em>{title}</em>", f'<em>{title[:2]}<font class="skcolor_ljg">{title[2:4]}</font>{title[4:]}</em>')
    assert jdsite.parse_listing(f'<ul class="gl-warp">{highlighted}</ul>')[0].signature == entry.signature
    for field, value in (("price", "1.00"), ("title", "其他"), ("image", "jfs/t1/other.jpg"), ("shop", "别家")):
        assert jdsite.ListingEntry(**{**vars(entry), field: value}).signature != entry.signature
    assert jdsite.ListingEntry(**{**vars(entry), "price": None}).signature is None


def test_listing_memory_keeps_the_last_fetch_per_site(tmp_path):
    from datetime import datetime, timedelta, timezone

    from crawlers.listings import ListingMemory, site_slug

    now = datetime.now(timezone.utc)
    memory = ListingMemory(tmp_path, "http://127.0.0.1:8765")
    assert memory.load() == {} and not memory.path.exists()
    memory.record([("1", "a", now - timedelta(days=3)), ("2", None, now)])  # no signature: not recorded
    memory.record([("1", "b", now)])
    assert memory.load() == {"1": ("b", now)}
    assert ListingMemory(tmp_path, None).load() == {}  # another site: its own file
    assert (site_slug(None), site_slug("http://127.0.0.1:8765")) == ("jd", "127.0.0.1_8765")


def test_claims_settle_each_sku_once_and_the_total_across_shards(tmp_path):
    from crawlers.shards import ClaimStore, listed_count, plan_shards

    path = tmp_path / "claims.sqlite"
    zero, one = ClaimStore(path, 0, limit=3), ClaimStore(path, 1, limit=3)
    assert zero.claim(["a", "b"]) == {"a": "mine", "b": "mine"}
    assert one.claim(["b", "c", "d"]) == {"b": "other", "c": "mine", "d": "over"}
    assert ClaimStore(path, 0, limit=3).claim(["a", "c", "e"]) == {"a": "mine", "c": "other", "e": "over"}  # resumed
    assert listed_count(path) == 5
    assert plan_shards(["k1", "k2", "k3"], ["c1"], 2) == [{"keywords": ["k1", "k3"], "categories": []},
                                                         {"keywords": ["k2"], "categories": ["c1"]}]
    assert plan_shards(["k1"], [], 4) == [{"keywords": ["k1"], "categories": []}]  # never an empty shard
