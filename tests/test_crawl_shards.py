"""A crawl sharded over Scrapy processes (``crawl.shards``), over real HTTP against the demo shop with the real
``scrapy crawl jd`` subprocesses: the same products and photos as one process, each SKU written once although
the shards list it under different keywords/categories, ``max_products`` a total, and a shard killed with
SIGKILL resumed alone by the rerun."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from core.errors import ShoesearchError
from core.settings import CrawlSettings, Settings
from tasks.crawl import CrawlJob, crawl, crawl_params, crawl_summary
from tests.fixtures_crawl import FAST_CRAWL, SHOP_PAGE_SIZE, SHOP_PRODUCTS
from warehouse import open_warehouse

# The default keywords and categories: dealt over 2 shards, 男鞋 (shard 0) and 11729,11730 (shard 1) list the
# same 26 products, so most SKUs are listed by both shards.
DEFAULTS = CrawlSettings()


def _settings(home, shards: int, **extra) -> Settings:
    return Settings.load(home=home, overrides={**FAST_CRAWL, "crawl.shards": shards, **extra})


def _galleries(settings) -> dict[str, list]:
    rows = open_warehouse(settings).query(
        """SELECT p.sku, i.position, i.sha1, i.status FROM products_current p JOIN images_current i
           USING (product_id) ORDER BY p.sku, i.position""").to_pylist()
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r["sku"], []).append((r["position"], r["sha1"], r["status"]))
    return out


def _written_once(settings) -> None:
    wh = open_warehouse(settings)
    assert wh.query("SELECT product_id, count(*) n FROM products GROUP BY 1 HAVING n > 1").num_rows == 0
    assert wh.query("SELECT image_id, count(*) n FROM images GROUP BY 1 HAVING n > 1").num_rows == 0
    for row in wh.query("SELECT path FROM images WHERE status = 'ok'").to_pylist():
        assert (settings.images_dir / row["path"]).is_file()


@pytest.fixture(scope="module")
def shop(shop_catalog):
    from demo_shop.server import DemoShop, load_catalog

    shop = DemoShop(load_catalog(shop_catalog)[:SHOP_PRODUCTS], page_size=SHOP_PAGE_SIZE,
                    source=str(shop_catalog)).start()
    yield shop
    shop.stop()


@pytest.fixture(scope="module")
def unsharded(shop, tmp_path_factory, shop_catalog) -> dict[str, list]:
    """What one Scrapy process writes from the shop (default keywords and categories): the reference."""
    settings = _settings(tmp_path_factory.mktemp("one") / "home", 1)
    s = crawl_summary(settings, crawl(settings, site=shop.url, max_products=100))
    assert s["finish_reason"] == "finished" and "shards" not in s
    galleries = _galleries(settings)
    assert len(galleries) == SHOP_PRODUCTS and all(r[2] == "ok" for g in galleries.values() for r in g)
    return galleries


@pytest.mark.e2e
def test_two_shards_write_what_one_process_writes_each_sku_once(shop, unsharded, tmp_path):
    settings = _settings(tmp_path / "home", 2)
    run_id = crawl(settings, site=shop.url, max_products=100)
    assert _galleries(settings) == unsharded  # the same products, the same photos by sha1, in gallery order
    _written_once(settings)
    s = crawl_summary(settings, run_id)
    assert s["finish_reason"] == "finished" and s["products_written"] == SHOP_PRODUCTS
    assert [(sh["index"], sh["finish_reason"], sh["carried"]) for sh in s["shards"]] == [
        (0, "finished", False), (1, "finished", False)]
    # Both shards list the same products: which one claims a SKU is a race (under load one may claim them all),
    # so only the total is fixed; each SKU once is checked above and in the sources below.
    assert sum(sh["products_written"] for sh in s["shards"]) == SHOP_PRODUCTS
    assert [sh["keywords"] + sh["categories"] for sh in s["shards"]] == [
        DEFAULTS.keywords[0::2] + DEFAULTS.categories[1::2], DEFAULTS.keywords[1::2] + DEFAULTS.categories[0::2]]
    rows = {r["name"]: r for r in s["sources"]}
    assert sum(r["new"] for r in rows.values()) == SHOP_PRODUCTS == s["products_listed"]  # claimed once
    assert rows["男鞋"]["duplicates"] + rows["11729,11730"]["duplicates"] >= 26  # each listed by both shards
    wh = open_warehouse(settings)
    runs = wh.query("SELECT run_id, status, message, parameters FROM runs").to_pylist()
    assert [r["run_id"] for r in runs] == [run_id] and runs[0]["status"] == "success"  # one run
    assert "shard 0 finished" in runs[0]["message"] and "shard 1 finished" in runs[0]["message"]
    assert f"listings ran out: {SHOP_PRODUCTS} products listed" in runs[0]["message"]
    assert json.loads(runs[0]["parameters"])["shards"] == 2
    assert {r["run_id"] for r in wh.query("SELECT DISTINCT run_id FROM products").to_pylist()} == {run_id}
    for shard in (0, 1):
        assert (settings.crawl_dir / "logs" / f"{run_id}-shard{shard}.log").is_file()


@pytest.mark.e2e
def test_shards_as_ray_tasks_share_max_products_as_a_total(shop, tmp_path, monkeypatch):
    """``compute.engine = "ray"``: each shard's spider is run by a Ray task (a local cluster here); the claims
    still make ``--max-products`` a total over the shards."""
    import ray

    import tasks.crawl as crawl_module
    from crawlers.launch import RaySpider
    from crawlers.outcome import shortfall_reason

    started = []

    class CountedRaySpider(RaySpider):
        def __init__(self, *args):
            started.append(args[1])
            super().__init__(*args)

    monkeypatch.setattr(crawl_module, "RaySpider", CountedRaySpider)
    settings = _settings(tmp_path / "home", 2, **{"compute.engine": "ray", "ray.num_cpus": 2})
    try:
        s = crawl_summary(settings, crawl(settings, site=shop.url, max_products=10))
    finally:
        ray.shutdown()
    assert len(started) == 2  # both shards ran on Ray
    assert s["products_written"] == 10 == len(_galleries(settings))
    assert sum(r["new"] for r in s["sources"]) == 10 and s["stats"]["shoesearch/products/over_limit"] > 0
    assert shortfall_reason(s).startswith("reached --max-products 10: 10 written")
    _written_once(settings)


def _claimed(job) -> dict[int, int]:
    import sqlite3

    try:
        with sqlite3.connect(job.claims_path, timeout=5) as con:
            return dict(con.execute("SELECT shard, count(*) FROM claims GROUP BY shard").fetchall())
    except sqlite3.Error:
        return {}


def _midway_shard(job, deadline_s: float = 60):
    """``(shard, pid)`` of the first shard that committed 3 products and still has 6 claimed ones to do, so a
    kill lands mid-crawl whichever shard won more of the claims."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        time.sleep(0.05)
        claimed = _claimed(job)
        for shard in job.shards:
            try:
                written = json.loads(shard.progress_path.read_text())["products_written"]
                pid = int(shard.pid_path.read_text())
            except (FileNotFoundError, ValueError, KeyError):
                continue
            if written >= 3 and claimed.get(shard.index, 0) - written >= 6:
                return shard, pid
    raise AssertionError("no shard was ever midway through its products")


