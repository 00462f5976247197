"""Item pipelines: the gallery's photos (downloaded, validated, stored by content hash) and the
warehouse commit (a product and all its photo rows in one transaction, ``commit_every`` products
at a time; a product is never half-visible)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from scrapy import Request
from scrapy.exceptions import DropItem, IgnoreRequest
from scrapy.pipelines.media import MediaPipeline

from core.errors import ShoesearchError
from core.files import atomic_write_text
from crawlers.config import crawl_settings_from
from crawlers.listings import ListingMemory
from crawlers.outcome import crawl_failure, source_stat
from photos.imagestore import ImageLimits, StoredImage, store_image


class PhotoFailed(Exception):
    """A photo that could not be downloaded: carries the ``images.status`` and the reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


def _failure_status(exc: BaseException) -> tuple[str, str]:
    name = type(exc).__name__
    if isinstance(exc, PhotoFailed):
        return exc.status, exc.reason
    if "Cancel" in name or "maxsize" in str(exc).lower():
        return "too_large", f"download cancelled: {exc or name}"
    if "Timeout" in name:
        return "timeout", f"{name}: {exc}"
    if isinstance(exc, IgnoreRequest):
        return "refused", f"request refused (robots.txt or off the site): {exc}"
    return "download_failed", f"{name}: {exc}"


class GalleryPipeline(MediaPipeline):
    """Downloads every gallery photo and turns each into an ``images`` row (ok or a refusal)."""

    LOG_FAILED_RESULTS = False

    def __init__(self, *, crawler):
        super().__init__(crawler=crawler)
        settings, crawl = crawl_settings_from(crawler.settings)
        self.images_dir = settings.images_dir
        self.limits = ImageLimits.from_settings(settings)
        self.stats = crawler.stats
        self.known: dict[str, dict] = {}  # full-size URL -> stored photo, from earlier crawls
        self.settings_obj = settings

    def open_spider(self, spider=None):
        super().open_spider()
        from warehouse import open_warehouse

        rows = open_warehouse(self.settings_obj).query(
            "SELECT url, sha1, path, width, height, bytes FROM images WHERE status = 'ok' AND starts_with(product_id, 'jd:')"
        ).to_pylist()
        # CDN paths are content-addressed on JD (jfs/...), so a known URL is a known photo.
        self.known = {r["url"]: r for r in rows if r["path"] and (self.images_dir / r["path"]).exists()}

    def get_media_requests(self, item, info):
        # A photo's own cap (crawl.max_image_bytes), not the page cap; no "large page" warning below it.
        meta = {"download_maxsize": self.limits.max_bytes, "download_warnsize": self.limits.max_bytes}
        return [Request(url, meta=dict(meta)) for url in item["gallery"]]

    def media_to_download(self, request, info, *, item=None):
        row = self.known.get(request.url)
        if row is None:
            return None
        self.stats.inc_value("shoesearch/images/reused")
        return StoredImage("ok", None, row["sha1"], row["path"], row["width"], row["height"], row["bytes"])

    def media_downloaded(self, response, request, info, *, item=None):
        if response.status == 404:
            raise PhotoFailed("missing", "HTTP 404 from the image CDN")
        if response.status != 200:
            raise PhotoFailed("http_error", f"HTTP {response.status} from the image CDN")
        return store_image(response.body, self.images_dir, self.limits)

    def media_failed(self, failure, request, info):
        failure.raiseException()

    def file_path(self, request, response=None, info=None, *, item=None):
        return ""  # photos are stored by content hash (photos.imagestore), not by URL

    def item_completed(self, results, item, info):
        spider = info.spider
        rows = []
        for position, (url, (ok, value)) in enumerate(zip(item["gallery"], results)):
            if ok:
                stored: StoredImage = value
                status, reason = stored.status, stored.reason
            else:
                stored = StoredImage("", None)
                status, reason = _failure_status(value.value)
                if getattr(spider, "stop_reason", None):
                    raise DropItem(f"crawl stopped ({spider.stop_reason}) before {item['sku']}'s photos finished")
            self.stats.inc_value(f"shoesearch/images/status/{status}")
            rows.append({
                "image_id": f"{item['product_id']}#{position}", "product_id": item["product_id"],
                "position": position, "url": url, "sha1": stored.sha1, "path": stored.path,
                "width": stored.width, "height": stored.height, "bytes": stored.bytes or None,
                "status": status, "reason": reason, "domain": "shop", "is_noise": None,
            })
        item["images"] = rows
        return item


