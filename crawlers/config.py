"""Scrapy settings derived from the one shoesearch settings object (``settings.crawl``).

``crawlers/settings.py`` uses these as defaults (so a plain ``scrapy crawl jd`` obeys
``shoesearch.toml`` and ``SHOESEARCH_*`` variables) and ``tasks/crawl.py`` passes them with
``-s`` (so ``--set crawl.x=...`` overrides reach the subprocess).
"""

from __future__ import annotations

import dataclasses
import json

from core.settings import CrawlSettings, Settings


def scrapy_settings(settings: Settings) -> dict:
    """Scrapy setting name -> value for ``settings`` (polite defaults for the real site)."""
    c = settings.crawl
    return {
        "SHOESEARCH_HOME": str(settings.home),
        "SHOESEARCH_CRAWL": json.dumps(dataclasses.asdict(c), ensure_ascii=False),
        "USER_AGENT": c.user_agent,
        "ROBOTSTXT_OBEY": c.obey_robots,
        "CONCURRENT_REQUESTS": c.concurrent_requests,
        "CONCURRENT_REQUESTS_PER_DOMAIN": c.concurrent_requests,
        "DOWNLOAD_DELAY": c.download_delay_s,
        "AUTOTHROTTLE_ENABLED": True,
        "AUTOTHROTTLE_START_DELAY": c.download_delay_s,
        "AUTOTHROTTLE_MAX_DELAY": c.autothrottle_max_delay_s,
        "AUTOTHROTTLE_TARGET_CONCURRENCY": c.autothrottle_target_concurrency,
        "RETRY_TIMES": c.retry_times,
        "RETRY_BACKOFF_S": c.retry_backoff_s,
        "DOWNLOAD_TIMEOUT": c.download_timeout_s,
        "DOWNLOAD_MAXSIZE": c.max_page_bytes,  # photos: crawl.max_image_bytes per request (crawlers/pipelines.py)
        "DOWNLOAD_WARNSIZE": c.max_page_bytes // 4,  # a page this large is already unusual: logged
        "ROBOTSTXT_MAX_BYTES": c.max_robots_bytes,  # read by crawlers/middlewares.py
    }


def crawl_settings_from(scrapy_settings_obj) -> tuple[Settings, CrawlSettings]:
    """The shoesearch settings a crawl process runs with (home + crawl section from ``-s``)."""
    settings = Settings.load(scrapy_settings_obj.get("SHOESEARCH_HOME") or None)
    raw = scrapy_settings_obj.get("SHOESEARCH_CRAWL")
    if raw:
        values = json.loads(raw) if isinstance(raw, str) else dict(raw)
        for key, value in values.items():
            settings.set(f"crawl.{key}", value)
    return settings, settings.crawl
