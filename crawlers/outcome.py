"""What a crawl did per keyword and category, why it ended below ``--max-products``, whether it reached a site.

The spider counts per source (a keyword or a category id) under Scrapy stats named
``shoesearch/source/<kind>:<name>/<counter>`` (``kind`` is ``keyword`` or ``category``):

- ``pages``: listing pages parsed (a search page with its lazy half counts once);
- ``listed``: entries on them (a product listed by two sources counts for both);
- ``new``: products this source listed first (their item page was requested for it);
- ``written`` / ``unchanged`` / ``resumed``: what became of them (``unchanged``: same content as the
  warehouse row, not written again; ``resumed``: written by an interrupted attempt of the same crawl);
- ``unchanged_in_listing``: of ``unchanged``, those whose listing entry showed what it showed at their last
  fetch (younger than ``crawl.refetch_after_days``): their item page was not requested (``crawlers/listings.py``);
- ``duplicates``: entries already listed by another source (or earlier by this one);
- ``over_limit``: entries not fetched because ``--max-products`` was reached;
- ``parse_failed``: its pages that no longer match the JD layout (listings, item pages, prices);
- ``refused``: its requests that got no usable answer (HTTP error, robots.txt, connection error);
- ``more_pages``: 1 when ``--max-pages`` cut its listing short.

Requests off the site are refused and counted under ``shoesearch/offsite/<kind>`` (``link``: a page
linked off the site, the canonical JD URL was requested instead; ``redirect``: a redirect leaving the
site, dropped; ``request``: any other download; ``image``: a gallery photo off the image CDN, left
out). A stop by robots.txt (RFC 9309: 5xx or no answer = disallow all) is ``shoesearch/stopped/robots_5xx``
or ``robots_unreachable`` (the latter only once a page was parsed: before that, the crawl reached no site).

What a size cap cut is counted under ``shoesearch/capped/<kind>`` (``page``: a page over
``crawl.max_page_bytes``, dropped unread; ``robots``: a robots.txt over ``crawl.max_robots_bytes``, parsed
up to there; ``photos``: gallery entries beyond ``crawl.max_photos_per_product``, left out). A photo over
``crawl.max_image_bytes`` is an ``images`` row with status ``too_large``.

A failed request is also counted by cause, ``shoesearch/request_failed/<group>/<cause>`` (group
``unreachable`` for network errors, ``refused`` for answers that were errors). A crawl that parsed no
listing page at all has failed; :func:`crawl_failure` says why in one line. The stats file
(``crawlers/extensions.py``) carries all of it; ``shoesearch crawl`` and the Prefect artifact print it.
"""

from __future__ import annotations

import re
import socket
import unicodedata
from functools import lru_cache
from urllib.parse import urlsplit

SOURCE_PREFIX = "shoesearch/source/"
FAILED_PREFIX = "shoesearch/request_failed/"
OFFSITE_PREFIX = "shoesearch/offsite/"
CAPPED_PREFIX = "shoesearch/capped/"
CAPPED_TEXT = {  # what each size cap did, for the one-line outcome
    "page": "pages over crawl.max_page_bytes dropped",
    "robots": "robots.txt cut at crawl.max_robots_bytes",
    "photos": "gallery photos beyond crawl.max_photos_per_product left out",
}
FAILURE_STAT = "shoesearch/failure"  # the one-line failure, read by ``crawlers/commands/crawl.py``
COUNTERS = ("pages", "listed", "new", "written", "unchanged", "unchanged_in_listing", "resumed", "duplicates",
            "over_limit", "parse_failed", "refused")
SHOWN_ALWAYS = ("pages", "listed", "new", "written", "duplicates", "parse_failed", "refused")
MAX_CAUSES = 3  # distinct failure causes quoted in the one-line failure


