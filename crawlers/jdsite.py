"""Every JD URL rule and selector, in one place (see ../shared/reference/jd-site.md).

JD changes its pages often. When a page stops matching, the parse functions here return
``None`` / empty results and the spider records a ``parse_failed`` stat and logs the URL, so
a layout change is loud. The demo shop (``demo_shop``) renders pages that match
these rules; nothing else in the project knows JD's markup.

What may be fetched at all is decided here too (``SiteMap.refusal``, ``SiteMap.photo_path``): http(s)
on JD's hosts, or with ``--site`` that one ``host:port``; ``crawlers/middlewares.py`` enforces it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

from parsel import Selector

from crawlers.jsliteral import balanced, js_literal

# --- hosts -------------------------------------------------------------------------------
# Role -> real JD host. ``SiteMap(site=...)`` points every role at one base URL (the demo shop).
JD_HOSTS = {
    "search": "https://search.jd.com",
    "list": "https://list.jd.com",
    "item": "https://item.jd.com",
    "image": "https://img10.360buyimg.com",
    "price": "https://p.3.cn",
    "passport": "https://passport.jd.com",
}
# Host suffix -> role, for rewriting URLs found in pages (img10..img30.360buyimg.com, ...).
HOST_ROLES = [
    ("search.jd.com", "search"),
    ("list.jd.com", "list"),
    ("item.jd.com", "item"),
    ("360buyimg.com", "image"),
    ("p.3.cn", "price"),
    ("passport.jd.com", "passport"),
]
LOGIN_PATH = "/new/login.aspx"
CAPTCHA_ERROR = "pdos_captcha"
SEARCH_HALF = 30  # items in a JD search page's HTML; the other half is lazy-loaded
FULL_SIZE_CODES = ("n0", "n1")
SIZE_CODE_RE = re.compile(r"^/(?:(n\d+)/)?(?:(s\d+x\d+)_)?(jfs/.+)$")


class SiteMap:
    """Builds JD URLs for the real hosts, or for one base URL standing in for all of them."""

    def __init__(self, site: str | None = None):
        self.site = site.rstrip("/") if site else None
        if self.site:
            parts = urlsplit(self.site)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"site must be an http(s) base URL like http://127.0.0.1:8765, got {site!r}")

    def base(self, role: str) -> str:
        return self.site or JD_HOSTS[role]

    def search_url(self, keyword: str, page: int) -> str:
        """Logical result page ``page`` (1-based): the HTML half."""
        query = {"keyword": keyword, "enc": "utf-8", "page": 2 * page - 1, "s": 1 + 60 * (page - 1)}
        return f"{self.base('search')}/Search?{urlencode(query)}"

    def lazy_url(self, keyword: str, page: int, first_half_skus: list[str]) -> str:
        """The lazy-loaded second half of logical page ``page`` (needs Referer + XHR headers)."""
        query = {"keyword": keyword, "enc": "utf-8", "page": 2 * page, "s": 1 + 60 * (page - 1) + SEARCH_HALF,
                 "scrolling": "y", "tpl": "1_M", "show_items": ",".join(first_half_skus)}
        return f"{self.base('search')}/s_new.php?{urlencode(query)}"

    def list_url(self, category: str, page: int) -> str:
        return f"{self.base('list')}/list.html?{urlencode({'cat': category, 'page': page})}"

    def item_url(self, sku: str) -> str:
        return f"{self.base('item')}/{sku}.html"

    def image_url(self, jfs_path: str, size_code: str = "n1") -> str:
        return f"{self.base('image')}/{size_code}/{jfs_path.lstrip('/')}"

    def price_url(self, skus: list[str]) -> str:
        return f"{self.base('price')}/prices/mgets?{urlencode({'skuIds': ','.join('J_' + s for s in skus)})}"

    def absolute(self, url: str) -> str:
        """A URL found in a page (often protocol-relative, ``//img13.360buyimg.com/...``) made fetchable."""
        if url.startswith("//"):
            url = "https:" + url
        parts = urlsplit(url)
        if not self.site or not parts.netloc:
            return url
        for suffix, role in HOST_ROLES:
            if parts.netloc == suffix or parts.netloc.endswith("." + suffix):
                base = urlsplit(self.base(role))
                return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))
        return url

    # --- what may be fetched ---
    def refusal(self, url: str) -> str | None:
        """Why ``url`` must not be fetched, or None when it is on the site.

        On the site: an http(s) URL on one of JD's hosts (``HOST_ROLES``, subdomains included, default
        port), or, with ``site``, on exactly the site's ``host:port``. Everything else (``file:``,
        ``data:``, other hosts, another port of the same address) is off the site.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return f"{parts.scheme}: URLs are never fetched" if parts.scheme else "a URL without a scheme"
        netloc = _netloc(parts)
        if self.site:
            site = _netloc(urlsplit(self.site))
            return None if netloc == site else f"{netloc} is not the site {site}"
        default_port = netloc.endswith(":443" if parts.scheme == "https" else ":80")
        return None if _role(parts.hostname or "") and default_port else f"{netloc} is not a JD host"

    def photo_path(self, entry: str) -> str | None:
        """The jfs path of a gallery entry: a bare ``jfs/...`` path, or a URL on the image CDN (the site)."""
        text = entry.strip()
        if not (text.startswith("//") or "://" in text):
            return jfs_path(text)  # a path on the CDN, as pageConfig's imageList has them
        url = self.absolute(text)
        if self.refusal(url) or (not self.site and _role(urlsplit(url).hostname or "") != "image"):
            return None
        return jfs_path(url)


def _netloc(parts) -> str:
    """``host:port`` with the scheme's default port spelled out (``Example.COM`` == ``example.com:80``)."""
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # a port that is not a number
        return parts.netloc.lower()
    return f"{(parts.hostname or '').lower()}:{port}"


