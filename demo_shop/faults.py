"""Fault modes of the demo shop (``--faults NAME[=N],...``): deterministic misbehaviour for the crawler's tests.

Besides walls, errors and bad photos, the *escape* faults try to lead the crawler off the site
(item 3 of the hostile review): a listing that links a local file or another host, an item page that
redirects to another host or names another product's SKU, a gallery photo on another host. "Another
host" is :class:`OffsiteHost`, a second loopback listener that serves marked copies and counts every
request it gets: a correct crawler sends it none. ``/_shop/manifest.json`` says per product which
escape fault it carries and what a correct crawler makes of it (``expected``).
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

IMAGE_FAULTS = {"corrupt": "corrupt", "not_image": "not_image", "bomb": "bomb", "missing": "missing"}
# Escape fault -> what a correct crawler does with the product (every N-th product, each fault its own).
ESCAPE_FAULTS = {
    "file_link": "written",  # listing links a file:// decoy page: refused, the canonical item URL is used
    "offsite_link": "written",  # listing links the page on another host: refused, canonical URL used
    "offsite_redirect": "refused",  # item page redirects (302) to another host: the redirect is dropped
    "sku_swap": "parse_failed",  # item page names the next product's SKU: never stored under that id
    "offsite_image": "written",  # one more gallery photo on another host: left out of the gallery
}
ROBOTS_FAULTS = {"robots5xx": (500, 599), "robots4xx": (400, 499)}  # robots.txt answers this status
FAULT_DEFAULTS = {"captcha": 5, "login": 2, "5xx": 2, "slow": 0.05, "corrupt": 3, "not_image": 3, "bomb": 3,
                  "missing": 3, "layout": 2, **{k: 5 for k in ESCAPE_FAULTS}, "robots5xx": 503, "robots4xx": 404}
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
    "file_link": "every N-th product is linked as a file:// page (a decoy claiming SKU 7007)",
    "offsite_link": "every N-th product is linked on another host",
    "offsite_redirect": "every N-th item page redirects (302) to another host",
    "sku_swap": "every N-th item page names the next product's SKU",
    "offsite_image": "every N-th gallery has one more photo on another host",
    "robots5xx": "robots.txt answers this 5xx status (default 503)",
    "robots4xx": "robots.txt answers this 4xx status (default 404)",
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
