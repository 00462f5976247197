"""The crawler does not trust sizes and lengths (item 7 of the second hostile review), over real HTTP with the
real Scrapy subprocess: a page over the page cap is dropped unread, robots.txt is parsed up to 500 KiB only,
a gallery keeps ``crawl.max_photos_per_product`` photos, a photo over ``crawl.max_image_bytes`` is refused;
each cap is counted and named in the crawl's outcome."""

from __future__ import annotations

import httpx
import pytest

from core.settings import CrawlSettings
from crawlers.outcome import shortfall_reason
from demo_shop.faults import FLOOD_PHOTOS
from tasks.crawl import crawl, crawl_summary
from warehouse import open_warehouse

DEFAULTS = CrawlSettings()


def _galleries(wh) -> dict[str, list]:
    rows = wh.query("""SELECT p.sku, i.position, i.sha1, i.status FROM products_current p
                       JOIN images_current i USING (product_id) ORDER BY p.sku, i.position""").to_pylist()
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r["sku"], []).append((r["position"], r["sha1"], r["status"]))
    return out


def _expected_gallery(p: dict, cap: int) -> list[tuple]:
    rows = [(g["position"], g["sha1"] if g["expected_status"] == "ok" else None, g["expected_status"])
            for g in p["gallery"]]
    if p["size_fault"] == "photo_flood":  # the flood entries serve the front view, up to the cap
        rows += [(pos, p["gallery"][0]["sha1"], "ok") for pos in range(len(rows), cap)]
    return rows[:cap]


@pytest.mark.e2e
def test_crawl_caps_page_size_robots_txt_and_photos_per_product(crawl_settings, make_shop):
    """Products 0 and 4: an 8 MB item page without Content-Length (cap 5 MB); 1 and 5: 5,000 more imageList
    entries; robots.txt is 6 MiB (more than the page cap, announced): its first lines disallow the item pages
    of products 2 and 6, and a `Disallow: /` follows after 500 KiB, which a crawler reading it whole obeys
    (nothing crawled); one photo of products 1, 4 and 7 is 16 MB (over crawl.max_image_bytes)."""
    shop = make_shop(faults="huge_page=4,photo_flood=4,huge_robots=4,huge_photo=3", n=8)
    manifest = httpx.get(f"{shop.url}/_shop/manifest.json").json()
    products = manifest["products"]
    kinds = {p["sku"]: p["size_fault"] for p in products}
    assert sorted(filter(None, kinds.values())) == ["huge_page"] * 2 + ["huge_robots"] * 2 + ["photo_flood"] * 2
    s = crawl_summary(crawl_settings, crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[]))

    # robots.txt: the rules in its first 500 KiB hold, the one after them is ignored (the crawl went on).
    assert s["finish_reason"] == "finished" and not s["stop_message"] and s["failure"] is None
    port = shop.url.rsplit(":", 1)[1]
    refused = s["requests_failed"]["refused"]
    assert refused[f"Forbidden by robots.txt (127.0.0.1:{port})"] == 2
    # The huge pages: dropped unread, named by the cap.
    assert refused[f"answer from 127.0.0.1:{port} over the {DEFAULTS.max_page_bytes}-byte size cap, dropped"] == 2
    assert s["sources"][0]["refused"] == 4 and s["sources"][0]["new"] == 8

    # Written: the other products, a flooded gallery cut at the cap, every photo over the byte cap refused.
    cap = DEFAULTS.max_photos_per_product
    expected = {p["sku"]: _expected_gallery(p, cap) for p in products if p["expected"] == "written"}
    assert len(expected) == s["products_written"] == 4
    assert _galleries(open_warehouse(crawl_settings)) == expected
    flooded = [p for p in products if p["size_fault"] == "photo_flood"]
    asked = httpx.get(f"{shop.url}/_shop/stats.json").json()
    assert asked["flood_images"] == sum(cap - len(p["gallery"]) for p in flooded)  # no more was downloaded
    too_large = sum(g["expected_status"] == "too_large" for sku in expected for g in
                    next(p for p in products if p["sku"] == sku)["gallery"])
    assert too_large >= 1 and s["images_by_status"]["too_large"] == too_large

    # Each cap counted and named in the one-line outcome (printed by `shoesearch crawl`, kept in the run).
    left_out = sum(len(p["gallery"]) + FLOOD_PHOTOS - cap for p in flooded)
    assert s["capped"] == {"page": 2, "robots": 1, "photos": left_out}
    assert (f"size caps: pages over crawl.max_page_bytes dropped: 2, gallery photos beyond "
            f"crawl.max_photos_per_product left out: {left_out}, robots.txt cut at crawl.max_robots_bytes: 1"
            ) in shortfall_reason(s)


def test_robots_txt_is_cut_at_its_last_complete_line():
    """A cut line is dropped, not parsed: `Disallow: /private` cut to `Disallow: /` would disallow everything."""
    from crawlers.middlewares import first_lines

    body = b"User-agent: *\nDisallow: /a\r\nDisallow: /private\n"
    assert first_lines(body, len(body)) == body
    assert first_lines(body, len(body) - 8) == b"User-agent: *\nDisallow: /a\r\n"
    assert first_lines(b"Disallow: /private", 11) == b""
