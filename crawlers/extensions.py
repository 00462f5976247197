"""Writes the crawl's stats to a JSON file when the spider closes (the crawl task reads it), and says
in the log how the crawl went per keyword/category and why it ended (:mod:`crawlers.outcome`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from scrapy import signals

from core.files import atomic_write_text
from crawlers.outcome import FAILURE_STAT, shortfall_reason, sources_table, summarize

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
        return summarize(raw, reason, {
            "stop_message": getattr(spider, "stop_message", None),
            "duration_s": round(time.monotonic() - self.started, 3),
            "keywords": getattr(spider, "keywords", []), "categories": getattr(spider, "categories", []),
            "max_products": getattr(spider, "max_products", None), "max_pages": getattr(spider, "max_pages", None),
        })


class StopWithParent:
    """``SHOESEARCH_PARENT_PID``: the spider stops cleanly (SIGTERM: Scrapy's graceful shutdown, JOBDIR kept) when
    the process that started it dies, however it dies (Linux ``PR_SET_PDEATHSIG``). A crawl task killed with
    SIGKILL, or a Ray worker cancelled by force, leaves no shard writing on its own (a rerun would resume it
    while it still ran)."""

    @classmethod
    def from_crawler(cls, crawler):
        from scrapy.exceptions import NotConfigured

        parent = crawler.settings.get("SHOESEARCH_PARENT_PID")
        if not parent or not sys.platform.startswith("linux"):
            raise NotConfigured
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != int(parent):  # it died before the line above: nobody waits for this crawl
            raise RuntimeError(f"the crawl task (pid {parent}) that started this spider is gone")
        return cls()
