"""What a crawl covers and how it ends, over real HTTP (the demo shop) with the real Scrapy subprocess:
the default keywords/categories reach every product, a crawl below --max-products says why per keyword
and category, and a crawl that reaches no site exits non-zero with the cause (``shoesearch crawl`` and
``scrapy crawl jd``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.settings import CrawlSettings, Settings
from crawlers.outcome import shortfall_reason, sources_table
from tasks.crawl import crawl, crawl_summary
from tests.fixtures_crawl import FAST_CRAWL
from warehouse import open_warehouse

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULTS = CrawlSettings()
N_SOURCES = len(DEFAULTS.keywords) + len(DEFAULTS.categories)
# The loopback shop needs no politeness (delays, throttling, retry back-off); nothing else is changed.
LOOPBACK_POLITENESS = {k: FAST_CRAWL[k] for k in ("crawl.download_delay_s", "crawl.autothrottle_max_delay_s",
                                                   "crawl.concurrent_requests", "crawl.autothrottle_target_concurrency",
                                                   "crawl.retry_backoff_s")}


def _env(tmp_path: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOESEARCH_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")  # the CLI's own temporary Prefect server, isolated
    return {**env, **(extra or {})}


def _shoesearch(tmp_path: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    sets = [a for key, value in LOOPBACK_POLITENESS.items() for a in ("--set", f"{key}={value}")]
    return subprocess.run([str(BIN / "shoesearch"), "--home", str(home), *sets, *args], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def _dead_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _expected_listed(shop) -> dict[tuple[str, str], list[str]]:
    """What the shop lists per default source (its own search/category rules, the ground truth)."""
    out = {("keyword", k): [p.sku for p in shop.state.search(k)] for k in DEFAULTS.keywords}
    out.update({("category", c): [p.sku for p in shop.state.category(c)] for c in DEFAULTS.categories})
    return out


@pytest.mark.e2e
def test_default_crawl_gets_every_product_of_a_12_product_shop(tmp_path, make_shop):
    """`shoesearch crawl --site URL --max-products 12` with the default keywords and categories (only the
    politeness settings relaxed for the loopback shop) writes all 12 products with their galleries."""
    shop = make_shop(n=12)
    manifest = httpx.get(f"{shop.url}/_shop/manifest.json").json()
    home = tmp_path / "home"
    res = _shoesearch(tmp_path, home, "crawl", "--site", shop.url, "--max-products", "12")
    assert res.returncode == 0, res.stderr
    wh = open_warehouse(Settings.load(home))
    rows = wh.query("SELECT p.sku, count(*) n FROM products_current p JOIN images_current i USING (product_id) "
                    "WHERE i.status = 'ok' GROUP BY 1").to_pylist()
    assert {r["sku"]: r["n"] for r in rows} == {p["sku"]: len(p["gallery"]) for p in manifest["products"]}
    out = res.stdout
    assert "12 products written" in out and "reached --max-products 12: 12 written" in out
    for kw in DEFAULTS.keywords:
        assert f"keyword {kw} " in out
    for cat in DEFAULTS.categories:
        assert f"category {cat} " in out
    # Every kind of footwear the shop sells is found by more than one default source.
    listed = _expected_listed(shop)
    for p in manifest["products"]:
        assert sum(p["sku"] in skus for skus in listed.values()) >= 2, p["title"]


@pytest.mark.e2e
def test_a_crawl_below_max_products_says_why_per_keyword_and_category(crawl_settings, make_shop, monkeypatch):
    shop = make_shop(n=12)
    run_id = crawl(crawl_settings, site=shop.url, max_products=50)  # the default keywords and categories
    s = crawl_summary(crawl_settings, run_id)
    listed = _expected_listed(shop)
    rows = {(r["kind"], r["name"]): r for r in s["sources"]}
    assert list(rows) == list(listed)  # every default source, in order, also those that list nothing
    for key, row in rows.items():
        assert row["pages"] == 1 and row["listed"] == len(listed[key]), key
        assert row["listed"] == row["new"] + row["duplicates"] and row["over_limit"] == 0
        assert row["new"] == row["written"] and row["parse_failed"] == row["refused"] == 0
    assert rows[("keyword", "凉鞋")]["listed"] == 0  # the shop sells no sandals
    assert rows[("keyword", "靴子")]["listed"] == 2  # 靴子 finds the two 男靴, not every 鞋靴 product
    assert sum(r["written"] for r in s["sources"]) == s["products_written"] == s["products_listed"] == 12
    assert sum(r["duplicates"] for r in s["sources"]) == sum(map(len, listed.values())) - 12
    reason = "listings ran out: 12 products listed across 5 keywords and 3 categories, below --max-products 50"
    assert shortfall_reason(s) == f"{reason}; 12 written"
    table = sources_table(s).splitlines()
    assert table[0].split() == ["source", "pages", "listed", "new", "written", "duplicates", "parse_failed",
                                "refused"]
    assert table[5].split() == ["keyword", "凉鞋", "1", "0", "0", "0", "0", "0", "0"]
    # The Prefect artifact carries the same reason and table.
    import flows.crawl

    published = {}
    monkeypatch.setattr(flows.crawl, "create_markdown_artifact", lambda **kw: published.update(kw))
    flows.crawl.publish_crawl_summary(crawl_settings, run_id)
    assert f"**Outcome:** {reason}" in published["markdown"]
    assert "| keyword 凉鞋 | 1 | 0 | 0 | 0 | 0 | 0 | 0 |" in published["markdown"]
    run = open_warehouse(crawl_settings).query("SELECT message FROM runs WHERE run_id = ?", [run_id]).to_pylist()
    assert reason in run[0]["message"]


@pytest.mark.e2e
def test_page_limit_and_failures_are_named_per_source(crawl_settings, make_shop):
    shop = make_shop(n=12, page_size=2)  # 1 item in the HTML + 1 lazy: 男鞋 spans 4 pages
    run_id = crawl(crawl_settings, site=shop.url, max_products=50, max_pages=1)
    s = crawl_summary(crawl_settings, run_id)
    first_pages = {key: skus[:2] for key, skus in _expected_listed(shop).items()}
    capped = [key[1] for key, skus in _expected_listed(shop).items() if len(skus) > 2]
    assert capped == ["男鞋", "11729,11730"]
    assert [r["name"] for r in s["sources"] if r["more_pages"]] == capped
    n = len(set().union(*first_pages.values()))
    assert s["products_listed"] == s["products_written"] == n < 12
    assert shortfall_reason(s) == (f"page limit reached: {n} products listed across 5 keywords and 3 categories, "
                                   f"below --max-products 50; --max-pages 1 left more pages of 男鞋, 11729,11730; "
                                   f"{n} written")
    assert sources_table(s).splitlines()[1].split()[:3] == ["keyword", "男鞋", "1+"]  # +: more pages exist
    # Item pages that keep answering 503: each product's failure is counted for the source that listed it.
    shop = make_shop(n=12, faults="5xx=9")
    s = crawl_summary(crawl_settings, crawl(crawl_settings, site=shop.url, max_products=50))
    assert s["products_written"] == 0 and s["failure"] is None
    assert all(r["refused"] == r["new"] for r in s["sources"]) and sum(r["new"] for r in s["sources"]) == 12
    port = shop.url.rsplit(":", 1)[1]
    assert s["requests_failed"]["refused"] == {f"HTTP 503 from 127.0.0.1:{port}": 12}
    assert shortfall_reason(s).endswith("0 written, 12 not written (parse failures or refused requests, see the table)")


@pytest.mark.parametrize("site, cause", [
    ("dead-port", "connection refused by 127.0.0.1:{port}"),
    ("http://no-such-host.invalid", "DNS lookup failed for no-such-host.invalid: "),
])
@pytest.mark.e2e
def test_shoesearch_crawl_of_no_site_exits_non_zero_with_the_cause(tmp_path, site, cause):
    site = _dead_url() if site == "dead-port" else site
    cause = cause.format(port=site.rsplit(":", 1)[-1])
    home = tmp_path / "home"
    res = _shoesearch(tmp_path, home, "crawl", "--site", site, "--max-products", "3")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr  # one line, no traceback
    assert lines[0].startswith(f"shoesearch: error: crawl reached no site: {cause}")
    assert lines[0].endswith(f"({N_SOURCES} requests failed, 0 pages parsed)")
    runs = open_warehouse(Settings.load(home)).query("SELECT status, message FROM runs").to_pylist()
    assert [r["status"] for r in runs] == ["failed"] and "crawl reached no site" in runs[0]["message"]
    assert not list((home / "crawl" / "jobs").glob("*/job.json"))  # nothing to resume: the job is closed


def _scrapy_crawl(tmp_path: Path, site: str | None, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    extra = {f"SHOESEARCH_CRAWL__{k.split('.')[1].upper()}": str(v) for k, v in LOOPBACK_POLITENESS.items()}
    if site:
        extra["SHOESEARCH_CRAWL__SITE"] = site
    cmd = [*wrap, str(BIN / "scrapy"), "crawl", "jd", "-s", f"SHOESEARCH_HOME={tmp_path / 'home'}"]
    return subprocess.run(cmd, cwd=REPO, env=_env(tmp_path, extra), capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
@pytest.mark.parametrize("site", ["dead-port", "http://no-such-host.invalid"])
def test_scrapy_crawl_jd_exits_non_zero_when_it_reaches_no_site(tmp_path, site):
    site = _dead_url() if site == "dead-port" else site
    res = _scrapy_crawl(tmp_path, site)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    host = site.split("//", 1)[1]
    expected = f"connection refused by {host}" if "127.0.0.1" in host else f"DNS lookup failed for {host}: "
    assert last.startswith(f"scrapy crawl jd: crawl reached no site: {expected}"), last
    runs = open_warehouse(Settings.load(tmp_path / "home")).query("SELECT status, message FROM runs").to_pylist()
    assert [r["status"] for r in runs] == ["failed"] and "crawl reached no site" in runs[0]["message"]


@pytest.mark.e2e
def test_scrapy_crawl_jd_without_network_names_the_resolver(tmp_path):
    """No network at all (a fresh network namespace): the real JD hosts do not resolve."""
    unshare = shutil.which("unshare")
    if not unshare or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -rn (an unprivileged network namespace) to take the network away")
    res = _scrapy_crawl(tmp_path, None, wrap=[unshare, "-rn"])
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("scrapy crawl jd: crawl reached no site: DNS lookup failed for list.jd.com, search.jd.com: ")
    assert last.endswith(f"({N_SOURCES} requests failed, 0 pages parsed)")


def test_failed_requests_are_named_by_cause():
    """Each way a request fails, as the errback sees it (Scrapy's wrapped errors and Twisted's own)."""
    from scrapy.exceptions import (
        CannotResolveHostError,
        DownloadConnectionRefusedError,
        DownloadTimeoutError,
        IgnoreRequest,
    )
    from scrapy.http import HtmlResponse, Request
    from scrapy.spidermiddlewares.httperror import HttpError
    from twisted.internet import error as net

    from crawlers.outcome import classify_failure

    url = "https://search.jd.com/Search?keyword=x"
    forbidden = HttpError(HtmlResponse(url, status=403, request=Request(url)), "Ignoring non-200 response")
    assert classify_failure(forbidden, url) == ("refused", "HTTP 403 from search.jd.com:443")
    assert classify_failure(IgnoreRequest("Forbidden by robots.txt"), url) == (
        "refused", "Forbidden by robots.txt (search.jd.com:443)")
    assert classify_failure(DownloadConnectionRefusedError("111"), "http://127.0.0.1:9/x") == (
        "unreachable", "connection refused by 127.0.0.1:9")
    assert classify_failure(DownloadTimeoutError("took longer than 30 s"), url) == (
        "unreachable", "no answer from search.jd.com:443 (timed out)")
    assert classify_failure(net.NoRouteError(101, "Network is unreachable"), "http://10.1.2.3/x") == (
        "unreachable", "no network: 10.1.2.3:80 is unreachable")
    group, cause = classify_failure(CannotResolveHostError("no results"), "http://no-such-host.invalid/")
    assert group == "unreachable" and cause.startswith("DNS lookup failed for no-such-host.invalid: ")


@pytest.mark.e2e
def test_robots_txt_answering_5xx_stops_the_crawl_and_4xx_allows(tmp_path, make_shop, crawl_settings):
    """RFC 9309: a robots.txt answering 5xx (after retries) means "disallow all": `shoesearch crawl` fetches
    nothing but robots.txt, says why and exits non-zero (3: stopped early, resumable). 4xx: no rules."""
    shop = make_shop(n=4, faults="robots5xx")
    home = tmp_path / "cli-home"
    res = _shoesearch(tmp_path, home, "crawl", "--site", shop.url, "--keyword", "鞋")
    assert res.returncode == 3, res.stderr
    host = shop.url.split("//", 1)[1]
    message = f"robots.txt of {host} answered 503: RFC 9309 says treat as disallow; crawl stopped"
    assert f"stopped early: {message}" in res.stdout
    asked = httpx.get(f"{shop.url}/_shop/stats.json").json()
    assert asked["robots_errors"] == 1 + DEFAULTS.retry_times  # retried first, like any 5xx
    assert set(asked) == {"requests", "robots_errors"}  # nothing but robots.txt was fetched (no page)
    wh = open_warehouse(Settings.load(home))
    assert wh.query("SELECT count(*) n FROM products").to_pylist()[0]["n"] == 0
    run = wh.query("SELECT status, message FROM runs").to_pylist()[0]
    assert run["status"] == "success" and message in run["message"]
    # 404: there is no robots.txt, so there are no rules (its error page is not read as rules).
    shop = make_shop(n=4, faults="robots4xx")
    s = crawl_summary(crawl_settings, crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[]))
    assert s["finish_reason"] == "finished" and s["products_written"] == 4 and not s["stop_message"]
    assert httpx.get(f"{shop.url}/_shop/stats.json").json()["robots_errors"] == 1


@pytest.mark.e2e
def test_keyword_alone_crawls_only_that_keyword(tmp_path, make_shop, monkeypatch):
    """`--keyword K` alone crawls K only (no category); `--category C` alone C only; both: both. The
    settings' keywords/categories (here from the home's shoesearch.toml) apply only when neither is given."""
    from tasks.crawl import crawl_params

    shop = make_shop(n=12)
    home = tmp_path / "home"
    home.mkdir()
    (home / "shoesearch.toml").write_text('[crawl]\nkeywords = ["男鞋"]\ncategories = ["11729,11731"]\n')
    res = _shoesearch(tmp_path, home, "crawl", "--site", shop.url, "--keyword", "靴子")
    assert res.returncode == 0, res.stderr
    rows = [line.split()[:2] for line in res.stdout.splitlines() if line.startswith(("keyword ", "category "))]
    assert rows == [["keyword", "靴子"]]
    assert "across 1 keyword and 0 categories" in res.stdout
    wh = open_warehouse(Settings.load(home))
    written = {r["sku"] for r in wh.query("SELECT sku FROM products").to_pylist()}
    assert written == {p.sku for p in shop.state.search("靴子")} and len(written) == 2
    monkeypatch.delenv("SHOESEARCH_HOME", raising=False)
    settings = Settings.load(home)

    def what(**kw):
        params = crawl_params(settings, site=shop.url, **kw)
        return params["keywords"], params["categories"]

    assert what() == (["男鞋"], ["11729,11731"])  # neither flag: the settings
    assert what(keywords=["靴子"]) == (["靴子"], [])
    assert what(categories=["1318,12099,9756"]) == ([], ["1318,12099,9756"])
    assert what(keywords=["靴子"], categories=["1318"]) == (["靴子"], ["1318"])
    helptext = subprocess.run([str(BIN / "shoesearch"), "crawl", "--help"], capture_output=True, text=True,
                              env=_env(tmp_path), cwd=tmp_path, timeout=120).stdout
    assert "--keyword alone crawls no category" in " ".join(helptext.split())


@pytest.mark.e2e
def test_scrapy_crawl_jd_alone_writes_the_shop_into_the_warehouse(tmp_path, make_shop):
    """The spider run by hand (README: ``scrapy crawl jd -s SHOESEARCH_HOME=data`` from the repository root), at
    the default keywords and categories, with the site and the loopback politeness given by environment (the
    one settings mechanism it shares with the CLI): every product and photo lands in the warehouse, exit 0, and
    a rerun of the same job writes nothing twice."""
    shop = make_shop(n=8)
    manifest = httpx.get(f"{shop.url}/_shop/manifest.json").json()
    res = _scrapy_crawl(tmp_path, shop.url)
    assert res.returncode == 0, res.stderr[-2000:]
    wh = open_warehouse(Settings.load(tmp_path / "home"))
    counts = lambda: {r["sku"]: r["n"] for r in wh.query(  # noqa: E731
        "SELECT p.sku, count(*) n FROM products_current p JOIN images_current i USING (product_id) "
        "WHERE i.status = 'ok' GROUP BY 1").to_pylist()}
    assert counts() == {p["sku"]: len(p["gallery"]) for p in manifest["products"]}
    runs = wh.query("SELECT step, status FROM runs").to_pylist()
    assert runs == [{"step": "crawl", "status": "success"}]
    raw_rows = lambda: wh.query("SELECT count(*) n FROM images").column("n")[0].as_py()  # noqa: E731
    written = raw_rows()
    assert written == sum(counts().values())
    again = _scrapy_crawl(tmp_path, shop.url)
    assert again.returncode == 0, again.stderr[-2000:]
    assert counts() == {p["sku"]: len(p["gallery"]) for p in manifest["products"]}
    assert raw_rows() == written  # nothing written twice
