"""Scrapy settings of the ``crawlers`` project (``scrapy crawl jd`` from the repository root).

Tunables come from the shoesearch settings (``core/settings.py``, section ``crawl``): see
``crawlers/config.py``. Only Scrapy wiring lives here.
"""

from core.settings import Settings
from crawlers.config import scrapy_settings

BOT_NAME = "shoesearch"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"
COMMANDS_MODULE = "crawlers.commands"  # `scrapy crawl` exits non-zero when it reached no site

# USER_AGENT, ROBOTSTXT_OBEY, AUTOTHROTTLE_*, DOWNLOAD_DELAY, RETRY_*, ... (polite by default).
globals().update(scrapy_settings(Settings.load()))

DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.offsite.OffsiteMiddleware": None,
    "crawlers.middlewares.SiteOnlyMiddleware": 50,  # nothing off the site (its slot: before robots.txt)
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "crawlers.middlewares.Rfc9309RobotsTxtMiddleware": 100,  # robots.txt 5xx/unreachable = disallow all
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "crawlers.middlewares.BackoffRetryMiddleware": 550,  # Scrapy's retry slot, with backoff
}
ITEM_PIPELINES = {
    "crawlers.pipelines.GalleryPipeline": 100,  # download, validate, store photos by content hash
    "crawlers.pipelines.WarehousePipeline": 900,  # product + its photos in one commit
}
EXTENSIONS = {
    "scrapy.extensions.telnet.TelnetConsole": None,
    "crawlers.extensions.CrawlStatsFile": 500,
    "crawlers.extensions.StopWithParent": 0,  # SHOESEARCH_PARENT_PID (the crawl task): stop when it dies
}
LOG_LEVEL = "INFO"
FEED_EXPORT_ENCODING = "utf-8"
TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
REMOTE_CONTROL_ENABLED = False  # no control port: the task reads the stats file instead