def source_label(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def source_stat(label: str, counter: str) -> str:
    return f"{SOURCE_PREFIX}{label}/{counter}"


# --- failed requests -----------------------------------------------------------------------
def _host_port(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or url, f"{parts.hostname}:{port}"


@lru_cache(maxsize=256)
def _resolver_says(host: str) -> str:
    """Why ``host`` does not resolve, in the system resolver's words (Twisted's error drops them)."""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            return f"{exc.strerror} (no network or no DNS server?)"
        return exc.strerror or str(exc)
    except OSError as exc:
        return str(exc)
    return "it resolves now; the lookup failed during the crawl"


def classify_failure(exc: BaseException, url: str, max_bytes: int | None = None) -> tuple[str, str]:
    """``(group, cause)`` of a request that failed: ``unreachable`` (network) or ``refused`` (an answer).

    Scrapy 2.13+ wraps Twisted's errors (``CannotResolveHostError`` for ``DNSLookupError`` ...); both
    spellings are recognised. ``max_bytes``: the request's size cap, named when it was exceeded.
    """
    from scrapy import exceptions as scrapy_errors
    from scrapy.spidermiddlewares.httperror import HttpError
    from twisted.internet import error as net

    def wrapped(*names):
        return tuple(getattr(scrapy_errors, n) for n in names if hasattr(scrapy_errors, n))

    if isinstance(getattr(exc, "group", None), str) and isinstance(getattr(exc, "cause", None), str):
        return exc.group, exc.cause  # refused before it was sent (crawlers/middlewares.py says why)
    host, host_port = _host_port(url)
    if isinstance(exc, HttpError):
        return "refused", f"HTTP {exc.response.status} from {host_port}"
    if is_over_size(exc):
        return "refused", f"answer from {host_port} over the {max_bytes or 'download'}-byte size cap, dropped"
    if isinstance(exc, scrapy_errors.IgnoreRequest):
        return "refused", f"{exc or 'request ignored'} ({host_port})"
    if isinstance(exc, (net.DNSLookupError, *wrapped("CannotResolveHostError"))):
        return "unreachable", f"DNS lookup failed for {host}: {_resolver_says(host)}"
    if isinstance(exc, (net.ConnectionRefusedError, *wrapped("DownloadConnectionRefusedError"))):
        return "unreachable", f"connection refused by {host_port}"
    if isinstance(exc, (net.TimeoutError, net.TCPTimedOutError, *wrapped("DownloadTimeoutError"))):
        return "unreachable", f"no answer from {host_port} (timed out)"
    if isinstance(exc, net.NoRouteError) or "unreachable" in str(exc).lower():
        return "unreachable", f"no network: {host_port} is unreachable"
    if isinstance(exc, net.ConnectError):
        return "unreachable", f"cannot connect to {host_port}: {exc.osError or type(exc).__name__}"
    lost = (net.ConnectionLost, net.ConnectionDone, *wrapped("DownloadFailedError", "ResponseDataLossError"))
    if isinstance(exc, lost):
        return "unreachable", f"{host_port} closed the connection without a complete answer"
    return "refused", f"{type(exc).__name__} from {host_port}: {exc}"


def is_over_size(exc: BaseException) -> bool:
    """A download Scrapy cancelled: its answer (announced or received) exceeded the request's size cap."""
    from scrapy import exceptions as scrapy_errors
    from twisted.internet.defer import CancelledError

    return isinstance(exc, (CancelledError, getattr(scrapy_errors, "DownloadCancelledError", CancelledError)))


def _failed_by_cause(raw: dict, group: str) -> dict[str, int]:
    prefix = f"{FAILED_PREFIX}{group}/"
    return {k[len(prefix):]: int(v) for k, v in raw.items() if k.startswith(prefix)}


DNS_CAUSE = re.compile(r"^DNS lookup failed for (\S+): (.+)$")


def _causes(by_cause: dict[str, int]) -> str:
    """The most frequent causes; DNS failures with the same resolver answer share one mention."""
    merged: dict[str, list] = {}  # text -> [count, hosts]
    for cause, n in by_cause.items():
        m = DNS_CAUSE.match(cause)
        key = f"DNS lookup failed for {{hosts}}: {m.group(2)}" if m else cause
        entry = merged.setdefault(key, [0, []])
        entry[0] += n
        entry[1] += [m.group(1)] if m else []
    top = sorted(merged.items(), key=lambda kv: (-kv[1][0], kv[0]))[:MAX_CAUSES]
    return "; ".join(text.replace("{hosts}", ", ".join(sorted(hosts))) for text, (_, hosts) in top)


def crawl_failure(raw: dict) -> str | None:
    """One line when the crawl parsed no listing page (and no wall stopped it), else None."""
    if any(k.startswith("shoesearch/stopped/") for k in raw):
        return None
    if sum(v for k, v in raw.items() if k.startswith("shoesearch/pages/")):
        return None
    unreachable, refused = _failed_by_cause(raw, "unreachable"), _failed_by_cause(raw, "refused")
    failed = sum(unreachable.values()) + sum(refused.values())
    if unreachable:
        return f"crawl reached no site: {_causes(unreachable)} ({failed} requests failed, 0 pages parsed)"
    if refused:
        return f"crawl got no listing page: {_causes(refused)} ({failed} requests refused, 0 pages parsed)"
    mismatched = sum(v for k, v in raw.items() if k.startswith("shoesearch/parse_failed/"))
    if mismatched:
        return (f"crawl read no listing page: {mismatched} pages do not match the JD layout "
                "(see crawlers/jdsite.py; 0 pages parsed)")
    return None


# --- the summary -----------------------------------------------------------------------------
def summarize(raw: dict, reason: str, info: dict) -> dict:
    """The stats file's summary of a crawl from its Scrapy stats ``raw`` (one process's, or the shards' summed:
    ``crawlers/shards.py``). ``info``: ``stop_message``, ``duration_s``, ``keywords``, ``categories``,
    ``max_products``, ``max_pages``."""
    keywords, categories = list(info.get("keywords") or []), list(info.get("categories") or [])

    def by_last(prefix: str) -> dict:
        return {k.rsplit("/", 1)[1]: v for k, v in raw.items() if k.startswith(prefix)}

    return {
        "finish_reason": reason,
        "stop_message": info.get("stop_message"),
        "failure": crawl_failure(raw),  # set when no listing page was parsed: the crawl reached nothing
        "duration_s": info.get("duration_s"),
        "pages": sum(v for k, v in raw.items() if k.startswith("shoesearch/pages/")),
        "responses": raw.get("response_received_count", 0),
        "keywords": keywords,
        "categories": categories,
        "max_products": info.get("max_products"),
        "max_pages": info.get("max_pages"),
        "sources": source_rows(raw, keywords, categories),
        "products_listed": raw.get("shoesearch/products/listed", 0),
        "products_written": raw.get("shoesearch/products/written", 0),
        "products_unchanged": raw.get("shoesearch/products/unchanged", 0),
        "products_unchanged_in_listing": raw.get("shoesearch/products/unchanged_in_listing", 0),
        "products_resumed": raw.get("shoesearch/products/already_done", 0),
        "images_written": raw.get("shoesearch/images/written", 0),
        "images_by_status": by_last("shoesearch/images/status/"),
        "parse_failures": by_last("shoesearch/parse_failed/"),
        "offsite_refused": {k[len(OFFSITE_PREFIX):]: v for k, v in raw.items() if k.startswith(OFFSITE_PREFIX)},
        "capped": {k[len(CAPPED_PREFIX):]: v for k, v in raw.items() if k.startswith(CAPPED_PREFIX)},
        "requests_failed": {group: _failed_by_cause(raw, group) for group in ("unreachable", "refused")},
        "retries": raw.get("retry/count", 0),
        "stats": {k: v for k, v in raw.items() if isinstance(v, (int, float, str, bool)) or v is None},
    }


# --- per source ----------------------------------------------------------------------------
def source_rows(raw: dict, keywords: list[str], categories: list[str]) -> list[dict]:
    """One row per keyword, then per category, in the crawl's order, from the spider's stats."""
    counts: dict[str, dict] = {}
    for key, value in raw.items():
        if key.startswith(SOURCE_PREFIX):
            label, _, counter = key[len(SOURCE_PREFIX):].rpartition("/")
            counts.setdefault(label, {})[counter] = value
    rows = []
    for kind, names in (("keyword", keywords), ("category", categories)):
        for name in names:
            c = counts.get(source_label(kind, name), {})
            rows.append({"kind": kind, "name": name, **{n: int(c.get(n, 0)) for n in COUNTERS},
                         "more_pages": bool(c.get("more_pages"))})
    return rows


def _n(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _accounting(s: dict) -> str:
    scheduled = sum(r["new"] for r in s["sources"])
    resumed = s.get("products_resumed", 0)
    lost = scheduled - s["products_written"] - s["products_unchanged"] - resumed
    parts = [f"{s['products_written']} written"]
    in_listing = s.get("products_unchanged_in_listing", 0)
    seen = f" ({in_listing} of them seen unchanged in the listing: item page not fetched)" if in_listing else ""
    parts += [f"{s['products_unchanged']} unchanged since the last crawl{seen}"] if s["products_unchanged"] else []
    parts += [f"{resumed} written by an earlier attempt"] if resumed else []
    parts += [f"{lost} not written (parse failures or refused requests, see the table)"] if lost > 0 else []
    offsite = s.get("offsite_refused") or {}
    if offsite:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(offsite.items()))
        parts += [f"{sum(offsite.values())} off-site URLs refused ({kinds})"]
    capped = s.get("capped") or {}
    if capped:
        parts += ["size caps: " + ", ".join(f"{CAPPED_TEXT.get(k, k)}: {v}" for k, v in sorted(capped.items()))]
    return ", ".join(parts)


def shortfall_reason(s: dict) -> str:
    """Why the crawl ended where it did, in one line (``s``: the stats file's summary)."""
    if s.get("failure"):
        return s["failure"]
    if s.get("stop_message"):
        return f"stopped early: {s['stop_message']}"
    if "sources" not in s:  # a summary written before per-source counts existed
        return f"{s['finish_reason']}: {s['products_written']} products written"
    if s["finish_reason"] != "finished":
        return f"stopped early ({s['finish_reason']}); {_accounting(s)}"
    listed, limit = s["products_listed"], s["max_products"]
    if listed >= limit:
        return f"reached --max-products {limit}: {_accounting(s)}"
    keywords = [r for r in s["sources"] if r["kind"] == "keyword"]
    n_categories = len(s["sources"]) - len(keywords)
    across = f"across {_n(len(keywords), 'keyword')} and {_n(n_categories, 'category', 'categories')}"
    capped = [r["name"] for r in s["sources"] if r["more_pages"]]
    if capped:
        head = (f"page limit reached: {_n(listed, 'product')} listed {across}, below --max-products {limit}; "
                f"--max-pages {s['max_pages']} left more pages of {', '.join(capped)}")
    else:
        head = f"listings ran out: {_n(listed, 'product')} listed {across}, below --max-products {limit}"
    return f"{head}; {_accounting(s)}"


# --- printing ------------------------------------------------------------------------------
def _columns(rows: list[dict]) -> list[str]:
    return [c for c in COUNTERS if c in SHOWN_ALWAYS or any(r.get(c) for r in rows)]  # .get: older summaries


def _cells(row: dict, columns: list[str]) -> list[str]:
    pages = f"{row['pages']}+" if row["more_pages"] else str(row["pages"])
    return [f"{row['kind']} {row['name']}"] + [pages if c == "pages" else str(row.get(c, 0)) for c in columns]


def _width(text: str) -> int:
    """Terminal columns of ``text`` (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def sources_table(s: dict) -> str:
    """The per keyword/category table as aligned text (``+`` after pages: --max-pages cut it short)."""
    columns = _columns(s["sources"])
    lines = [["source"] + columns] + [_cells(r, columns) for r in s["sources"]]
    widths = [max(_width(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        first = line[0] + " " * (widths[0] - _width(line[0]))
        out.append("  ".join([first] + [" " * (w - _width(c)) + c for c, w in zip(line[1:], widths[1:])]))
    return "\n".join(out)


def sources_markdown(s: dict) -> str:
    """The same table in markdown (the Prefect ``crawl-summary`` artifact), with a legend."""
    columns = _columns(s["sources"])
    head = "| source | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns)
    body = "\n".join("| " + " | ".join(_cells(r, columns)) + " |" for r in s["sources"])
    legend = ("`listed`: entries on its pages; `new`: products it listed first; `duplicates`: already listed "
              "by another keyword/category; `refused`: requests without a usable answer; `+` after pages: "
              "`--max-pages` cut the listing short.")
    return f"{head}\n{body}\n\n{legend}"
