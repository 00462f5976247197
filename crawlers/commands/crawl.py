"""``scrapy crawl``, exiting non-zero when the crawl reached no site.

Scrapy's own ``crawl`` command exits 1 only when the spider could not start
(``crawler_process.bootstrap_failed``): a crawl whose every request failed (dead port, unknown host,
no network) is a "finished" crawl and exits 0. The project therefore replaces the command:
``COMMANDS_MODULE = "crawlers.commands"`` (``crawlers/settings.py``) makes ``scrapy crawl`` this
class (``scrapy.cmdline`` lets a project's commands override the built-in ones), which runs the crawl
exactly as Scrapy does and then reads the ``shoesearch/failure`` stat. The stats-file extension
(``crawlers/extensions.py``) sets that stat on ``spider_closed`` when no listing page was parsed,
with the cause in one line (``crawlers/outcome.py``). ``scrapy.cmdline.execute`` ends with
``sys.exit(cmd.exitcode)``, so setting ``exitcode`` here is the whole mechanism; the line is also
printed to stderr last. ``shoesearch crawl`` (tasks/crawl.py) runs this same command in a subprocess
and reports the line from the stats file.
"""

from __future__ import annotations

import sys

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from crawlers.outcome import FAILURE_STAT

NO_SITE_EXIT = 1  # like Scrapy's own failure exit (2 is its usage-error exit)


class Command(ScrapyCrawlCommand):
    def run(self, args: list[str], opts) -> None:
        if len(args) != 1:
            raise UsageError("give exactly one spider name, e.g. scrapy crawl jd")
        assert self.crawler_process
        crawler = self.crawler_process.create_crawler(args[0])
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        if self.crawler_process.bootstrap_failed:
            self.exitcode = 1
            return
        failure = crawler.stats.get_value(FAILURE_STAT) if crawler.stats else None
        if failure:
            print(f"scrapy crawl {args[0]}: {failure}", file=sys.stderr)
            self.exitcode = NO_SITE_EXIT
