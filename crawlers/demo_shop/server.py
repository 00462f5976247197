"""The demo shop: a loopback HTTP server that serves a catalogue folder with JD's page structure.

It renders what ``crawlers/jdsite.py`` expects from the real site: search pages whose second
half is lazy-loaded from ``s_new.php`` (only with Referer + XHR headers), category list pages
with ``a.pn-next`` pagination, GBK item pages with an inline ``pageConfig`` and the DOM gallery,
CDN image paths with size codes (``n1/`` original bytes, ``n5/`` ``n7/`` ``s450x450_`` resized),
the price API and robots.txt. All JD hosts live on this one server (``crawl --site URL``).

Fault modes (``--faults captcha=5,login=2,5xx=2,slow=0.05,corrupt=3,not_image=3,bomb=3,missing=3,layout=2``)
make it misbehave deterministically; ``/_shop/manifest.json`` holds the ground truth: every
product, its ordered gallery (which photos are injected noise) and which photo got which fault.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import random
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template
from urllib.parse import parse_qs, quote, urlsplit

from PIL import Image

from crawlers import jdsite
from shoesearch.errors import ShoesearchError

TEMPLATES = Path(__file__).with_name("templates")
HOVER = ' class="img-hover"'
CURR = ' class="curr"'
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".bmp": "image/bmp", ".gif": "image/gif"}
SIZE_CODES = {"n5": 54, "n7": 220, "n2": 160, "n3": 130, "n4": 100}  # JD CDN thumbnail sizes (px)
EAGER_IMAGES = 10  # like JD, only the first items of a listing carry a real ``src``
BOMB_SIDE = 7000  # a 49-megapixel PNG of a few KB: past the crawler's pixel limit
ROBOTS_TXT = "User-agent: *\nDisallow: /?*\nDisallow: /pop/*.html\nDisallow: /pinpai/*.html?*\n"
DEFAULT_CATEGORY = ("运动户外/运动鞋包/跑步鞋", "1318,12099,9756")
FALLBACK_BRANDS = [("Nike", "8557"), ("adidas", "8528"), ("李宁", "5993"), ("安踏", "14026"), ("回力", "18455")]

IMAGE_FAULTS = {"corrupt": "corrupt", "not_image": "not_image", "bomb": "bomb", "missing": "missing"}
FAULT_DEFAULTS = {"captcha": 5, "login": 2, "5xx": 2, "slow": 0.05, "corrupt": 3, "not_image": 3, "bomb": 3,
                  "missing": 3, "layout": 2}
FAULT_HELP = {
    "captcha": "price API answers {\"error\":\"pdos_captcha\"} from its N-th request on",
    "login": "search/list pages redirect to the login page from the N-th on",
    "5xx": "item pages and photos answer 503 N times before they succeed",
    "slow": "every response is delayed S seconds",
    "corrupt": "one photo of every N-th product is a truncated JPEG",
    "not_image": "one photo of every N-th product is an HTML page",
    "bomb": "one photo of every N-th product is a decompression bomb",
    "missing": "one photo of every N-th product answers 404",
    "layout": "every N-th item page has no pageConfig (the DOM fallback must work)",
}


# --- catalogue ---------------------------------------------------------------------------
@dataclass
class Photo:
    file: Path
    rel: str  # path relative to the catalogue folder
    jfs: str  # CDN path, the same for the same file in any gallery
    is_noise: bool | None
    fault: str | None = None


@dataclass
class ShopProduct:
    index: int
    folder: str
    meta: dict
    gallery: list[Photo] = field(default_factory=list)
    layout_fault: bool = False

    @property
    def sku(self) -> str:
        return str(self.meta["sku"])


def jfs_for(rel: str) -> str:
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()
    suffix = Path(rel).suffix.lower()
    return f"jfs/t1/{zlib.crc32(rel.encode()) % 100_000}/{digest[:24]}{'.jpg' if suffix == '.jpeg' else suffix}"


def synth_metadata(folder: str) -> dict:
    """Deterministic product fields for a catalogue folder without ``products.json``."""
    h = int(hashlib.sha1(folder.encode("utf-8")).hexdigest(), 16)
    brand, brand_id = FALLBACK_BRANDS[h % len(FALLBACK_BRANDS)]
    price = 79 + (h >> 8) % 1200 - 0.01
    sku = str(10 ** 11 + (h >> 20) % (9 * 10 ** 11))
    return {
        "sku": sku, "title": f"{brand} {folder} 运动鞋", "brand": brand, "brand_id": brand_id,
        "category": DEFAULT_CATEGORY[0], "category_ids": DEFAULT_CATEGORY[1], "price": round(price, 2),
        "list_price": round(price * 1.3, 0) - 0.01, "shop_id": str(1_000_000 + h % len(FALLBACK_BRANDS)),
        "shop_name": f"{brand}官方旗舰店", "variants": [],
    }


def _noise_labels(catalog_dir: Path) -> dict[str, bool | None]:
    path = catalog_dir / "labels.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return {
            row["image"].strip(): (None if (row.get("is_noise") or "").strip() == "" else row["is_noise"].strip() in ("1", "true"))
            for row in csv.DictReader(fh)
        }


def load_catalog(catalog_dir: Path, noise_rate: float = 0.0, seed: int = 0) -> list[ShopProduct]:
    """Products of a catalogue folder, galleries sorted by file name; ``noise_rate`` injects others' photos."""
    catalog_dir = Path(catalog_dir)
    if not catalog_dir.is_dir():
        raise ShoesearchError(f"catalogue folder {catalog_dir} does not exist")
    if not 0 <= noise_rate < 1:
        raise ShoesearchError(f"--noise-rate must be in [0, 1), got {noise_rate}")
    meta_path = catalog_dir / "products.json"
    metadata = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    labels = _noise_labels(catalog_dir)
    products = []
    for folder in sorted(p for p in catalog_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        meta = {**synth_metadata(folder.name), **metadata.get(folder.name, {})}
        gallery = []
        for f in files:
            rel = f"{folder.name}/{f.name}"
            noise = labels.get(rel)
            gallery.append(Photo(f, rel, jfs_for(rel), noise if labels else False))
        products.append(ShopProduct(len(products), folder.name, meta, gallery))
    if not products:
        raise ShoesearchError(f"{catalog_dir} has no product folders with photos (expected DIR/<product>/<photos>)")
    skus = [p.sku for p in products]
    if len(set(skus)) != len(skus):
        raise ShoesearchError(f"{catalog_dir}: two product folders have the same sku")
    if noise_rate > 0 and len(products) > 1:
        _inject_noise(products, noise_rate, seed)
    return products


def _inject_noise(products: list[ShopProduct], noise_rate: float, seed: int) -> None:
    """Insert photos of other products so that about ``noise_rate`` of each gallery is noise."""
    originals = [list(p.gallery) for p in products]
    for product in products:
        rng = random.Random(f"noise-{seed}-{product.folder}")
        n_own = len(originals[product.index])
        n_noise = round(noise_rate * n_own / (1 - noise_rate))
        for _ in range(n_noise):
            other = rng.choice([q for q in products if q.index != product.index])
            src = rng.choice(originals[other.index])
            photo = Photo(src.file, src.rel, src.jfs, True)
            product.gallery.insert(rng.randint(1, len(product.gallery)), photo)


# --- faults ------------------------------------------------------------------------------
@dataclass
class Faults:
    values: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | list[str] | None) -> "Faults":
        """``"captcha=5,5xx,slow=0.1"`` (a name alone takes its default)."""
        parts = [p for chunk in ([spec] if isinstance(spec, str) else spec or []) for p in chunk.split(",") if p.strip()]
        values = {}
        for part in parts:
            name, _, raw = part.strip().partition("=")
            if name not in FAULT_DEFAULTS:
                known = "; ".join(f"{k}: {v}" for k, v in FAULT_HELP.items())
                raise ShoesearchError(f"unknown fault {name!r}. Known faults: {known}")
            try:
                value = float(raw) if raw else float(FAULT_DEFAULTS[name])
            except ValueError:
                raise ShoesearchError(f"fault {name}: {raw!r} is not a number") from None
            if value < 0 or (name != "slow" and value < 1):
                raise ShoesearchError(f"fault {name}: value must be >= 1 (seconds >= 0 for slow), got {raw}")
            values[name] = value
        return cls(values)

    def get(self, name: str) -> float | None:
        return self.values.get(name)

    def assign(self, products: list[ShopProduct]) -> None:
        """Mark which photos / item pages misbehave (deterministic: every N-th product)."""
        for k, kind in enumerate(IMAGE_FAULTS):
            every = self.get(kind)
            if not every:
                continue
            every = int(every)
            for product in products:
                if product.index % every == k % every and len(product.gallery) > 1:
                    photo = product.gallery[min(1 + k, len(product.gallery) - 1)]
                    target = photo.jfs
                    for p in products:  # the same URL misbehaves wherever it appears
                        for ph in p.gallery:
                            if ph.jfs == target:
                                ph.fault = kind
        if self.get("layout"):
            every = int(self.get("layout"))
            for product in products:
                product.layout_fault = product.index % every == 0


