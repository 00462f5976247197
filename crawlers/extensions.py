"""Writes the crawl's stats to a JSON file when the spider closes (the crawl task reads it), and says
in the log how the crawl went per keyword/category and why it ended (:mod:`crawlers.outcome`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from scrapy import signals

from core.files import atomic_write_text
from crawlers.outcome import (CAPPED_PREFIX, FAILURE_STAT, OFFSITE_PREFIX, crawl_failure, shortfall_reason, source_rows,
                              sources_table)

logger = logging.getLogger(__name__)


class CrawlStatsFile:
    """``SHOESEARCH_STATS_FILE``: items, photos, failures by reason, duration, why it finished, counts
    per keyword/category (``sources``) and, when no listing page was parsed, ``failure`` (one line)."""

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
        raw = self.crawler.stats.get_stats()
        summary = self.summary(spider, reason, raw)
        if summary["failure"]:
            # Read by `scrapy crawl` (crawlers/commands/crawl.py) to exit non-zero.
            self.crawler.stats.set_value(FAILURE_STAT, summary["failure"])
            logger.error(summary["failure"])
        else:
            logger.info("crawl by keyword/category:\n%s\n%s", sources_table(summary), shortfall_reason(summary))
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(summary, indent=1, sort_keys=True, default=str,
                                                    ensure_ascii=False))

    def summary(self, spider, reason: str, raw: dict) -> dict:
        stats = {k: v for k, v in raw.items() if isinstance(v, (int, float, str, bool)) or v is None}
        keywords, categories = list(getattr(spider, "keywords", [])), list(getattr(spider, "categories", []))
        return {
            "finish_reason": reason,
            "stop_message": getattr(spider, "stop_message", None),
            "failure": crawl_failure(raw),  # set when no listing page was parsed: the crawl reached nothing
            "duration_s": round(time.monotonic() - self.started, 3),
            "pages": sum(v for k, v in raw.items() if k.startswith("shoesearch/pages/")),
            "responses": raw.get("response_received_count", 0),
            "keywords": keywords,
            "categories": categories,
            "max_products": getattr(spider, "max_products", None),
            "max_pages": getattr(spider, "max_pages", None),
            "sources": source_rows(raw, keywords, categories),
            "products_listed": raw.get("shoesearch/products/listed", 0),
            "products_written": raw.get("shoesearch/products/written", 0),
            "products_unchanged": raw.get("shoesearch/products/unchanged", 0),
            "products_resumed": raw.get("shoesearch/products/already_done", 0),
            "images_written": raw.get("shoesearch/images/written", 0),
            "images_by_status": {k.rsplit("/", 1)[1]: v for k, v in raw.items()
                                 if k.startswith("shoesearch/images/status/")},
            "parse_failures": {k.rsplit("/", 1)[1]: v for k, v in raw.items()
                               if k.startswith("shoesearch/parse_failed/")},
            "offsite_refused": {k[len(OFFSITE_PREFIX):]: v for k, v in raw.items() if k.startswith(OFFSITE_PREFIX)},
            "capped": {k[len(CAPPED_PREFIX):]: v for k, v in raw.items() if k.startswith(CAPPED_PREFIX)},
            "requests_failed": {group: {k.split("/", 3)[3]: v for k, v in raw.items()
                                        if k.startswith(f"shoesearch/request_failed/{group}/")}
                                for group in ("unreachable", "refused")},
            "retries": raw.get("retry/count", 0),
            "stats": stats,
        }
