"""The demo shop: a loopback HTTP server that serves a catalog folder with JD's page structure.

It renders what ``crawlers/jdsite.py`` expects from the real site: search pages whose second
half is lazy-loaded from ``s_new.php`` (only with Referer + XHR headers), category list pages
with ``a.pn-next`` pagination, GBK item pages with an inline ``pageConfig`` and the DOM gallery,
CDN image paths with size codes (``n1/`` original bytes, ``n5/`` ``n7/`` ``s450x450_`` resized),
the price API and robots.txt. All JD hosts live on this one server (``crawl --site URL``).
The catalog is read by ``catalog.py``, pages are rendered by ``render.py``.

Fault modes (``--faults captcha=5,login=2,5xx=2,slow=0.05,corrupt=3,not_image=3,bomb=3,missing=3,layout=2``,
the escape faults ``file_link``, ``offsite_link``, ``offsite_redirect``, ``sku_swap``, ``offsite_image``,
``robots5xx``/``robots4xx`` and the size faults ``huge_page``, ``photo_flood``, ``huge_robots``, ``huge_photo``;
see ``faults.py``) make it misbehave deterministically; ``/_shop/manifest.json``
holds the ground truth: every product, its ordered gallery (which photos are injected noise), which
photo got which fault, and what a correct crawler makes of each escape fault.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from core.errors import ShoesearchError
from crawlers import jdsite
from demo_shop.catalog import Photo, ShopProduct, jfs_for, load_catalog, synth_metadata  # noqa: F401
from demo_shop.faults import ESCAPE_FAULTS, FAULT_DEFAULTS, FAULT_HELP, IMAGE_FAULTS, Escapes, Faults  # noqa: F401
from demo_shop.faults import BAD_PRICES, HUGE_PAGE_BYTES, HUGE_PHOTO_BYTES, SIZE_FAULTS, Sizes, send_padded
from demo_shop.render import bomb_png, esc, item_page, listing_items, resized, template

CURR = ' class="curr"'
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".bmp": "image/bmp", ".gif": "image/gif"}
SIZE_CODES = {"n5": 54, "n7": 220, "n2": 160, "n3": 130, "n4": 100}  # JD CDN thumbnail sizes (px)
ROBOTS_TXT = "User-agent: *\nDisallow: /?*\nDisallow: /pop/*.html\nDisallow: /pinpai/*.html?*\n"


class ShopState:
    """The catalog, the faults, and request counters shared by the handler threads."""

    def __init__(self, products: list[ShopProduct], faults: Faults, page_size: int, source: str,
                 host: str = "127.0.0.1"):
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
        self.escapes = Escapes(products, host, self.count)
        self.sizes = Sizes(products, self.count)

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
                             "layout_fault": p.layout_fault, "escape": p.escape, "claims_sku": p.page_sku,
                             "size_fault": p.size_fault, "gallery": gallery,
                             "expected": SIZE_FAULTS.get(p.size_fault) or ESCAPE_FAULTS.get(p.escape, "written")})
        return {"source": self.source, "page_size": self.page_size, "faults": self.faults.values,
                "products": products, **self.escapes.manifest()}


def _search_hit(term: str, meta: dict) -> bool:
    title, category = str(meta.get("title") or "").lower(), str(meta.get("category") or "").lower()
    if term in f"{title} {str(meta.get('brand') or '').lower()} {category}":
        return True
    stem = term[:-1] if len(term) > 1 and term.endswith("子") else ""
    return bool(stem) and (stem in title or stem in category.rsplit("/", 1)[-1])


@lru_cache(maxsize=100_000)
def _file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()



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
                return self._robots()
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
    def _robots(self):
        status = self.state.faults.robots_status()
        if status != 200:
            self.state.count("robots_errors")
            return self._send(status, f"<html><body>{status}</body></html>".encode(), "text/html")
        huge = self.state.sizes.robots_txt(ROBOTS_TXT)
        if huge:
            head, total, tail = huge
            return send_padded(self, "text/plain", head, total, True, b"# " + b"-" * 61 + b"\n", tail)
        return self._send(200, ROBOTS_TXT.encode(), "text/plain")

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
        body = template("search.html").substitute(
            keyword=esc(keyword), keyword_js=esc(json.dumps(keyword)[1:-1]), page=logical, total_pages=total,
            raw_page=raw_page, items=listing_items(items, eager=True, href=st.escapes.listing_href))
        st.count("search_pages")
        self._send(200, body.encode("utf-8"), "text/html; charset=utf-8")

    def _lazy(self, q):
        st = self.state
        st.count("lazy_pages")
        if self.headers.get("X-Requested-With") != "XMLHttpRequest" or "/Search" not in (self.headers.get("Referer") or ""):
            return self._send(200, b"", "text/html; charset=utf-8")  # JD answers an empty body
        logical = max(1, _int(q.get("page"), 2) // 2)
        items = self._page_slice(st.search(q.get("keyword", "")), logical, True)
        self._send(200, listing_items(items, eager=False, href=st.escapes.listing_href).encode("utf-8"), "text/html; charset=utf-8")

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
        rows = listing_items(items, eager=True, href=st.escapes.listing_href)
        body = template("list.html").substitute(category_name=esc(names), items=rows, pager=pager)
        st.count("list_pages")
        self._send(200, body.encode("utf-8"), "text/html; charset=utf-8")

    def _item(self, sku):
        st = self.state
        product = st.by_sku.get(sku)
        if product is None:
            return self._send(404, b"<html><body>404</body></html>", "text/html")
        target = st.escapes.redirect(product)
        if target:
            return self._send(302, b"", "text/html", {"Location": target})
        if self._burst(self.path):
            return
        st.count("item_pages")
        extra = st.escapes.extra_images(product) + st.sizes.flood(product)
        page = item_page(product, sku=product.page_sku, extra_images=extra)
        body = page.encode("gbk", errors="xmlcharrefreplace")
        if st.sizes.huge_page(product):  # no Content-Length: only counting what arrives finds it too big
            return send_padded(self, "text/html; charset=gbk", body, HUGE_PAGE_BYTES, False)
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
            item = {"id": f"J_{sku}", "p": f"{price:.2f}", "m": f"{list_price:.2f}", "op": f"{price:.2f}"}
            bad = st.faults.get("bad_price")
            if p and bad and p.index % int(bad) == 0:  # a number no shop should send: stored as null, counted
                item.update(p=BAD_PRICES[p.index // int(bad) % 3], m=BAD_PRICES[(p.index // int(bad) + 1) % 3])
            out.append(item)
        self._send(200, json.dumps(out).encode(), "application/json;charset=utf-8")

    def _image(self, size_code, box, jfs):
        st = self.state
        photo = st.by_jfs.get(jfs)
        flood = st.sizes.flood_photo(jfs) if photo is None else None
        if flood is not None:
            return self._send(200, flood.read_bytes(), "image/jpeg")
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
            return self._send(200, bomb_png(), "image/png")
        if full and photo.fault == "huge_photo":
            return send_padded(self, "image/jpeg", photo.file.read_bytes(), HUGE_PHOTO_BYTES, True, b"\0")
        if full:
            return self._send(200, photo.file.read_bytes(), CONTENT_TYPES.get(photo.file.suffix.lower(), "image/jpeg"))
        side = int(box) if box else SIZE_CODES.get(size_code, 220)
        self._send(200, resized(photo.file, side), "image/jpeg")

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
        self.state = ShopState(products, faults or Faults(), page_size, source, host)
        handler = type("BoundShopHandler", (ShopHandler,), {"state": self.state})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            self.state.escapes.close()
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
        self.close()
        if self._thread:
            self._thread.join(timeout=5)

    def close(self) -> None:
        """Release the port (and the escape faults' other host and decoy files)."""
        self.httpd.server_close()
        self.state.escapes.close()

    def __enter__(self) -> "DemoShop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def synthetic_catalog(home: Path, n_products: int, noise_rate: float, seed: int = 0, image_size: int = 256) -> Path:
    """The generated catalog for ``--synthetic N``, cached under the data home."""
    from demo_shop.synthetic import generate_catalog

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