# --- rendering ---------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def _e(value) -> str:
    return html.escape(str(value if value is not None else ""), quote=True)


def _js_str(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'").replace("\n", " ") + "'"


class ShopState:
    """The catalogue, the faults, and request counters shared by the handler threads."""

    def __init__(self, products: list[ShopProduct], faults: Faults, page_size: int, source: str):
        if page_size < 2:
            raise ShoesearchError(f"page size must be >= 2 (two halves), got {page_size}")
        self.products = products
        self.by_sku = {p.sku: p for p in products}
        self.by_jfs = {ph.jfs: ph for p in products for ph in p.gallery}
        self.faults = faults
        self.page_size = page_size
        self.half = (page_size + 1) // 2
        self.source = source
        self.lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.url_hits: dict[str, int] = {}
        faults.assign(products)

    def count(self, key: str) -> int:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]

    def hit(self, url: str) -> int:
        with self.lock:
            self.url_hits[url] = self.url_hits.get(url, 0) + 1
            return self.url_hits[url]

    # --- queries ---
    def search(self, keyword: str) -> list[ShopProduct]:
        """Products whose title, brand or category path holds every term (JD also searches category
        names: 男鞋 finds 鞋靴/流行男鞋/...). As JD's segmenter does, a trailing 子 is optional in the
        title and the leaf category (靴子 finds 男靴, not every 鞋靴 product; 鞋子 finds 跑步鞋)."""
        tokens = [t.lower() for t in keyword.split() if t]
        return [p for p in self.products if tokens and all(_search_hit(t, p.meta) for t in tokens)]

    def category(self, cat: str) -> list[ShopProduct]:
        """Products in category ``cat`` or below it: like JD, ``a,b`` lists the whole ``a,b,*`` subtree."""
        want = [c.strip() for c in cat.split(",") if c.strip()]
        return [p for p in self.products if str(p.meta.get("category_ids") or "").split(",")[: len(want)] == want]

    def manifest(self) -> dict:
        products = []
        for p in self.products:
            gallery = []
            for pos, ph in enumerate(p.gallery):
                gallery.append({"position": pos, "file": ph.rel, "jfs": ph.jfs,
                                "url": f"{jdsite.JD_HOSTS['image']}/n1/{ph.jfs}", "sha1": _file_sha1(ph.file),
                                "is_noise": ph.is_noise, "fault": ph.fault,
                                "expected_status": IMAGE_FAULTS.get(ph.fault, "ok")})
            products.append({"sku": p.sku, "folder": p.folder, **{k: v for k, v in p.meta.items() if k != "sku"},
                             "layout_fault": p.layout_fault, "gallery": gallery})
        return {"source": self.source, "page_size": self.page_size, "faults": self.faults.values,
                "products": products}


