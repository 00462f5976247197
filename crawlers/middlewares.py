"""Downloader middlewares: what may be fetched at all, robots.txt per RFC 9309, retries with backoff.

- :class:`SiteOnlyMiddleware` (in the slot of Scrapy's ``OffsiteMiddleware``) refuses every download
  that is not an http(s) URL on JD's hosts (or, with ``--site``, on that one ``host:port``): redirect
  targets, photos, anything. The rule is ``SiteMap.refusal`` (``crawlers/jdsite.py``).
- :class:`Rfc9309RobotsTxtMiddleware` (in the slot of Scrapy's ``RobotsTxtMiddleware``): a robots.txt
  answering 5xx (after retries) or not answering at all means "disallow everything" (RFC 9309 2.3.1.4):
  the host's requests are refused and the crawl stops cleanly; 4xx means no rules (2.3.1.3). Only the
  first ``ROBOTSTXT_MAX_BYTES`` (``crawl.max_robots_bytes``, 500 KiB) are read and parsed (2.5).
"""

from __future__ import annotations

import asyncio

from scrapy import signals
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware
from scrapy.exceptions import IgnoreRequest, StopDownload
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.defer import Deferred

from crawlers.outcome import CAPPED_PREFIX, OFFSITE_PREFIX, classify_failure

BACKOFF_META = "shoesearch_backoff_s"
ROBOTS_READ_META = "shoesearch_robots_bytes"  # bytes of robots.txt received so far


