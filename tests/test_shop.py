"""The demo shop reproduces JD's structure over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from core.errors import ShoesearchError
from core.settings import CrawlSettings
from crawlers import jdsite
from demo_shop.server import DemoShop, Faults, load_catalog


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


def test_the_shop_and_ingest_read_labels_csv_by_the_same_rules(tmp_path):
    """One labels.csv reader: ``TRUE`` is noise, a missing row is unknown, a bad value is one clear error."""
    from tasks.ingest import read_labels

    (tmp_path / "boot").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 60, 90, 30)).save(tmp_path / "boot" / f"{i}.png")
    (tmp_path / "labels.csv").write_text("image,group_id,is_noise\nboot/0.png,g1,0\nboot/1.png,g1, TRUE \n")
    assert read_labels(tmp_path)["boot/1.png"] == {"group_id": "g1", "domain": None, "is_noise": True}
    assert [ph.is_noise for ph in load_catalog(tmp_path)[0].gallery] == [False, True, None]
    (tmp_path / "labels.csv").write_text("image,is_noise\nboot/0.png,yes\n")
    with pytest.raises(ShoesearchError, match=r"labels.csv:2: is_noise must be 0/1, got 'yes'"):
        load_catalog(tmp_path)
    (tmp_path / "labels.csv").write_text("photo,is_noise\nboot/0.png,1\n")
    with pytest.raises(ShoesearchError, match="the first column must be 'image'"):
        load_catalog(tmp_path)


def _listed(client, site, keyword=None, category=None) -> list[str]:
    """SKUs of the first result page, both halves (search) or the list page (category)."""
    if keyword is None:
        return [e.sku for e in jdsite.parse_listing(client.get(site.list_url(category, 1)).text)]
    url = site.search_url(keyword, 1)
    first = [e.sku for e in jdsite.parse_listing(client.get(url).text)]
    if not first:  # like the spider: no lazy half to ask for
        return []
    lazy = client.get(site.lazy_url(keyword, 1, first), headers={"X-Requested-With": "XMLHttpRequest", "Referer": url})
    return first + [e.sku for e in jdsite.parse_listing(lazy.text) or []]  # an empty half is an empty body


def test_default_keywords_and_categories_list_products_the_way_jd_would(make_shop, client, tmp_path):
    shop = make_shop(n=12)
    site = jdsite.SiteMap(shop.url)
    products = client.get(f"{shop.url}/_shop/manifest.json").json()["products"]
    defaults = CrawlSettings()
    by_keyword = {k: _listed(client, site, keyword=k) for k in defaults.keywords}
    by_category = {c: _listed(client, site, category=c) for c in defaults.categories}
    for p in products:  # footwear as a whole: every product is found by a default keyword and a category
        assert any(p["sku"] in v for v in by_keyword.values()) and any(p["sku"] in v for v in by_category.values())

    def where(test):
        return [p["sku"] for p in products if test(p)]

    assert by_keyword["男鞋"] == where(lambda p: "/流行男鞋/" in p["category"])  # JD also searches category names
    assert by_keyword["女鞋"] == where(lambda p: "/时尚女鞋/" in p["category"])
    assert by_keyword["靴子"] == where(lambda p: p["category"].endswith("靴")) != []  # not every 鞋靴 product
    assert by_keyword["凉鞋"] == []  # the synthetic shop sells no sandals
    assert all(("男款" if "/流行男鞋/" in p["category"] else "女款") in p["title"]
               for p in products if p["category"].startswith("鞋靴/"))  # titles agree with the category
    # A category id prefix lists its whole subtree; a leaf only itself.
    assert by_category["11729,11730"] == where(lambda p: p["category_ids"].startswith("11729,11730,"))
    leaf = products[1]["category_ids"]
    assert _listed(client, site, category=leaf) == where(lambda p: p["category_ids"] == leaf)
    assert "<title>鞋靴/流行男鞋 - " in client.get(site.list_url("11729,11730", 1)).text
    # A --catalog folder without products.json: made-up 运动鞋 products, listed like JD's running shoes.
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 40), (90, 90, 30)).save(tmp_path / name / "0.png")
    with DemoShop(load_catalog(tmp_path), page_size=10) as plain:
        plain_site = jdsite.SiteMap(plain.url)
        skus = sorted(p.sku for p in plain.state.products)
        assert sorted(_listed(client, plain_site, keyword="运动鞋")) == skus
        assert sorted(_listed(client, plain_site, category="1318,12099,9756")) == skus
        assert _listed(client, plain_site, keyword="女鞋") == []


ESCAPES = "file_link=6,offsite_link=6,offsite_redirect=6,sku_swap=6,offsite_image=6"


def test_escape_and_robots_faults_over_http(make_shop, client):
    """The faults that try to lead a crawler off the site, and robots.txt answering 5xx / 4xx."""
    shop = make_shop(faults=ESCAPES, n=12)
    site = jdsite.SiteMap(shop.url)
    manifest = client.get(f"{shop.url}/_shop/manifest.json").json()
    offsite = manifest["offsite_url"]
    first = {}
    for p in manifest["products"]:
        first.setdefault(p["escape"], p)
    assert [first[k]["expected"] for k in ("file_link", "offsite_link", "offsite_redirect", "sku_swap",
                                           "offsite_image", None)] == [
        "written", "written", "refused", "parse_failed", "written", "written"]
    url = site.search_url("鞋", 1)
    html = client.get(url).text
    lazy = client.get(site.lazy_url("鞋", 1, [e.sku for e in jdsite.parse_listing(html)]),
                      headers={"X-Requested-With": "XMLHttpRequest", "Referer": url}).text
    href = {e.sku: e.url for e in jdsite.parse_listing(html) + jdsite.parse_listing(lazy)}
    decoy = href[first["file_link"]["sku"]]
    assert decoy.startswith("file://") and jdsite.parse_item(Path(urlsplit(decoy).path).read_bytes().decode("gbk")
                                                             ).sku == manifest["decoy_sku"]
    assert href[first["offsite_link"]["sku"]] == f"{offsite}/{first['offsite_link']['sku']}.html"
    moved = client.get(site.item_url(first["offsite_redirect"]["sku"]))
    assert moved.status_code == 302 and moved.headers["location"].startswith(offsite)
    swapped = first["sku_swap"]
    page = jdsite.parse_item(client.get(site.item_url(swapped["sku"])).content.decode("gbk"), swapped["sku"])
    assert page.sku == swapped["claims_sku"] != swapped["sku"]
    extra = first["offsite_image"]
    page = jdsite.parse_item(client.get(site.item_url(extra["sku"])).content.decode("gbk"), extra["sku"], site)
    assert page.gallery == [g["jfs"] for g in extra["gallery"]] and len(page.refused_photos) == 1
    assert page.refused_photos[0].startswith(offsite)
    assert client.get(f"{offsite}/{extra['sku']}.html").content.decode("gbk").count("[offsite] ") >= 1
    assert client.get(f"{shop.url}/_shop/stats.json").json()["offsite_requests"] == 1  # the other host counts
    # What is on the site: http(s) on JD's hosts (default port), or exactly the --site host:port.
    jd = jdsite.SiteMap()
    assert jd.refusal("https://img13.360buyimg.com/n1/jfs/t1/a.jpg") is None
    assert jd.refusal("http://item.jd.com/1.html") is None
    assert jd.refusal("file:///etc/passwd") and jd.refusal("https://item.jd.com:8443/1.html")
    assert jd.refusal("https://jd.com.evil.example/1.html") and site.refusal("https://item.jd.com/1.html")
    assert site.refusal(f"{shop.url}/1.html") is None and site.refusal(f"{offsite}/1.html")
    for fault, status in (("robots5xx", 503), ("robots5xx=502", 502), ("robots4xx", 404)):
        assert client.get(f"{make_shop(faults=fault, n=2).url}/robots.txt").status_code == status
    with pytest.raises(ShoesearchError, match="an HTTP status in 500..599"):
        Faults.parse("robots5xx=404")