def _search_hit(term: str, meta: dict) -> bool:
    title, category = str(meta.get("title") or "").lower(), str(meta.get("category") or "").lower()
    if term in f"{title} {str(meta.get('brand') or '').lower()} {category}":
        return True
    stem = term[:-1] if len(term) > 1 and term.endswith("子") else ""
    return bool(stem) and (stem in title or stem in category.rsplit("/", 1)[-1])


@lru_cache(maxsize=100_000)
def _file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@lru_cache(maxsize=4096)
def _resized(path: Path, side: int) -> bytes:
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((side, side))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85)
        return out.getvalue()


@lru_cache(maxsize=1)
def _bomb_png() -> bytes:
    out = io.BytesIO()
    Image.new("1", (BOMB_SIDE, BOMB_SIDE), 1).save(out, "PNG", optimize=True)
    return out.getvalue()


def listing_items(products: list[ShopProduct], eager: bool) -> str:
    tpl = _template("listing_item.html")
    rows = []
    for i, p in enumerate(products):
        title = str(p.meta.get("title") or "")
        rows.append(tpl.substitute(
            sku=_e(p.sku), title=_e(title), title_html=_e(title), price=_e(f"{float(p.meta.get('price') or 0):.2f}"),
            shop_id=_e(p.meta.get("shop_id")), shop_name=_e(p.meta.get("shop_name")),
            img_attr="src" if eager and i < EAGER_IMAGES else "data-lazy-img",
            img_host=int(p.sku) % 10, jfs=_e(p.gallery[0].jfs),
        ))
    return "\n".join(rows)