def _role(host: str) -> str | None:
    """The JD role of a host name (``img13.360buyimg.com`` -> ``image``), None for other hosts."""
    host = host.lower()
    for suffix, role in HOST_ROLES:
        if host == suffix or host.endswith("." + suffix):
            return role
    return None


def jfs_path(url_or_path: str) -> str | None:
    """The ``jfs/...`` path of a CDN URL or a bare gallery entry, without size code or prefix."""
    text = url_or_path.strip()
    if text.startswith("jfs/"):
        return text
    if text.startswith("//"):
        text = "https:" + text
    path = urlsplit(text).path if "://" in text else "/" + text.lstrip("/")
    m = SIZE_CODE_RE.match(path)
    return m.group(3) if m else None


def is_login_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.path.lower().startswith(LOGIN_PATH) or parts.netloc.endswith("passport.jd.com")


def is_captcha(payload) -> bool:
    return isinstance(payload, dict) and payload.get("error") == CAPTCHA_ERROR


# --- list / search pages -----------------------------------------------------------------
@dataclass
class ListingEntry:
    sku: str
    url: str | None
    title: str | None
    price: str | None = None  # as the listing prints it ("2799.00"); None where JS fills it in
    image: str | None = None  # jfs path of the listed photo (photo 0)
    shop: str | None = None

    @property
    def signature(self) -> str | None:
        """What the listing shows of the product, hashed: title, price, photo and shop.

        The spider re-fetches an item page only when this changed since its last fetch (or that fetch is
        older than ``crawl.refetch_after_days``). None (always fetch) when the listing shows no price or no
        title: without them a price change could not be seen from the listing.
        """
        if not self.price or not self.title:
            return None
        shown = json.dumps([self.title, self.price, self.image, self.shop], ensure_ascii=False)
        return hashlib.sha1(shown.encode()).hexdigest()


def _text(texts: list[str]) -> str | None:
    """Text nodes as one line: the keyword highlight (``<font class="skcolor_ljg">``) splits a title in nodes."""
    return " ".join("".join(texts).split()) or None


def parse_listing(html: str) -> list[ListingEntry] | None:
    """Items of a search/list page or an ``s_new.php`` fragment; None if the page has no item grid."""
    sel = Selector(text=html)
    items = sel.css("li.gl-item[data-sku]")
    if not items and not sel.css("#J_goodsList, ul.gl-warp"):
        return None
    out = []
    for li in items:
        sku = li.attrib["data-sku"].strip()
        if not sku.isdigit():
            continue
        href = li.css("div.p-img a::attr(href)").get()
        img = li.css("div.p-img img")
        photo = (img.attrib.get("src") or img.attrib.get("data-lazy-img") or "") if img else ""
        out.append(ListingEntry(
            sku, href, _text(li.css("div.p-name em ::text").getall()),
            price=_text(li.css("div.p-price strong i::text").getall()),
            image=jfs_path(photo) if photo else None,
            shop=(li.css("div.p-shop a.curr-shop::attr(title)").get() or "").strip() or None,
        ))
    return out


def search_total_pages(html: str) -> int:
    """Logical pages of a search result (``#J_topPage .fp-text i``); 1 when absent."""
    text = Selector(text=html).css("#J_topPage span.fp-text i::text").get()
    return int(text) if text and text.strip().isdigit() else 1


def list_next_page(html: str) -> str | None:
    """The ``a.pn-next`` link of a category list page, if there is a next page."""
    return Selector(text=html).css("a.pn-next::attr(href)").get()


# --- item page ---------------------------------------------------------------------------
@dataclass
class ItemPage:
    sku: str
    title: str | None
    brand: str | None
    brand_id: str | None
    category: str | None
    category_ids: str | None
    shop_id: str | None
    shop_name: str | None
    variants: list[str] = field(default_factory=list)
    gallery: list[str] = field(default_factory=list)  # jfs paths, position 0 = front view
    layout: str = "pageConfig"  # pageConfig | dom (the fallback)
    refused_photos: list[str] = field(default_factory=list)  # gallery entries off the image CDN, left out


