"""Writes the crawl's stats to a JSON file when the spider closes (the crawl task reads it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from scrapy import signals

from warehouse.store import atomic_write_text


class CrawlStatsFile:
    """``SHOESEARCH_STATS_FILE``: items, photos, failures by reason, duration, why it finished."""

    def __init__(self, crawler, path: str | None):
        self.crawler = crawler
        self.path = Path(path) if path else None
        self.started = time.monotonic()

    @classmethod
    def from_crawler(cls, crawler):
        ext = cls(crawler, crawler.settings.get("SHOESEARCH_STATS_FILE"))
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_opened(self, spider):
        self.started = time.monotonic()

    def spider_closed(self, spider, reason):
        if self.path is None:
            return
        raw = self.crawler.stats.get_stats()
        stats = {k: v for k, v in raw.items() if isinstance(v, (int, float, str, bool)) or v is None}
        summary = {
            "finish_reason": reason,
            "stop_message": getattr(spider, "stop_message", None),
            "duration_s": round(time.monotonic() - self.started, 3),
            "pages": sum(v for k, v in raw.items() if k.startswith("shoesearch/pages/")),
            "responses": raw.get("response_received_count", 0),
            "products_written": raw.get("shoesearch/products/written", 0),
            "products_unchanged": raw.get("shoesearch/products/unchanged", 0),
            "products_resumed": raw.get("shoesearch/products/already_done", 0),
            "images_written": raw.get("shoesearch/images/written", 0),
            "images_by_status": {k.rsplit("/", 1)[1]: v for k, v in raw.items()
                                 if k.startswith("shoesearch/images/status/")},
            "parse_failures": {k.rsplit("/", 1)[1]: v for k, v in raw.items()
                               if k.startswith("shoesearch/parse_failed/")},
            "retries": raw.get("retry/count", 0),
            "stats": stats,
        }
        atomic_write_text(self.path, json.dumps(summary, indent=1, sort_keys=True, default=str, ensure_ascii=False))