def item_page(p: ShopProduct) -> str:
    meta = p.meta
    cat_ids = [c for c in str(meta.get("category_ids") or "").split(",") if c]
    cats = (cat_ids + ["0", "0", "0"])[:3]
    crumbs = "\n".join(
        f'<div class="item{" first" if i == 0 else ""}"><a href="//list.jd.com/list.html?cat={_e(",".join(cat_ids[: i + 1]))}">{_e(name)}</a></div><div class="sep">&gt;</div>'
        for i, name in enumerate(str(meta.get("category") or "").split("/")) if name
    )
    variants = [str(v) for v in meta.get("variants") or []]
    thumbs = "\n".join(
        '<li' + (HOVER if i == 0 else '') + f'><img alt="{_e(meta.get("title"))}" src="//img1{i % 10}.360buyimg.com/n5/{ph.jfs}" data-url="{ph.jfs}" data-img="1" width="50" height="50"></li>'
        for i, ph in enumerate(p.gallery)
    )
    variant_html = "\n".join(
        f'<div class="item{" selected" if v == p.sku else ""}" data-sku="{_e(v)}" data-value="{_e(v)}"><a href="#none"><i>{_e(v)}</i></a></div>'
        for v in [p.sku] + variants
    )
    if p.layout_fault:
        page_config = '<script charset="gbk">var pageConfig = {compatible: true, searchType: 1};</script>'
    else:
        color_size = ", ".join(f'{{"skuId": {v}, "颜色": "款{i + 1}"}}' for i, v in enumerate([p.sku] + variants))
        page_config = (
            '<script charset="gbk">\nvar pageConfig = {\n    compatible: true,\n    product: {\n'
            f"        skuid: {p.sku},\n"
            f"        name: {_js_str(meta.get('title') or '')},\n"
            "        skuMarkJson: {isxg:false,isJDexpress:false,isjdmarket:false},\n"
            f"        src: '{p.gallery[0].jfs}',\n"
            f"        imageList: [{','.join(json.dumps(ph.jfs) for ph in p.gallery)}],\n"
            f"        cat: [{','.join(cat_ids)}],\n"
            f"        brand: {meta.get('brand_id') or 0},\n"
            f"        venderId:{meta.get('shop_id') or 0},\n"
            f"        shopId:'{meta.get('shop_id') or ''}',\n"
            f"        colorSize: [{color_size}],\n"
            f"        desc: '//cd.jd.com/description/channel?skuId={p.sku}&mainSkuId={p.sku}',\n"
            "        twoColumn: false,\n    }\n};\n</script>"
        )
    return _template("item.html").substitute(
        title=_e(meta.get("title")), page_config=page_config, cat1=cats[0], cat2=cats[1], cat3=cats[2],
        sku=_e(p.sku), crumbs=crumbs, cat_ids=_e(meta.get("category_ids")), brand=_e(meta.get("brand")),
        brand_id=_e(meta.get("brand_id")), shop_id=_e(meta.get("shop_id")), shop_name=_e(meta.get("shop_name")),
        img_host=int(p.sku) % 10, main_jfs=p.gallery[0].jfs, thumbs=thumbs, variants=variant_html,
    )


# --- HTTP --------------------------------------------------------------------------------
IMAGE_PATH = re.compile(r"^/(n\d+)/(?:(s(\d+)x(\d+))_)?(jfs/.+)$")
ITEM_PATH = re.compile(r"^/(\d+)\.html$")


class ShopHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a CDN
    server_version = "jdws/2.0"
    state: ShopState  # set on the subclass the server creates

    def log_message(self, format, *args):  # noqa: A002 - quiet: the crawler logs what matters
        return

    def do_GET(self):  # noqa: N802 - http.server API
        st = self.state
        slow = st.faults.get("slow")
        if slow:
            time.sleep(slow)
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        q = {k: v[0] for k, v in query.items()}
        st.count("requests")
        try:
            if path == "/robots.txt":
                return self._send(200, ROBOTS_TXT.encode(), "text/plain")
            if path == "/":
                return self._send(200, b'<html><body><form action="/Search"><input name="keyword"></form></body></html>', "text/html; charset=utf-8")
            if path == "/_shop/manifest.json":
                return self._send(200, json.dumps(st.manifest(), ensure_ascii=False).encode(), "application/json")
            if path == "/_shop/stats.json":
                with st.lock:
                    body = json.dumps(st.counters).encode()
                return self._send(200, body, "application/json")
            if path == jdsite.LOGIN_PATH:
                return self._send(200, "<html><head><title>京东-欢迎登录</title></head><body><div class=\"login-form\">请登录</div></body></html>".encode(), "text/html; charset=utf-8")
            if path in ("/Search", "/list.html") and self._login_wall():
                return
            if path == "/Search":
                return self._search(q)
            if path == "/s_new.php":
                return self._lazy(q)
            if path == "/list.html":
                return self._list(q)
            if path == "/prices/mgets":
                return self._prices(q)
            m = ITEM_PATH.match(path)
            if m:
                return self._item(m.group(1))
            m = IMAGE_PATH.match(path)
            if m:
                return self._image(m.group(1), m.group(3), m.group(5))
            return self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")
        except (BrokenPipeError, ConnectionResetError):
            return

    # --- pages ---
    def _login_wall(self) -> bool:
        after = self.state.faults.get("login")
        if after and self.state.count("listing_pages") >= after:
            target = f"{jdsite.LOGIN_PATH}?ReturnUrl={quote(self.path, safe='')}"
            self._send(302, b"", "text/html", {"Location": target})
            return True
        return False

    def _page_slice(self, products, logical_page: int, second_half: bool):
        st = self.state
        start = (logical_page - 1) * st.page_size + (st.half if second_half else 0)
        end = (logical_page - 1) * st.page_size + (st.page_size if second_half else st.half)
        return products[start:end]

    def _search(self, q):
        st = self.state
        keyword = q.get("keyword", "")
        raw_page = _int(q.get("page"), 1)
        logical = (raw_page + 1) // 2
        found = st.search(keyword)
        total = max(1, -(-len(found) // st.page_size))
        items = self._page_slice(found, logical, False)
        body = _template("search.html").substitute(
            keyword=_e(keyword), keyword_js=_e(json.dumps(keyword)[1:-1]), page=logical, total_pages=total,
            raw_page=raw_page, items=listing_items(items, eager=True))
        st.count("search_pages")
        self._send(200, body.encode("utf-8"), "text/html; charset=utf-8")

    def _lazy(self, q):
        st = self.state
        st.count("lazy_pages")
        if self.headers.get("X-Requested-With") != "XMLHttpRequest" or "/Search" not in (self.headers.get("Referer") or ""):
            return self._send(200, b"", "text/html; charset=utf-8")  # JD answers an empty body
        logical = max(1, _int(q.get("page"), 2) // 2)
        items = self._page_slice(st.search(q.get("keyword", "")), logical, True)
        self._send(200, listing_items(items, eager=False).encode("utf-8"), "text/html; charset=utf-8")

    def _list(self, q):
        st = self.state
        cat = q.get("cat", "")
        page = max(1, _int(q.get("page"), 1))
        found = st.category(cat)
        items = found[(page - 1) * st.page_size: page * st.page_size]
        total = max(1, -(-len(found) // st.page_size))
        pager = " ".join(f'<a href="/list.html?cat={quote(cat)}&amp;page={n}"{CURR if n == page else ""}>{n}</a>'
                         for n in range(1, total + 1))
        if page < total:
            pager += f' <a class="pn-next" href="/list.html?cat={quote(cat)}&amp;page={page + 1}"><em>下一页</em></a>'
        depth = len([c for c in cat.split(",") if c.strip()])
        names = "/".join(str(found[0].meta.get("category") or "").split("/")[:depth]) if found else ""
        body = _template("list.html").substitute(category_name=_e(names), items=listing_items(items, eager=True),
                                                 pager=pager)
        st.count("list_pages")
        self._send(200, body.encode("utf-8"), "text/html; charset=utf-8")

    def _item(self, sku):
        st = self.state
        product = st.by_sku.get(sku)
        if product is None:
            return self._send(404, b"<html><body>404</body></html>", "text/html")
        if self._burst(self.path):
            return
        st.count("item_pages")
        body = item_page(product).encode("gbk", errors="xmlcharrefreplace")
        self._send(200, body, "text/html; charset=gbk")

    def _prices(self, q):
        st = self.state
        n = st.count("price_requests")
        after = st.faults.get("captcha")
        if after and n >= after:
            return self._send(200, json.dumps({"error": jdsite.CAPTCHA_ERROR}).encode(), "application/json")
        out = []
        for raw in q.get("skuIds", "").split(","):
            sku = raw.strip().removeprefix("J_")
            p = st.by_sku.get(sku)
            price = float(p.meta.get("price") or 0) if p else -1.0
            list_price = float(p.meta.get("list_price") or price) if p else -1.0
            out.append({"id": f"J_{sku}", "p": f"{price:.2f}", "m": f"{list_price:.2f}", "op": f"{price:.2f}"})
        self._send(200, json.dumps(out).encode(), "application/json;charset=utf-8")

    def _image(self, size_code, box, jfs):
        st = self.state
        photo = st.by_jfs.get(jfs)
        if photo is None or photo.fault == "missing":
            return self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")
        full = size_code in jdsite.FULL_SIZE_CODES and not box
        if full and self._burst(self.path):
            return
        st.count("images")
        if full and photo.fault == "corrupt":
            data = photo.file.read_bytes()
            return self._send(200, data[: len(data) // 2], "image/jpeg")
        if full and photo.fault == "not_image":
            return self._send(200, b"<!DOCTYPE html><html><body>\xe5\x95\x86\xe5\x93\x81\xe5\x9b\xbe\xe7\x89\x87\xe4\xb8\x8d\xe5\xad\x98\xe5\x9c\xa8</body></html>", "image/jpeg")
        if full and photo.fault == "bomb":
            return self._send(200, _bomb_png(), "image/png")
        if full:
            return self._send(200, photo.file.read_bytes(), CONTENT_TYPES.get(photo.file.suffix.lower(), "image/jpeg"))
        side = int(box) if box else SIZE_CODES.get(size_code, 220)
        self._send(200, _resized(photo.file, side), "image/jpeg")

    def _burst(self, url: str) -> bool:
        """5xx fault: the first N requests of each item page / full-size photo fail."""
        n = self.state.faults.get("5xx")
        if n and self.state.hit(url) <= n:
            self.state.count("errors_5xx")
            self._send(503, b"<html><body>503 Service Unavailable</body></html>", "text/html")
            return True
        return False

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class DemoShop:
    """The shop server; ``with DemoShop(...) as shop: shop.url`` runs it in a background thread."""

    def __init__(self, products: list[ShopProduct], host: str = "127.0.0.1", port: int = 0,
                 faults: Faults | None = None, page_size: int = 60, source: str = ""):
        self.state = ShopState(products, faults or Faults(), page_size, source)
        handler = type("BoundShopHandler", (ShopHandler,), {"state": self.state})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ShoesearchError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> "DemoShop":
        self._thread = threading.Thread(target=self.serve_forever, name="demo-shop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "DemoShop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def synthetic_catalog(home: Path, n_products: int, noise_rate: float, seed: int = 0, image_size: int = 256) -> Path:
    """The generated catalogue for ``--synthetic N``, cached under the data home."""
    from crawlers.demo_shop.synthetic import generate_catalog

    if n_products < 1:
        raise ShoesearchError(f"--synthetic needs at least 1 product, got {n_products}")
    out = Path(home) / "shop" / f"synthetic-n{n_products}-noise{noise_rate:g}-seed{seed}-px{image_size}"
    return generate_catalog(out, n_products, noise_rate=noise_rate, seed=seed, image_size=image_size)


def build_shop(catalog: Path | None = None, synthetic: int | None = None, home: Path | None = None,
               noise_rate: float = 0.2, faults: str | list[str] | None = None, host: str = "127.0.0.1",
               port: int = 0, page_size: int = 60, seed: int = 0, image_size: int = 256) -> DemoShop:
    """A shop over ``catalog`` or over ``synthetic`` generated products (noise drawn in by the generator)."""
    if (catalog is None) == (synthetic is None):
        raise ShoesearchError("give exactly one of --catalog DIR or --synthetic N")
    parsed_faults = Faults.parse(faults)  # bad input fails before any generation
    if synthetic is not None:
        folder = synthetic_catalog(Path(home or "data"), synthetic, noise_rate, seed, image_size)
        products = load_catalog(folder)  # the generator already placed (and labelled) the noise
    else:
        folder = Path(catalog)
        products = load_catalog(folder, noise_rate=noise_rate, seed=seed)
    return DemoShop(products, host=host, port=port, faults=parsed_faults, page_size=page_size,
                    source=str(folder.resolve()))