class WarehousePipeline:
    """Buffers complete products and commits them with their photo rows, ``commit_every`` at a time."""

    def __init__(self, crawler):
        self.crawler = crawler
        settings, crawl = crawl_settings_from(crawler.settings)
        self.settings_obj = settings
        self.commit_every = max(1, crawl.commit_every)
        self.progress_every_s = crawl.progress_every_s
        self.run_id = crawler.settings.get("SHOESEARCH_RUN_ID")
        progress = crawler.settings.get("SHOESEARCH_PROGRESS_FILE")
        self.progress_path = Path(progress) if progress else None
        self.products: list[dict] = []
        self.images: list[dict] = []
        self.sources: list[str | None] = []  # per buffered product, the keyword/category that found it
        self.signatures: list[tuple] = []  # (sku, listing signature, crawled_at): recorded once committed
        self.memory = ListingMemory(settings.crawl_dir, crawl.site or None)
        self.written = {"products": 0, "images": 0}
        self._last_progress = 0.0
        self._own_run = None

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def open_spider(self, spider=None):
        from warehouse import open_warehouse, start_run

        self.wh = open_warehouse(self.settings_obj)
        if not self.run_id:  # a plain `scrapy crawl jd`: record the run here
            self._own_run = start_run(self.wh, step="crawl", params={"spider": "jd"}, flow="scrapy")
            self._run = self._own_run.__enter__()
            self.run_id = self._run.run_id

    def process_item(self, item, spider=None):
        self.products.append(item.product_row())
        self.images.extend(item["images"])
        self.sources.append(item.get("found_via"))
        self.signatures.append((item.get("sku"), item.get("listing_signature"), item.get("crawled_at")))
        if len(self.products) >= self.commit_every:
            self.flush()
        self._progress()
        return item

    def flush(self) -> None:
        if not self.products:
            return
        with self.wh.begin(self.run_id) as txn:
            txn.write("products", self.products)
            txn.write("images", self.images)
        stats = self.crawler.stats
        for column, n in txn.nulled.items():  # a price API's NaN / Infinity: stored as null (warehouse.conform)
            stats.inc_value(f"shoesearch/not_finite_nulled/{column}", n)
        stats.inc_value("shoesearch/products/written", len(self.products))
        stats.inc_value("shoesearch/images/written", len(self.images))
        for source in filter(None, self.sources):
            stats.inc_value(source_stat(source, "written"))
        self.written["products"] += len(self.products)
        self.written["images"] += len(self.images)
        # After the commit: a signature never stands for a product the warehouse does not hold (crawlers/listings.py).
        self.memory.record(self.signatures)
        self.products, self.images, self.sources, self.signatures = [], [], [], []

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.progress_path or (not force and now - self._last_progress < self.progress_every_s):
            return
        self._last_progress = now
        stats = self.crawler.stats
        payload = {"products_written": self.written["products"], "products_buffered": len(self.products),
                   "pages": stats.get_value("response_received_count", 0),
                   "unchanged": stats.get_value("shoesearch/products/unchanged", 0)}
        atomic_write_text(self.progress_path, json.dumps(payload))

    def close_spider(self, spider=None):
        self.flush()
        self._progress(force=True)
        if self._own_run is not None:
            self._run.rows.update(self.written)
            failure = crawl_failure(self.crawler.stats.get_stats())  # reached no site: the run failed
            error = ShoesearchError(failure) if failure else None
            self._own_run.__exit__(type(error) if error else None, error, None)
