"""Fault modes of the demo shop (``--faults NAME[=N],...``): deterministic misbehaviour for the crawler's tests.

Besides walls, errors and bad photos, the *escape* faults try to lead the crawler off the site
(item 3 of the hostile review): a listing that links a local file or another host, an item page that
redirects to another host or names another product's SKU, a gallery photo on another host. "Another
host" is :class:`OffsiteHost`, a second loopback listener that serves marked copies and counts every
request it gets: a correct crawler sends it none. ``/_shop/manifest.json`` says per product which
escape fault it carries and what a correct crawler makes of it (``expected``).

The *size* faults (item 7 of the second review) send what a crawler must not take whole: an item page
of 8 MB without Content-Length, 5,000 photos in one pageConfig, a 6 MiB robots.txt whose last rule
(after 500 KiB) disallows everything, a 16 MB photo.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from core.errors import ShoesearchError
from demo_shop.catalog import ShopProduct
from demo_shop.render import item_page

IMAGE_FAULTS = {"corrupt": "corrupt", "not_image": "not_image", "bomb": "bomb", "missing": "missing",
                "huge_photo": "too_large"}
# Escape fault -> what a correct crawler does with the product (every N-th product, each fault its own).
ESCAPE_FAULTS = {
    "file_link": "written",  # listing links a file:// decoy page: refused, the canonical item URL is used
    "offsite_link": "written",  # listing links the page on another host: refused, canonical URL used
    "offsite_redirect": "refused",  # item page redirects (302) to another host: the redirect is dropped
    "sku_swap": "parse_failed",  # item page names the next product's SKU: never stored under that id
    "offsite_image": "written",  # one more gallery photo on another host: left out of the gallery
}
# Size fault -> what a correct crawler does with the product it hits (every N-th product, each fault its own):
# sizes and lengths a crawler must not trust (item 7 of the second hostile review).
SIZE_FAULTS = {
    "huge_page": "refused",  # item page of HUGE_PAGE_BYTES without Content-Length: over the page cap, dropped
    "photo_flood": "written",  # FLOOD_PHOTOS more imageList entries: written with crawl.max_photos_per_product photos
    "huge_robots": "refused",  # robots.txt disallows its item page in its first lines (see robots_txt)
}
HUGE_PAGE_BYTES = 8_000_000  # 3 MB over the crawler's page cap (crawl.max_page_bytes, 5 MB)
HUGE_PHOTO_BYTES = 16_000_000  # over crawl.max_image_bytes (15 MB), announced in Content-Length
HUGE_ROBOTS_BYTES = 6 * 2**20  # past RFC 9309's 500 KiB parsing limit, and past the page cap
FLOOD_PHOTOS = 5_000
FLOOD_PATH = re.compile(r"^jfs/t1/flood/(\d+)/\d+\.jpg$")
ROBOTS_FAULTS = {"robots5xx": (500, 599), "robots4xx": (400, 499)}  # robots.txt answers this status
FAULT_DEFAULTS = {"captcha": 5, "login": 2, "5xx": 2, "slow": 0.05, "corrupt": 3, "not_image": 3, "bomb": 3,
                  "missing": 3, "layout": 2, **{k: 5 for k in ESCAPE_FAULTS}, "robots5xx": 503, "robots4xx": 404,
                  "huge_photo": 3, **{k: 5 for k in SIZE_FAULTS}, "bad_price": 3}
# What the bad_price fault's price API answers for every N-th product, in turn (JSON numbers JD never sends).
BAD_PRICES = ("NaN", "Infinity", "1e999")
FAULT_HELP = {
    "captcha": "price API answers {\"error\":\"pdos_captcha\"} from its N-th request on",
    "bad_price": "the price API answers NaN, Infinity or 1e999 (in turn) for every N-th product",
    "login": "search/list pages redirect to the login page from the N-th on",
    "5xx": "item pages and photos answer 503 N times before they succeed",
    "slow": "every response is delayed S seconds",
    "corrupt": "one photo of every N-th product is a truncated JPEG",
    "not_image": "one photo of every N-th product is an HTML page",
    "bomb": "one photo of every N-th product is a decompression bomb",
    "missing": "one photo of every N-th product answers 404",
    "layout": "every N-th item page has no pageConfig (the DOM fallback must work)",
    "file_link": "every N-th product is linked as a file:// page (a decoy claiming SKU 7007)",
    "offsite_link": "every N-th product is linked on another host",
    "offsite_redirect": "every N-th item page redirects (302) to another host",
    "sku_swap": "every N-th item page names the next product's SKU",
    "offsite_image": "every N-th gallery has one more photo on another host",
    "robots5xx": "robots.txt answers this 5xx status (default 503)",
    "robots4xx": "robots.txt answers this 4xx status (default 404)",
    "huge_photo": f"one photo of every N-th product is {HUGE_PHOTO_BYTES} bytes (announced in Content-Length)",
    "huge_page": f"every N-th item page is {HUGE_PAGE_BYTES} bytes, sent without Content-Length",
    "photo_flood": f"every N-th item page lists {FLOOD_PHOTOS} more photos in pageConfig's imageList",
    "huge_robots": f"robots.txt is {HUGE_ROBOTS_BYTES} bytes: its first lines disallow every N-th item page, "
                   "a 'Disallow: /' follows after 500 KiB",
}
DECOY_SKU = "7007"
OFFSITE_MARK = "[offsite] "  # title prefix of the copies another host serves


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
            low, high = ROBOTS_FAULTS.get(name, (value, value))
            if not low <= value <= high:
                raise ShoesearchError(f"fault {name}: an HTTP status in {low}..{high}, got {raw}")
            values[name] = value
        return cls(values)

    def get(self, name: str) -> float | None:
        return self.values.get(name)

    def robots_status(self) -> int:
        return int(self.get("robots5xx") or self.get("robots4xx") or 200)

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
        self._assign_escapes(products)
        self._assign_sizes(products)

    def _assign_escapes(self, products: list[ShopProduct]) -> None:
        """Escape fault k hits products whose index is k+1 modulo N (product 0 stays clean)."""
        for product in products:
            product.escape = product.page_sku = None
        for k, kind in enumerate(ESCAPE_FAULTS):
            every = int(self.get(kind) or 0)
            for product in products if every else []:
                if product.escape is None and product.index % every == (k + 1) % every:
                    product.escape = kind
                    if kind == "sku_swap" and len(products) > 1:
                        product.page_sku = products[(product.index + 1) % len(products)].sku

    def _assign_sizes(self, products: list[ShopProduct]) -> None:
        """Size fault k hits products whose index is k modulo N (one fault per product)."""
        for product in products:
            product.size_fault = None
        for k, kind in enumerate(SIZE_FAULTS):
            every = int(self.get(kind) or 0)
            for product in products if every else []:
                if product.size_fault is None and product.index % every == k % every:
                    product.size_fault = kind


class Sizes:
    """What the size faults change: a huge item page, a flooded gallery, a huge robots.txt, a huge photo."""

    def __init__(self, products: list[ShopProduct], count):
        self.by_sku = {p.sku: p for p in products}
        self.faulty = {p.sku: p.size_fault for p in products if p.size_fault}
        self.count = count

    def robots_txt(self, rules: str) -> tuple[bytes, int, bytes] | None:
        """``(head, total, tail)`` of a huge robots.txt: rules disallowing the hit item pages, comment lines,
        then (at its end, far past 500 KiB) a rule that would disallow everything; None without the fault."""
        hit = [sku for sku, kind in self.faulty.items() if kind == "huge_robots"]
        if not hit:
            return None
        head = (rules + "".join(f"Disallow: /{sku}.html\n" for sku in hit)).encode()
        return head, HUGE_ROBOTS_BYTES, b"\nDisallow: /\n"

    def huge_page(self, p: ShopProduct) -> bool:
        return p.size_fault == "huge_page"

    def flood(self, p: ShopProduct) -> list[str]:
        """The extra ``imageList`` entries of a flooded gallery (bare CDN paths, as JD lists them)."""
        return [f"jfs/t1/flood/{p.sku}/{i}.jpg" for i in range(FLOOD_PHOTOS)] if p.size_fault == "photo_flood" else []

    def flood_photo(self, jfs: str) -> Path | None:
        """The file a flood entry serves (the product's front view), counted; None for other paths."""
        m = FLOOD_PATH.match(jfs)
        product = self.by_sku.get(m.group(1)) if m else None
        if product is None or product.size_fault != "photo_flood":
            return None
        self.count("flood_images")
        return product.gallery[0].file


def send_padded(handler: BaseHTTPRequestHandler, content_type: str, head: bytes, total: int,
                declare_length: bool, filler: bytes = b" ", tail: bytes = b"") -> None:
    """A ``total``-byte answer: ``head``, ``filler`` repeated, ``tail``; written in 64 KiB chunks, never held
    whole. Without ``declare_length`` no Content-Length is sent and the connection closes after it."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    if declare_length:
        handler.send_header("Content-Length", str(total))
    else:
        handler.send_header("Connection", "close")
        handler.close_connection = True
    handler.end_headers()
    handler.wfile.write(head)
    chunk = filler * (65536 // len(filler))
    left = total - len(head) - len(tail)
    while left > 0:
        handler.wfile.write(chunk[:left])
        left -= len(chunk[:left])
    handler.wfile.write(tail)


@lru_cache(maxsize=1)
def _offsite_photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


class OffsiteHost:
    """Another host on another loopback port: marked copies of item pages and a photo, every request counted."""

    def __init__(self, products: list[ShopProduct], host: str, count):
        by_sku = {p.sku: p for p in products}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - quiet
                return

            def do_GET(self):  # noqa: N802 - http.server API
                count("offsite_requests")
                m = re.match(r"^/(\d+)\.html$", self.path)
                if m and m.group(1) in by_sku:
                    body = item_page(by_sku[m.group(1)], title_prefix=OFFSITE_MARK).encode("gbk", "xmlcharrefreplace")
                    return self._send(200, body, "text/html; charset=gbk")
                if "/jfs/" in self.path:
                    return self._send(200, _offsite_photo(), "image/jpeg")
                return self._send(404, b"not here", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="demo-shop-offsite", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Escapes:
    """What the escape faults change in the shop's pages: item links, redirects, extra photos."""

    def __init__(self, products: list[ShopProduct], host: str, count):
        kinds = {p.escape for p in products}
        self.offsite = OffsiteHost(products, host, count) if kinds & {"offsite_link", "offsite_redirect",
                                                                         "offsite_image"} else None
        self.decoy_dir = Path(tempfile.mkdtemp(prefix="demo-shop-decoys-")) if "file_link" in kinds else None
        for p in products:
            if p.escape == "file_link":  # a local file the crawler must never read: a page claiming DECOY_SKU
                page = item_page(p, sku=DECOY_SKU, title_prefix="[local file] ")
                self._decoy(p).write_bytes(page.encode("gbk", "xmlcharrefreplace"))

    def _decoy(self, p: ShopProduct) -> Path:
        return self.decoy_dir / f"decoy-{p.sku}.html"

    def listing_href(self, p: ShopProduct) -> str:
        if p.escape == "file_link":
            return self._decoy(p).as_uri()
        if p.escape == "offsite_link":
            return f"{self.offsite.url}/{p.sku}.html"
        return f"//item.jd.com/{p.sku}.html"

    def redirect(self, p: ShopProduct) -> str | None:
        return f"{self.offsite.url}/{p.sku}.html" if p.escape == "offsite_redirect" else None

    def extra_images(self, p: ShopProduct) -> list[str]:
        return [f"{self.offsite.url}/n1/jfs/t1/offsite/{p.sku}.jpg"] if p.escape == "offsite_image" else []

    def manifest(self) -> dict:
        return {"offsite_url": self.offsite.url if self.offsite else None, "decoy_sku": DECOY_SKU}

    def close(self) -> None:
        if self.offsite is not None:
            self.offsite.stop()
        if self.decoy_dir is not None:
            shutil.rmtree(self.decoy_dir, ignore_errors=True)
