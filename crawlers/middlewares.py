"""Downloader middlewares: retries with exponential backoff."""

from __future__ import annotations

import asyncio

from scrapy.downloadermiddlewares.retry import RetryMiddleware

BACKOFF_META = "shoesearch_backoff_s"


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
