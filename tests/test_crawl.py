"""The crawl step against the demo shop over real HTTP: completeness, faults, resume, incremental."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.crawl import CrawlJob, crawl, crawl_params, crawl_summary
from warehouse import open_warehouse

REPO = Path(__file__).resolve().parent.parent


def _manifest(shop) -> dict:
    return httpx.get(f"{shop.url}/_shop/manifest.json").json()


def _galleries(wh, where: str = "starts_with(p.product_id, 'jd:')") -> dict[str, list]:
    rows = wh.query(f"""SELECT p.sku, i.position, i.sha1, i.status FROM products_current p
                        JOIN images_current i USING (product_id) WHERE {where} ORDER BY p.sku, i.position""").to_pylist()
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r["sku"], []).append((r["position"], r["sha1"], r["status"]))
    return out


def _no_duplicates(wh) -> None:
    dup = wh.query("SELECT image_id, count(*) n FROM images GROUP BY 1 HAVING n > 1").num_rows
    assert dup == 0
    assert wh.query("SELECT product_id, count(*) n FROM products GROUP BY 1 HAVING n > 1").num_rows == 0


@pytest.mark.e2e
def test_flow_crawls_every_product_and_gallery_then_ingest_matches(prefect_harness, crawl_settings, make_shop,
                                                                  shop_catalog):
    from flows.crawl import crawl_flow
    from tasks.ingest import ingest_catalog

    shop = make_shop()
    manifest = _manifest(shop)
    overrides = {f"crawl.{k}": v for k, v in vars(crawl_settings.crawl).items()}
    run_id = crawl_flow(home=str(crawl_settings.home), overrides=overrides, site=shop.url, keywords=["鞋"],
                        categories=[manifest["products"][0]["category_ids"]], max_products=100)
    wh = open_warehouse(crawl_settings)
    expected = {p["sku"]: [(g["position"], g["sha1"], "ok") for g in p["gallery"]] for p in manifest["products"]}
    assert _galleries(wh) == expected  # all 40 products, every photo, in gallery order
    summary = crawl_summary(crawl_settings, run_id)
    assert summary["finish_reason"] == "finished" and summary["products_written"] == 40
    assert summary["stats"]["shoesearch/pages/search"] == 4 and summary["stats"]["shoesearch/pages/lazy"] == 4
    assert summary["stats"]["shoesearch/pages/list"] >= 1
    row = wh.query("SELECT status, output_rows, step FROM runs WHERE run_id = ?", [run_id]).to_pylist()[0]
    assert row["status"] == "success" and json.loads(row["output_rows"])["products"] == 40
    p = wh.query("SELECT * FROM products_current WHERE sku = ?", [manifest["products"][5]["sku"]]).to_pylist()[0]
    m = manifest["products"][5]
    assert (p["title"], p["brand"], p["price"], p["category"], p["shop_name"]) == (
        m["title"], m["brand"], m["price"], m["category"], m["shop_name"])
    assert wh.query("SELECT count(*) n FROM images WHERE is_noise IS NOT NULL AND starts_with(product_id, 'jd:')"
                    ).to_pylist()[0]["n"] == 0
    # Ingest of the same folder: the same products with the same ordered photo hashes.
    ingest_catalog(crawl_settings, shop_catalog, name="shop")
    ingested = _galleries(open_warehouse(crawl_settings), "starts_with(p.product_id, 'shop:')")
    assert ingested == expected
    # Re-crawl: nothing changed, nothing written, no photo fetched again.
    images_before = httpx.get(f"{shop.url}/_shop/stats.json").json()["images"]
    again = crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[], max_products=100)
    s2 = crawl_summary(crawl_settings, again)
    assert s2["products_written"] == 0 and s2["products_unchanged"] == 40
    assert httpx.get(f"{shop.url}/_shop/stats.json").json()["images"] == images_before
    _no_duplicates(open_warehouse(crawl_settings))


@pytest.mark.e2e
def test_image_faults_retries_and_layout_fallback(crawl_settings, make_shop):
    shop = make_shop(faults="corrupt=3,not_image=3,bomb=3,missing=3,5xx=1,layout=2", n=9)
    manifest = _manifest(shop)
    run_id = crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[])
    s = crawl_summary(crawl_settings, run_id)
    wh = open_warehouse(crawl_settings)
    got = _galleries(wh)
    expected = {p["sku"]: [(g["position"], g["sha1"] if g["expected_status"] == "ok" else None, g["expected_status"])
                           for g in p["gallery"]] for p in manifest["products"]}
    assert got == expected  # every photo recorded, refused ones with their status, none dropped
    statuses = {}
    for p in manifest["products"]:
        for g in p["gallery"]:
            statuses[g["expected_status"]] = statuses.get(g["expected_status"], 0) + 1
    assert s["images_by_status"] == statuses and {"corrupt", "not_image", "bomb", "missing"} <= set(statuses)
    assert s["retries"] > 0 and s["products_written"] == 9
    assert s["stats"]["shoesearch/layout/dom"] == sum(p["layout_fault"] for p in manifest["products"])
    reasons = wh.query("SELECT status, reason FROM images WHERE status <> 'ok'").to_pylist()
    assert all(r["reason"] for r in reasons)


@pytest.mark.e2e
def test_captcha_stops_cleanly_and_rerun_resumes(crawl_settings, make_shop):
    shop = make_shop(faults="captcha=4", n=12)
    first = crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[])
    s = crawl_summary(crawl_settings, first)
    wh = open_warehouse(crawl_settings)
    assert s["finish_reason"] == "captcha" and s["stats"]["shoesearch/stopped/captcha"] == 1
    assert "captcha" in s["stop_message"]
    kept = _galleries(wh)
    manifest = {p["sku"]: p for p in _manifest(shop)["products"]}
    assert 0 < len(kept) <= 3 and len(kept) == s["products_written"]
    for sku, rows in kept.items():  # no partial products
        assert len(rows) == len(manifest[sku]["gallery"]) and all(r[2] == "ok" for r in rows)
    run = wh.query("SELECT status, message FROM runs WHERE run_id = ?", [first]).to_pylist()[0]
    assert run["status"] == "success" and "captcha" in run["message"]
    shop.state.faults.values.clear()  # the wall lifts; the same crawl resumes
    second = crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[])
    s2 = crawl_summary(crawl_settings, second)
    assert s2["products_resumed"] == len(kept) and s2["products_written"] == 12 - len(kept)
    assert len(_galleries(open_warehouse(crawl_settings))) == 12
    _no_duplicates(open_warehouse(crawl_settings))


@pytest.mark.e2e
def test_login_wall_stops_with_a_stat(crawl_settings, make_shop):
    shop = make_shop(faults="login=2", n=30)
    cat = _manifest(shop)["products"][1]["category_ids"]
    run_id = crawl(crawl_settings, site=shop.url, keywords=[], categories=[cat.split(",")[0]])
    s = crawl_summary(crawl_settings, run_id)
    assert s["finish_reason"] == "login_wall" and s["stats"]["shoesearch/stopped/login_wall"] == 1
    assert s["products_written"] <= 10
    assert len(_galleries(open_warehouse(crawl_settings))) == s["products_written"]


@pytest.mark.e2e
def test_killed_crawl_resumes_without_duplicates(crawl_settings, make_shop):
    shop = make_shop(faults="slow=0.02", n=24)
    code = (
        "import sys; from core.settings import Settings; from tasks.crawl import crawl; "
        "from tests.fixtures_crawl import FAST_CRAWL; "
        "crawl(Settings.load(sys.argv[1], {**FAST_CRAWL, 'crawl.concurrent_requests': 2}), "
        "site=sys.argv[2], keywords=['鞋'], categories=[])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(crawl_settings.home), shop.url], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    written = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            written = open_warehouse(crawl_settings).query("SELECT count(*) n FROM products").to_pylist()[0]["n"]
        except Exception:  # noqa: BLE001 - a batch being renamed into place
            continue
        if written >= 6:
            break
    assert proc.poll() is None and 6 <= written < 24, "the crawl should be killed midway"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    params = crawl_params(crawl_settings, site=shop.url, keywords=["鞋"], categories=[])
    killed = CrawlJob(crawl_settings, params).attempts()
    assert len(killed) == 1
    resumed = crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[])
    wh = open_warehouse(crawl_settings)
    manifest = _manifest(shop)
    assert _galleries(wh) == {p["sku"]: [(g["position"], g["sha1"], "ok") for g in p["gallery"]]
                              for p in manifest["products"]}
    _no_duplicates(wh)
    runs = {r["run_id"]: r for r in wh.query("SELECT run_id, status, input_run_ids FROM runs").to_pylist()}
    assert runs[killed[0]]["status"] == "failed" and runs[resumed]["input_run_ids"] == killed
    assert not CrawlJob(crawl_settings, params).dir.exists()  # finished: the job is closed


def test_a_second_crawl_of_the_same_job_is_refused_while_one_runs(settings):
    from core.errors import ShoesearchError
    from warehouse.store import file_lock

    site = "http://127.0.0.1:9"  # never contacted: the lock is checked first
    job = CrawlJob(settings, crawl_params(settings, site, ["鞋"], [], 5, 1))
    with file_lock(job.dir.with_name(job.dir.name + ".lock")):
        with pytest.raises(ShoesearchError, match="another crawl with the same parameters"):
            crawl(settings, site=site, keywords=["鞋"], categories=[], max_products=5, max_pages=1)


@pytest.mark.e2e
def test_crawl_fetches_nothing_off_the_site(crawl_settings, make_shop):
    """Links to a local file or another host, a redirect off the site, an item page naming another SKU and
    a photo on another host (the shop's escape faults): nothing of them becomes a product or a photo, the
    other host is never contacted, and each is counted. "Another host" is another port of 127.0.0.1:
    with --site the site is one host:port."""
    from collections import Counter

    from crawlers.outcome import shortfall_reason

    shop = make_shop(faults="file_link=6,offsite_link=6,offsite_redirect=6,sku_swap=6,offsite_image=6", n=12)
    manifest = _manifest(shop)
    s = crawl_summary(crawl_settings, crawl(crawl_settings, site=shop.url, keywords=["鞋"], categories=[]))
    wh = open_warehouse(crawl_settings)
    expected = {p["sku"]: [(g["position"], g["sha1"], "ok") for g in p["gallery"]]
                for p in manifest["products"] if p["expected"] == "written"}
    assert _galleries(wh) == expected  # no decoy jd:7007, nothing under a swapped SKU, no photo off the CDN
    titles = [r["title"] for r in wh.query("SELECT title FROM products").to_pylist()]
    assert not [t for t in titles if t.startswith(("[offsite]", "[local file]"))]
    assert "offsite_requests" not in httpx.get(f"{shop.url}/_shop/stats.json").json()  # never contacted
    n = Counter(p["escape"] for p in manifest["products"])
    assert s["offsite_refused"] == {"link": n["file_link"] + n["offsite_link"], "redirect": n["offsite_redirect"],
                                    "image": n["offsite_image"]}
    assert s["parse_failures"] == {"sku_mismatch": n["sku_swap"]}
    assert s["products_written"] == len(expected) == 12 - n["offsite_redirect"] - n["sku_swap"]
    row = s["sources"][0]
    assert (row["refused"], row["parse_failed"]) == (n["offsite_redirect"], n["sku_swap"])
    refused = sum(s["offsite_refused"].values())
    assert f"{refused} off-site URLs refused (image: 2, link: 4, redirect: 2)" in shortfall_reason(s)