@pytest.mark.e2e
def test_a_killed_shard_is_resumed_alone_and_nothing_is_written_twice(make_shop, unsharded, tmp_path):
    shop = make_shop(faults="slow=0.03")  # slow enough to kill a shard midway
    settings = _settings(tmp_path / "home", 2, **{"crawl.concurrent_requests": 4})
    job = CrawlJob(settings, crawl_params(settings, site=shop.url, max_products=100))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(crawl, settings, site=shop.url, max_products=100)
        victim, pid = _midway_shard(job)
        os.kill(pid, signal.SIGKILL)
        shop.state.faults.values.clear()  # the other shard may finish at full speed
        with pytest.raises(ShoesearchError, match="1 of 2 shards died without finishing"):
            first.result(timeout=120)
    other = job.shards[1 - victim.index]
    (killed,) = job.attempts()
    assert victim.stats(killed) is None, "the shard was killed before it finished"
    assert other.done_by() == killed and victim.done_by() is None
    wh = open_warehouse(settings)
    written_by_killed = wh.query("SELECT count(*) n FROM products").to_pylist()[0]["n"]
    assert written_by_killed < SHOP_PRODUCTS
    served_before = httpx.get(f"{shop.url}/_shop/stats.json").json()
    settings = _settings(tmp_path / "home", 2)  # full speed now: the same crawl job (same site, sources, limits)
    resumed = crawl(settings, site=shop.url, max_products=100)
    assert _galleries(settings) == unsharded  # the product set of one process
    _written_once(settings)  # no product, no photo row written twice
    s = crawl_summary(settings, resumed)
    assert [(sh["index"], sh["carried"], sh["attempt"]) for sh in s["shards"]] == [
        (i, i == other.index, killed if i == other.index else resumed) for i in (0, 1)]
    logs = settings.crawl_dir / "logs"
    assert not (logs / f"{resumed}-shard{other.index}.log").exists()  # the finished shard did not run again
    assert (logs / f"{resumed}-shard{victim.index}.log").is_file()
    assert s["finish_reason"] == "finished"
    assert s["products_written"] + s["products_resumed"] == SHOP_PRODUCTS
    assert s["products_written"] == SHOP_PRODUCTS - written_by_killed
    served = httpx.get(f"{shop.url}/_shop/stats.json").json()
    assert served["item_pages"] - served_before["item_pages"] == s["products_written"]  # only what was left
    runs = {r["run_id"]: r for r in open_warehouse(settings).query("SELECT * FROM runs").to_pylist()}
    assert runs[killed]["status"] == "failed" and f"shard {victim.index} (" in runs[killed]["message"]
    assert runs[resumed]["status"] == "success" and runs[resumed]["input_run_ids"] == [killed]
    assert not job.dir.exists()  # finished: the job is closed


