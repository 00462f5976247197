"""The demo shop reproduces JD's structure over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io

import httpx
import pytest
from PIL import Image

from crawlers import jdsite
from crawlers.demo_shop.server import DemoShop, Faults, load_catalog
from shoesearch.errors import ShoesearchError


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as c:
        yield c


def test_search_halves_pagination_and_item_pages(make_shop, client):
    shop = make_shop()
    site = jdsite.SiteMap(shop.url)
    manifest = client.get(f"{shop.url}/_shop/manifest.json").json()
    first = client.get(site.search_url("鞋", 1))
    entries = jdsite.parse_listing(first.text)
    assert len(entries) == 5 and jdsite.search_total_pages(first.text) == 4
    # The lazy half needs JD's XHR headers; without them the body is empty.
    lazy_url = site.lazy_url("鞋", 1, [e.sku for e in entries])
    assert client.get(lazy_url).text == ""
    lazy = jdsite.parse_listing(client.get(lazy_url, headers={"X-Requested-With": "XMLHttpRequest",
                                                              "Referer": site.search_url("鞋", 1)}).text)
    assert [e.sku for e in entries + lazy] == [p["sku"] for p in manifest["products"][:10]]
    # Category list pages paginate with a.pn-next.
    cat = manifest["products"][0]["category_ids"]
    page1 = client.get(site.list_url(cat, 1)).text
    in_cat = [p["sku"] for p in manifest["products"] if p["category_ids"] == cat]
    assert [e.sku for e in jdsite.parse_listing(page1)] == in_cat[:10]
    # Item page: GBK, pageConfig gallery == DOM gallery == manifest order.
    product = manifest["products"][3]
    resp = client.get(site.item_url(product["sku"]))
    assert "charset=gbk" in resp.headers["content-type"]
    html = resp.content.decode("gbk")
    page = jdsite.parse_item(html, product["sku"])
    assert page.layout == "pageConfig" and page.title == product["title"] and page.brand == product["brand"]
    assert page.gallery == [g["jfs"] for g in product["gallery"]]
    assert page.category == product["category"] and page.category_ids == product["category_ids"]
    assert page.variants == product["variants"]
    dom_only = jdsite.parse_item(html.replace("var pageConfig", "var other"), product["sku"])
    assert dom_only.layout == "dom" and dom_only.gallery == page.gallery and dom_only.title == page.title
    prices = jdsite.parse_prices(client.get(site.price_url([product["sku"]])).text)
    assert prices[product["sku"]]["price"] == pytest.approx(product["price"])


def test_image_cdn_size_codes_and_robots(make_shop, client):
    shop = make_shop(n=3)
    site = jdsite.SiteMap(shop.url)
    photo = client.get(f"{shop.url}/_shop/manifest.json").json()["products"][0]["gallery"][0]
    full = client.get(site.image_url(photo["jfs"], "n1")).content
    assert hashlib.sha1(full).hexdigest() == photo["sha1"]  # n1 is the original file
    thumb = Image.open(io.BytesIO(client.get(site.image_url(photo["jfs"], "n5")).content))
    assert max(thumb.size) <= 54
    boxed = Image.open(io.BytesIO(client.get(f"{shop.url}/n1/s60x60_{photo['jfs']}").content))
    assert max(boxed.size) <= 60
    assert site.full_size(f"//img13.360buyimg.com/n7/{photo['jfs']}") == site.image_url(photo["jfs"])
    assert "Disallow: /?*" in client.get(f"{shop.url}/robots.txt").text
    assert client.get(site.image_url("jfs/t1/0/nothing.jpg")).status_code == 404


def test_fault_modes_over_http(make_shop, client):
    shop = make_shop(faults="captcha=2,login=2,5xx=1,missing=1", n=4)
    site = jdsite.SiteMap(shop.url)
    sku = shop.state.products[0].sku
    assert client.get(site.price_url([sku])).json()[0]["id"] == f"J_{sku}"
    assert jdsite.is_captcha(client.get(site.price_url([sku])).json())
    assert client.get(site.search_url("鞋", 1)).status_code == 200
    wall = client.get(site.search_url("鞋", 1))
    assert wall.status_code == 302 and jdsite.is_login_url(wall.headers["location"])
    assert client.get(site.item_url(sku)).status_code == 503  # one 5xx, then fine
    assert client.get(site.item_url(sku)).status_code == 200
    faulty = [g for p in client.get(f"{shop.url}/_shop/manifest.json").json()["products"]
              for g in p["gallery"] if g["fault"] == "missing"]
    assert faulty and client.get(site.image_url(faulty[0]["jfs"])).status_code == 404


def test_plain_catalog_noise_injection_and_bad_input(tmp_path):
    for name in ("boot_a", "boot_b", "boot_c"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 60, 90, 30)).save(tmp_path / name / f"{i}.png")
    products = load_catalog(tmp_path, noise_rate=0.4, seed=1)
    again = load_catalog(tmp_path, noise_rate=0.4, seed=1)
    assert [p.sku for p in products] == [p.sku for p in again]  # deterministic synthesised skus
    assert all(p.meta["title"] and p.meta["price"] > 0 for p in products)
    for p in products:
        assert p.gallery[0].rel == f"{p.folder}/0.png" and p.gallery[0].is_noise is False
        noise = [ph for ph in p.gallery if ph.is_noise]
        assert len(noise) == 2 and all(not ph.rel.startswith(p.folder + "/") for ph in noise)
    with pytest.raises(ShoesearchError, match="unknown fault"):
        Faults.parse("teapot=3")
    with pytest.raises(ShoesearchError, match="does not exist"):
        load_catalog(tmp_path / "nope")
    with DemoShop(products) as shop:
        manifest = httpx.get(f"{shop.url}/_shop/manifest.json").json()
        assert sum(g["is_noise"] for p in manifest["products"] for g in p["gallery"]) == 6