def _gallery(entries: list[str], site: SiteMap) -> tuple[list[str], list[str]]:
    """``(jfs paths, refused entries)``: an entry naming a host off the image CDN is left out."""
    paths, refused = [], []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            continue
        path = site.photo_path(entry)
        if path:
            paths.append(path)
        elif "//" in entry:
            refused.append(entry)
    return paths, refused


def parse_item(html: str, sku_hint: str | None = None, site: SiteMap | None = None) -> ItemPage | None:
    """Parse an item page from its inline ``pageConfig``, else from the DOM; None if neither matches.

    ``site`` (default: the real JD hosts) decides which photo URLs are on the image CDN. The page's
    own SKU is returned as found (``skuid``, body class ``item-<sku>``); ``sku_hint`` only fills in
    when the page names none: the caller checks that it is the SKU it asked for.
    """
    site = site or SiteMap()
    sel = Selector(text=html)
    product = _page_config_product(html)
    crumbs = [t.strip() for t in sel.css("#crumb-wrap .crumb .item a::text").getall() if t.strip()]
    category = "/".join(crumbs[:3]) or None
    brand = (sel.css("#parameter-brand li a::text").get() or sel.css(".J-crumb-br .head a::text").get() or "").strip()
    shop_link = sel.css(".J-hove-wrap .name a")
    shop_name = (shop_link.attrib.get("title") or shop_link.css("::text").get() or "").strip() if shop_link else ""
    shop_href = shop_link.attrib.get("href", "") if shop_link else ""
    m = re.search(r"index-(\d+)\.html", shop_href)
    dom_shop_id = m.group(1) if m else None
    if product is not None:
        gallery, refused = _gallery(product.get("imageList") or [], site)
        cat = product.get("cat") or []
        variants = [str(v.get("skuId")) for v in product.get("colorSize") or [] if isinstance(v, dict) and v.get("skuId")]
        sku = str(product.get("skuid") or sku_hint or "")
        return ItemPage(
            sku=sku,
            title=(product.get("name") or "").strip() or None,
            brand=brand or None,
            brand_id=str(product["brand"]) if product.get("brand") not in (None, "") else None,
            category=category,
            category_ids=",".join(str(c) for c in cat) or None,
            shop_id=str(product.get("shopId") or dom_shop_id or "") or None,
            shop_name=shop_name or None,
            variants=[v for v in variants if v != sku],
            gallery=gallery,
            layout="pageConfig",
            refused_photos=refused,
        )
    # DOM fallback (a page without pageConfig).
    gallery, refused = _gallery(sel.css("#spec-list ul.lh li img::attr(data-url)").getall(), site)
    main = sel.css("#spec-n1 img#spec-img::attr(data-origin)").get()
    if not gallery and main and site.photo_path(main):
        gallery = [site.photo_path(main)]
    title = " ".join(t.strip() for t in sel.css("div.sku-name ::text").getall() if t.strip())
    body = sel.css("body::attr(class)").get() or ""
    cats = [re.search(rf"\bcat-{i}-(\d+)\b", body) for i in (1, 2, 3)]
    item_m = re.search(r"\bitem-(\d+)\b", body)
    sku = item_m.group(1) if item_m else (sku_hint or "")
    if not (title and gallery and sku):
        return None
    variants = [v for v in sel.css("#choose-attr-1 .item::attr(data-sku)").getall() if v and v != sku]
    brand_id_m = re.search(r"brand=(\d+)", sel.css("#parameter-brand li a::attr(href)").get() or "")
    return ItemPage(
        sku=sku, title=title, brand=brand or None, brand_id=brand_id_m.group(1) if brand_id_m else None,
        category=category, category_ids=",".join(c.group(1) for c in cats if c) or None,
        shop_id=dom_shop_id, shop_name=shop_name or None, variants=variants, gallery=gallery, layout="dom",
        refused_photos=refused,
    )


def parse_prices(text: str) -> dict[str, dict] | dict:
    """Price API JSON as {sku: {"price", "list_price"}}; a captcha answer is returned as-is (a dict)."""
    payload = json.loads(text)
    if isinstance(payload, dict):
        return payload
    out = {}
    for row in payload:
        sku = str(row.get("id", "")).removeprefix("J_")
        out[sku] = {"price": _float(row.get("p")), "list_price": _float(row.get("m"))}
    return out


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number < 0 else number  # JD answers -1 for "no price"; NaN / inf: nulled and counted by conform


def _page_config_product(html: str) -> dict | None:
    m = re.search(r"var\s+pageConfig\s*=\s*\{", html)
    if not m:
        return None
    text = balanced(html, m.end() - 1)
    if text is None:
        return None
    try:
        config = js_literal(text)
    except (ValueError, IndexError):
        return None
    product = config.get("product") if isinstance(config, dict) else None
    return product if isinstance(product, dict) else None
