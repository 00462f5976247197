"""The JD spider: keywords / categories -> result pages (both halves) -> item pages -> price API.

Selectors and URL rules live in :mod:`crawlers.jdsite`. Run by ``shoesearch crawl`` (a subprocess
of the crawl task) or by hand: ``scrapy crawl jd -s SHOESEARCH_HOME=data`` from the repository root.

Every request carries its source (the keyword or category it came from, for item and price requests
the source that listed the product first) and an errback, so the stats say per keyword/category what
was listed, written, duplicated or failed, and by cause why requests failed (:mod:`crawlers.outcome`).

Only the site is fetched: a link in a page that leaves it (another host, ``file:``) is refused and
counted (``shoesearch/offsite/link``), and the canonical JD URL of what it stood for (the listed SKU's
item page, the category's next page) is requested instead; downloads off the site are refused by
``crawlers.middlewares.SiteOnlyMiddleware``. An item page must name the listed SKU, else it is a
parse failure (``shoesearch/parse_failed/sku_mismatch``), never a product under another id.

Sizes are not trusted: a page over ``crawl.max_page_bytes`` is dropped unread, a gallery keeps its first
``crawl.max_photos_per_product`` photos, robots.txt is parsed up to ``crawl.max_robots_bytes`` (each
counted under ``shoesearch/capped/``, see :mod:`crawlers.outcome`); photos have ``crawl.max_image_bytes``.

Incremental: a product whose parsed content (fields, price, gallery URLs) hashes to the value of
its current row, and whose photos were all stored, is not yielded (its photos are not fetched). Before
that, a product in ``products_current`` whose listing entry (title, price, photo, shop) shows what it showed
at its last fetch, younger than ``crawl.refetch_after_days``, is not fetched at all (``crawlers/listings.py``).
Sharded (``SHOESEARCH_CLAIMS``): a SKU is fetched by the shard that claims it first, and ``max_products`` is
a total over the shards (``crawlers/shards.py``).
Resume: SKUs already written by the earlier, interrupted attempts of the same crawl job
(``SHOESEARCH_DONE_RUNS``) are not fetched again. Every request is ``dont_filter``: listings are
re-walked on resume (requests that were in flight when a crawl was killed are otherwise lost
with JOBDIR) and the spider de-duplicates SKUs itself.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import scrapy
from scrapy.exceptions import CloseSpider
from scrapy.utils.defer import deferred_from_coro

from crawlers import jdsite
from crawlers.config import crawl_settings_from
from crawlers.items import ProductItem
from crawlers.listings import ListingMemory
from crawlers.outcome import (
    CAPPED_PREFIX,
    FAILED_PREFIX,
    OFFSITE_PREFIX,
    classify_failure,
    is_over_size,
    source_label,
    source_stat,
)

XHR_HEADERS = {"X-Requested-With": "XMLHttpRequest"}
LOGGED_URLS = 5  # of a long list of refused gallery entries, the log quotes this many
TRANSIENT_PHOTO_STATUSES = ("http_error", "timeout", "download_failed")  # worth a retry next crawl


class JdSpider(scrapy.Spider):
    name = "jd"

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.settings_obj, spider.crawl_cfg = crawl_settings_from(crawler.settings)
        c = spider.crawl_cfg
        spider.site = jdsite.SiteMap(c.site or None)
        spider.keywords = [k for k in c.keywords if k.strip()]
        spider.categories = [k for k in c.categories if k.strip()]
        spider.max_products = c.max_products
        spider.max_pages = c.max_pages
        spider.max_photos = c.max_photos_per_product
        spider.run_id = crawler.settings.get("SHOESEARCH_RUN_ID")
        spider.done_runs = json.loads(crawler.settings.get("SHOESEARCH_DONE_RUNS") or "[]")
        spider.scheduled: set[str] = set()  # SKUs whose item page was requested
        spider.fetched: set[str] = set()  # SKUs whose item page was parsed
        spider.priced: set[str] = set()  # SKUs whose price answer was handled
        spider.listed: set[str] = set()  # SKUs seen on any listing (also those over the limit)
        spider.origin: dict[str, str] = {}  # SKU -> the source (keyword/category) that listed it first
        spider.stop_reason = None
        spider.stop_message = None
        spider.pending_stop = None  # (reason, message) of a stop noted before any page was parsed
        spider.signatures: dict[str, str] = {}  # SKU -> its listing entry's signature (recorded once fetched)
        spider._fetched_unchanged: list[tuple[str, str, datetime]] = []  # to record in the listing memory
        claims = crawler.settings.get("SHOESEARCH_CLAIMS")
        if claims:
            from crawlers.shards import ClaimStore

            spider.claims = ClaimStore(claims, crawler.settings.getint("SHOESEARCH_SHARD"), spider.max_products)
        else:
            spider.claims = None
        spider._load_known()
        return spider

    # --- what the warehouse already holds ---
    def _load_known(self) -> None:
        from warehouse import open_warehouse

        wh = open_warehouse(self.settings_obj)
        self.known_hashes = {
            r["product_id"]: r["content_hash"]
            for r in wh.query("SELECT product_id, content_hash FROM products_current WHERE source = 'jd'").to_pylist()
        }
        # Products to fetch again although unchanged: a photo failed for a reason a retry can fix.
        # Permanent refusals (corrupt, not_image, bomb, missing, too_large ...) are not retried nightly.
        transient = ", ".join(f"'{s}'" for s in TRANSIENT_PHOTO_STATUSES)
        self.incomplete = {
            r["product_id"]
            for r in wh.query(
                f"""SELECT DISTINCT product_id FROM images_current
                    WHERE status IN ({transient}) AND starts_with(product_id, 'jd:')"""
            ).to_pylist()
        }
        self.memory = ListingMemory(self.settings_obj.crawl_dir, self.crawl_cfg.site or None)
        days = self.crawl_cfg.refetch_after_days
        self.refetch_after = timedelta(days=days) if days > 0 else None
        self.seen = self.memory.load() if self.refetch_after else {}
        self.done_skus = set()
        if self.done_runs:
            marks = ",".join("?" for _ in self.done_runs)
            self.done_skus = {
                r["sku"] for r in wh.query(f"SELECT DISTINCT sku FROM products WHERE run_id IN ({marks})",
                                           self.done_runs).to_pylist()
            }

    # --- entry points ---
    async def start(self):
        if not self.keywords and not self.categories:
            raise CloseSpider("no keywords or categories to start from")
        for keyword in self.keywords:
            yield self._request(self.site.search_url(keyword, 1), self.parse_search, keyword=keyword, page=1)
        for category in self.categories:
            yield self._request(self.site.list_url(category, 1), self.parse_list, category=category, page=1)

    def _request(self, url: str, callback, headers: dict | None = None, **cb_kwargs) -> scrapy.Request:
        return scrapy.Request(url, callback=callback, errback=self.request_failed, headers=headers,
                              cb_kwargs=cb_kwargs, dont_filter=True)

    def _source(self, cb_kwargs: dict) -> str | None:
        """The keyword/category a request works for (for an item or price: the one that listed it)."""
        if "keyword" in cb_kwargs:
            return source_label("keyword", cb_kwargs["keyword"])
        if "category" in cb_kwargs:
            return source_label("category", cb_kwargs["category"])
        page = cb_kwargs.get("page")
        sku = cb_kwargs.get("sku") or getattr(page, "sku", None)
        return self.origin.get(sku) if sku else None

    def _count(self, source: str | None, counter: str, n: int = 1) -> None:
        if source:
            self.crawler.stats.inc_value(source_stat(source, counter), n)

    # --- listings ---
    def parse_search(self, response, keyword: str, page: int):
        source = source_label("keyword", keyword)
        entries = self._listing(response, "search", source)
        first_half = [e.sku for e in entries]
        yield from self._items(entries, source)
        if first_half:
            yield self._request(self.site.lazy_url(keyword, page, first_half), self.parse_lazy,
                                headers={**XHR_HEADERS, "Referer": response.url}, keyword=keyword, page=page)
        if page == 1:
            total = jdsite.search_total_pages(response.text)
            if total > self.max_pages:
                self.crawler.stats.set_value(source_stat(source, "more_pages"), 1)
            for n in range(2, min(total, self.max_pages) + 1):
                yield self._request(self.site.search_url(keyword, n), self.parse_search, keyword=keyword, page=n)

    def parse_lazy(self, response, keyword: str, page: int):
        self._check_wall(response)
        source = source_label("keyword", keyword)
        entries = jdsite.parse_listing(response.text) if response.text.strip() else []
        if entries is None:
            self._parse_failed("lazy", response, source)
            return
        self.crawler.stats.inc_value("shoesearch/pages/lazy")  # a half of a page: not in the source's pages
        yield from self._items(entries, source)

    def parse_list(self, response, category: str, page: int):
        source = source_label("category", category)
        entries = self._listing(response, "list", source)
        yield from self._items(entries, source)
        next_href = jdsite.list_next_page(response.text)
        if next_href and page >= self.max_pages:
            self.crawler.stats.set_value(source_stat(source, "more_pages"), 1)
        elif next_href:
            url = self._on_site(response.urljoin(next_href), lambda: self.site.list_url(category, page + 1))
            yield self._request(url, self.parse_list, category=category, page=page + 1)

    def _reached_site(self) -> bool:
        return any(v for k, v in self.crawler.stats.get_stats().items() if k.startswith("shoesearch/pages/"))

    def _listing(self, response, kind: str, source: str) -> list[jdsite.ListingEntry]:
        self._check_wall(response)
        if self.pending_stop:
            self._stop(*self.pending_stop)
        entries = jdsite.parse_listing(response.text)
        if entries is None:
            self._parse_failed(kind, response, source)
            return []
        self.crawler.stats.inc_value(f"shoesearch/pages/{kind}")
        self._count(source, "pages")
        return entries

    def _items(self, entries, source: str):
        stats = self.crawler.stats
        claims = self.claims.claim([e.sku for e in entries if e.sku not in self.scheduled]) if self.claims else {}
        for entry in entries:
            self._count(source, "listed")
            self.listed.add(entry.sku)
            stats.set_value("shoesearch/products/listed", len(self.listed))
            if entry.sku in self.scheduled or claims.get(entry.sku) == "other":  # other: another shard has it
                self._count(source, "duplicates")
                continue
            if claims.get(entry.sku) == "over" or (not self.claims and len(self.scheduled) >= self.max_products):
                stats.inc_value("shoesearch/products/over_limit")
                self._count(source, "over_limit")
                continue
            self.scheduled.add(entry.sku)
            self.origin[entry.sku] = source
            self._count(source, "new")
            if entry.sku in self.done_skus:
                stats.inc_value("shoesearch/products/already_done")
                self._count(source, "resumed")
                continue
            if self._unchanged_in_listing(entry, source):
                continue
            url = self._on_site(entry.url, lambda: self.site.item_url(entry.sku))
            yield self._request(url, self.parse_item, sku=entry.sku)

    def _unchanged_in_listing(self, entry: jdsite.ListingEntry, source: str) -> bool:
        """True (counted) when the warehouse holds the product, complete, and its listing entry shows what it
        showed at its last fetch, younger than ``crawl.refetch_after_days``: its item page is not requested."""
        signature = entry.signature
        if signature:
            self.signatures[entry.sku] = signature
        seen = self.seen.get(entry.sku)
        product_id = f"jd:{entry.sku}"
        if (not signature or self.refetch_after is None or seen is None or seen[0] != signature
                or product_id not in self.known_hashes or product_id in self.incomplete
                or datetime.now(timezone.utc) - seen[1] > self.refetch_after):
            return False
        for counter in ("unchanged", "unchanged_in_listing"):
            self.crawler.stats.inc_value(f"shoesearch/products/{counter}")
            self._count(source, counter)
        return True

    def _remember_fetched(self, sku: str, flush: bool = False) -> None:
        """Record (in batches) the listing signature of a product whose item page showed nothing new."""
        if sku in self.signatures:
            self._fetched_unchanged.append((sku, self.signatures[sku], datetime.now(timezone.utc)))
        if self._fetched_unchanged and (flush or len(self._fetched_unchanged) >= self.crawl_cfg.commit_every):
            self.memory.record(self._fetched_unchanged)
            self._fetched_unchanged = []

    def closed(self, reason: str) -> None:
        self._remember_fetched("", flush=True)
        if self.claims:
            self.claims.close()

    def _on_site(self, link: str | None, canonical) -> str:
        """A link found in a page if it is on the site, else (counted, logged) ``canonical()``."""
        if not link:
            return canonical()
        url = self.site.absolute(link)
        why = self.site.refusal(url)
        if why is None:
            return url
        self.crawler.stats.inc_value(f"{OFFSITE_PREFIX}link")
        self.logger.warning("refused off-site link %s (%s); requesting %s instead", link, why, canonical())
        return canonical()

    # --- item page + price ---
    def parse_item(self, response, sku: str):
        self._check_wall(response)
        if sku in self.fetched or sku in self.done_skus:
            return  # a request restored from JOBDIR that the re-walked listings also found
        self.fetched.add(sku)
        self.crawler.stats.inc_value("shoesearch/pages/item")
        page = jdsite.parse_item(response.text, sku_hint=sku, site=self.site)
        if page is None or not page.gallery:
            self._parse_failed("item", response, self.origin.get(sku))
            return
        if page.sku != sku:  # never a product under another id than the one listed
            self._parse_failed("sku_mismatch", response, self.origin.get(sku),
                               f"item page names SKU {page.sku}, not the listed {sku}")
            return
        if page.refused_photos:
            self.crawler.stats.inc_value(f"{OFFSITE_PREFIX}image", len(page.refused_photos))
            self.logger.warning("left out %d gallery photos off the image CDN on %s: %s", len(page.refused_photos),
                                response.url, ", ".join(page.refused_photos[:LOGGED_URLS]))
        if len(page.gallery) > self.max_photos:  # never queue every entry of a page listing 50,000
            self.crawler.stats.inc_value(f"{CAPPED_PREFIX}photos", len(page.gallery) - self.max_photos)
            self.logger.warning("left out %d of %d gallery photos on %s (crawl.max_photos_per_product %d)",
                                len(page.gallery) - self.max_photos, len(page.gallery), response.url, self.max_photos)
            page.gallery = page.gallery[: self.max_photos]
        if page.layout != "pageConfig":
            self.crawler.stats.inc_value(f"shoesearch/layout/{page.layout}")
        yield self._request(self.site.price_url([page.sku]), self.parse_price, page=page, item_url=response.url)

    def parse_price(self, response, page: jdsite.ItemPage, item_url: str):
        self._check_wall(response)
        try:
            prices = jdsite.parse_prices(response.text)
        except (json.JSONDecodeError, AttributeError):
            self._parse_failed("price", response, self.origin.get(page.sku))
            prices = {}
        if jdsite.is_captcha(prices):
            self._stop("captcha", f"JD answered the price API with a captcha ({response.url}); "
                                  "stopping cleanly, products written so far are kept")
        if page.sku in self.priced or page.sku in self.done_skus:
            return  # a price request restored from JOBDIR for a product handled again in this run
        self.priced.add(page.sku)
        price = prices.get(page.sku, {}) if isinstance(prices, dict) else {}
        gallery = [self.site.image_url(jfs, self.crawl_cfg.image_size_code) for jfs in page.gallery]
        product_id = f"jd:{page.sku}"
        fields = {
            "sku": page.sku, "title": page.title, "brand": page.brand, "brand_id": page.brand_id,
            "category": page.category, "category_ids": page.category_ids, "shop_id": page.shop_id,
            "shop_name": page.shop_name, "price": price.get("price"), "list_price": price.get("list_price"),
            "variants": page.variants, "gallery": [jdsite.jfs_path(u) for u in gallery],
        }
        content_hash = hashlib.sha1(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        if self.known_hashes.get(product_id) == content_hash and product_id not in self.incomplete:
            self.crawler.stats.inc_value("shoesearch/products/unchanged")
            self._count(self.origin.get(page.sku), "unchanged")
            self._remember_fetched(page.sku)
            return
        fields.pop("gallery")
        yield ProductItem(
            product_id=product_id, source="jd", url=item_url,
            n_images=len(gallery), content_hash=content_hash, crawled_at=datetime.now(timezone.utc),
            gallery=gallery, layout=page.layout, found_via=self.origin.get(page.sku),
            listing_signature=self.signatures.get(page.sku), **fields,
        )

    # --- walls and failures ---
    def _check_wall(self, response) -> None:
        if jdsite.is_login_url(response.url):
            self._stop("login_wall", f"JD redirected to its login page ({response.url}); stopping cleanly, "
                                     "products written so far are kept")

    def _note_stop(self, reason: str, message: str) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.stop_message = reason, message
            self.crawler.stats.set_value(f"shoesearch/stopped/{reason}", 1)
            self.logger.error(message)

    def _stop(self, reason: str, message: str) -> None:
        self._note_stop(reason, message)
        raise CloseSpider(reason)

    def stop_cleanly(self, reason: str, message: str) -> None:
        """Stop from outside a callback (a middleware): requests in flight finish, the queue stays in JOBDIR.

        A robots.txt without an answer before any page was parsed is not a stop yet: if no page is ever
        parsed the crawl reached no site (``crawlers/outcome.py`` says why, with every request counted);
        the first page parsed stops it.
        """
        if reason == "robots_unreachable" and not self._reached_site():
            self.pending_stop = self.pending_stop or (reason, message)
            return
        first = self.stop_reason is None
        self._note_stop(reason, message)
        if first:
            deferred_from_coro(self.crawler.engine.close_spider_async(reason=reason))

    def _parse_failed(self, kind: str, response, source: str | None, detail: str | None = None) -> None:
        self.crawler.stats.inc_value(f"shoesearch/parse_failed/{kind}")
        self._count(source, "parse_failed")
        if detail:
            self.logger.error("%s (%s): %s", detail, kind, response.url)
        else:
            self.logger.error("page no longer matches the JD %s layout (see crawlers/jdsite.py): %s", kind,
                              response.url)

    def request_failed(self, failure) -> None:
        """Errback of every request (after retries): count it by cause and for its keyword/category."""
        request = failure.request
        max_bytes = request.meta.get("download_maxsize") or self.crawler.settings.getint("DOWNLOAD_MAXSIZE")
        group, cause = classify_failure(failure.value, request.url, max_bytes)
        self.crawler.stats.inc_value(f"{FAILED_PREFIX}{group}/{cause}")
        if is_over_size(failure.value):
            self.crawler.stats.inc_value(f"{CAPPED_PREFIX}page")
        self._count(self._source(request.cb_kwargs), "refused")
        self.logger.warning("request failed (%s): %s %s", group, cause, request.url)