class BackoffRetryMiddleware(RetryMiddleware):
    """Scrapy's retry policy (5xx, 429, timeouts), waiting ``RETRY_BACKOFF_S * 2**(n-1)`` before retry n."""

    def __init__(self, settings):
        super().__init__(settings)
        self.backoff_s = settings.getfloat("RETRY_BACKOFF_S", 0.0)

    async def process_request(self, request, spider=None):
        delay = request.meta.pop(BACKOFF_META, 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        return None

    def _retry(self, request, reason):
        retry = super()._retry(request, reason)
        if retry is not None and self.backoff_s > 0:
            attempt = retry.meta.get("retry_times", 1)
            retry.meta[BACKOFF_META] = self.backoff_s * 2 ** (attempt - 1)
        return retry


class RefusedRequest(IgnoreRequest):
    """A request refused before it was sent; ``group``/``cause`` say why (``crawlers.outcome``)."""

    def __init__(self, group: str, cause: str):
        super().__init__(cause)
        self.group, self.cause = group, cause


class SiteOnlyMiddleware:
    """Refuses downloads off the site, counted as ``shoesearch/offsite/redirect`` (a redirect that
    leaves the site: dropped) or ``shoesearch/offsite/request``.

    Scrapy's own ``OffsiteMiddleware`` is not enough here: it lets every ``dont_filter`` request
    through (all of the spider's are, for resume), matches host names without the port (``--site``
    is one ``host:port``) and does not look at the scheme.
    """

    def __init__(self, crawler):
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def process_request(self, request, spider=None):
        site = getattr(self.crawler.spider, "site", None)
        why = site.refusal(request.url) if site is not None else None
        if why is None:
            return None
        kind = "redirect" if request.meta.get("redirect_urls") else "request"
        self.crawler.stats.inc_value(f"{OFFSITE_PREFIX}{kind}")
        self.crawler.spider.logger.warning("refused off-site %s: %s (%s)", kind, request.url, why)
        raise RefusedRequest("refused", f"off the site ({kind}): {why}")


class Rfc9309RobotsTxtMiddleware(RobotsTxtMiddleware):
    """Scrapy's robots.txt middleware (which treats any failure as "allow all") made to follow RFC 9309.

    Relies on Scrapy's ``_parse_robots`` / ``_robots_error`` hooks (Scrapy 2.19); ``tests/test_crawl_outcome.py``
    checks the behaviour end to end.

    RFC 9309 2.5 lets a crawler stop after 500 KiB: the download of robots.txt is stopped once
    ``ROBOTSTXT_MAX_BYTES`` arrived (``bytes_received`` + ``StopDownload``, whatever its Content-Length says)
    and only that much, up to its last complete line, is parsed (``tests/test_crawl_sizes.py``).
    """

    def __init__(self, crawler):
        super().__init__(crawler)
        self._schemes: dict[str, str] = {}
        self.max_bytes = crawler.settings.getint("ROBOTSTXT_MAX_BYTES", 512_000)
        self.page_cap = crawler.settings.getint("DOWNLOAD_MAXSIZE")
        crawler.signals.connect(self._robots_bytes, signal=signals.bytes_received)

    @staticmethod
    def _is_robots(request) -> bool:
        return bool(request.meta.get("dont_obey_robotstxt")) and urlparse_cached(request).path == "/robots.txt"

    async def process_request(self, request, spider=None):
        if self._is_robots(request):
            # The download's own size check would refuse a robots.txt announcing more than the page cap before
            # reading any of it: the transfer is bounded by _robots_bytes instead (at max_bytes).
            request.meta["download_maxsize"] = 0
            request.meta.pop(ROBOTS_READ_META, None)  # a retry counts afresh
        return await super().process_request(request)

    def _robots_bytes(self, data: bytes, request, spider=None) -> None:
        """Stops the robots.txt download after ``max_bytes`` (its response carries what arrived)."""
        if not self._is_robots(request):
            return
        request.meta["download_maxsize"] = self.page_cap  # bounds the decompression that follows
        got = request.meta.get(ROBOTS_READ_META, 0) + len(data)
        request.meta[ROBOTS_READ_META] = got
        if got > self.max_bytes:
            raise StopDownload(fail=False)

    async def robot_parser(self, request):
        parts = urlparse_cached(request)
        self._schemes.setdefault(parts.netloc, parts.scheme)
        return await super().robot_parser(request)

    def process_request_2(self, rp, request) -> None:
        if isinstance(rp, RefusedRequest):
            self._stats.inc_value("shoesearch/robots/refused")
            raise RefusedRequest(rp.group, rp.cause)
        super().process_request_2(rp, request)

    async def _parse_robots(self, response, netloc: str, request) -> None:
        if response.status >= 500:
            self._stats.inc_value(f"robotstxt/response_status_count/{response.status}")
            message = f"robots.txt of {netloc} answered {response.status}"
            self._disallow_all(netloc, "refused", f"{message} (RFC 9309: disallow all)", message)
            return
        if response.status >= 400:  # RFC 9309 2.3.1.3: no robots.txt, no rules (not the error page's text)
            response = response.replace(body=b"")
        if len(response.body) > self.max_bytes:  # RFC 9309 2.5: parse the first 500 KiB (whole lines) only
            response = response.replace(body=first_lines(response.body, self.max_bytes))
            self._stats.inc_value(f"{CAPPED_PREFIX}robots")
            self.crawler.spider.logger.warning(
                "robots.txt of %s is larger than %d bytes: only its first %d bytes are parsed (RFC 9309 2.5)",
                netloc, self.max_bytes, len(response.body))
        await super()._parse_robots(response, netloc, request)

    def _robots_error(self, exc: Exception, netloc: str) -> None:
        url = f"{self._schemes.get(netloc, 'https')}://{netloc}/robots.txt"
        self._stats.inc_value(f"robotstxt/exception_count/{type(exc)}")
        group, cause = classify_failure(exc, url)
        if group != "unreachable":  # refused before it was sent (e.g. a redirect off the site)
            group, cause = "refused", f"robots.txt of {netloc} could not be read: {cause}"
        self._disallow_all(netloc, group, cause, f"robots.txt of {netloc} unreachable ({cause})")

    def _disallow_all(self, netloc: str, group: str, cause: str, message: str) -> None:
        """Refuse every request to ``netloc`` from now on, and stop the crawl cleanly."""
        blocked = RefusedRequest(group, cause)
        waiting = self._parsers.get(netloc)
        self._parsers[netloc] = blocked  # type: ignore[assignment] - process_request_2 knows it
        if isinstance(waiting, Deferred):
            waiting.callback(blocked)
        reason = "robots_unreachable" if group == "unreachable" else "robots_5xx"
        stop = getattr(self.crawler.spider, "stop_cleanly", None)
        if stop is not None:
            stop(reason, f"{message}: RFC 9309 says treat as disallow; crawl stopped")
        else:
            deferred_from_coro(self.crawler.engine.close_spider_async(reason=reason))


def first_lines(body: bytes, limit: int) -> bytes:
    """The complete lines within the first ``limit`` bytes (a cut line could read as another rule:
    ``Disallow: /private`` cut to ``Disallow: /``)."""
    head = body[:limit]
    end = max(head.rfind(b"\n"), head.rfind(b"\r"))
    return head[: end + 1]