def test_a_wall_met_by_one_shard_stops_the_others_cleanly(tmp_path):
    """A captcha is the site's answer to the crawl: the other shards get SIGTERM (Scrapy's clean stop, their JOBDIR
    kept for the rerun); the merged summary says why, per shard."""
    from crawlers.launch import supervise
    from crawlers.shards import merge_summaries, shards_text

    class Spider:
        def __init__(self, code):
            self.code, self.stopped, self.closed = code, False, False

        def poll(self):
            return self.code

        def stop(self):
            self.stopped, self.code = True, 0 if self.code is None else self.code

        def close(self):
            self.closed = True

    walled, running = Spider(0), Spider(None)
    stats = {0: tmp_path / "s0.json", 1: tmp_path / "s1.json"}
    stats[0].write_text(json.dumps({"finish_reason": "captcha"}))
    codes = supervise({0: walled, 1: running}, stats, {0: tmp_path / "p0", 1: tmp_path / "p1"},
                      lambda *a: None, 0.01)
    assert codes == {0: 0, 1: 0} and running.stopped and walled.closed and running.closed

    def summary(reason, written, stop=None):
        return {"finish_reason": reason, "stop_message": stop, "duration_s": 1.0, "products_written": written,
                "images_written": 0, "stats": {"shoesearch/products/written": written, "shoesearch/pages/search": 1}}

    params = {"keywords": ["a", "b"], "categories": [], "max_products": 10, "max_pages": 1}
    parts = [{"index": 0, "keywords": ["a"], "categories": [], "attempt": "r1", "carried": False,
              "summary": summary("captcha", 2, "JD answered the price API with a captcha")},
             {"index": 1, "keywords": ["b"], "categories": [], "attempt": "r1", "carried": False,
              "summary": summary("shutdown", 3)}]
    merged = merge_summaries(parts, params, listed=6)
    assert merged["finish_reason"] == "captcha" and merged["products_written"] == 5
    assert merged["stop_message"].startswith("JD answered") and merged["products_listed"] == 6
    assert shards_text(merged) == "shard 0 captcha: 2 written, shard 1 shutdown: 3 written"
    parts[0].update(carried=True, summary=summary("finished", 2))
    parts[1]["summary"] = None  # died without stats
    merged = merge_summaries(parts, params, listed=6)
    assert (merged["finish_reason"], merged["products_written"], merged["products_resumed"]) == ("killed", 0, 2)
    assert shards_text(merged) == "shard 0 finished (by r1), shard 1 killed (no stats)"
