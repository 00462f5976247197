"""Unit tests of how a crawl reports and exits: the stats-file extension (crawlers/extensions.py), the
``scrapy crawl`` command that exits non-zero when no site was reached (crawlers/commands/crawl.py) and the
project settings a plain ``scrapy crawl jd`` runs with (crawlers/settings.py)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from scrapy import signals

SITE = "http://127.0.0.1:8765"
KEYWORDS = ["跑步鞋", "靴子"]
CATEGORY = "1318,12099,9756"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SHOESEARCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_crawler(home: Path, stats_file: Path | None):
    """A crawler with the JD spider and the stats-file extension connected to its signals."""
    from scrapy.utils.test import get_crawler

    from crawlers.extensions import CrawlStatsFile
    from crawlers.spiders.jd import JdSpider

    cfg = {"site": SITE, "keywords": KEYWORDS, "categories": [CATEGORY], "max_products": 50, "max_pages": 2}
    crawler = get_crawler(JdSpider, {"SHOESEARCH_HOME": str(home), "SHOESEARCH_CRAWL": json.dumps(cfg),
                                     "SHOESEARCH_STATS_FILE": str(stats_file) if stats_file else None})
    crawler.spider = JdSpider.from_crawler(crawler)
    return crawler, CrawlStatsFile.from_crawler(crawler)


def close(crawler, reason: str = "finished") -> None:
    crawler.signals.send_catch_log(signals.spider_closed, spider=crawler.spider, reason=reason)


def test_stats_file_summarises_the_crawl_per_source_when_the_spider_closes(home, tmp_path):
    path = tmp_path / "stats.json"
    crawler, _ = make_crawler(home, path)
    stats = crawler.stats
    for key, value in {"shoesearch/pages/search": 2, "shoesearch/pages/list": 1, "response_received_count": 9,
                       f"shoesearch/source/keyword:{KEYWORDS[0]}/listed": 5,
                       f"shoesearch/source/keyword:{KEYWORDS[0]}/new": 4,
                       f"shoesearch/source/category:{CATEGORY}/more_pages": 1,
                       "shoesearch/products/written": 4, "shoesearch/images/status/ok": 11,
                       "shoesearch/images/status/missing": 2, "shoesearch/parse_failed/item": 1,
                       "shoesearch/offsite/link": 3, "shoesearch/capped/photos": 6,
                       "shoesearch/request_failed/refused/HTTP 500 from 127.0.0.1:8765": 2}.items():
        stats.set_value(key, value)
    close(crawler)
    summary = json.loads(path.read_text(encoding="utf-8"))
    assert summary["finish_reason"] == "finished" and summary["failure"] is None
    assert (summary["pages"], summary["responses"], summary["products_written"]) == (3, 9, 4)
    assert (summary["keywords"], summary["categories"]) == (KEYWORDS, [CATEGORY])
    assert (summary["max_products"], summary["max_pages"]) == (50, 2)
    assert [(r["kind"], r["name"], r["listed"], r["new"], r["more_pages"]) for r in summary["sources"]] == [
        ("keyword", KEYWORDS[0], 5, 4, False), ("keyword", KEYWORDS[1], 0, 0, False),
        ("category", CATEGORY, 0, 0, True)]
    assert summary["images_by_status"] == {"ok": 11, "missing": 2}
    assert summary["parse_failures"] == {"item": 1}
    assert (summary["offsite_refused"], summary["capped"]) == ({"link": 3}, {"photos": 6})
    assert summary["requests_failed"] == {"unreachable": {}, "refused": {"HTTP 500 from 127.0.0.1:8765": 2}}
    assert summary["duration_s"] >= 0 and summary["stats"]["shoesearch/pages/search"] == 2


def test_a_crawl_that_parsed_no_page_is_marked_failed_in_its_stats(home, tmp_path):
    from crawlers.outcome import FAILURE_STAT

    path = tmp_path / "stats.json"
    crawler, _ = make_crawler(home, path)
    crawler.stats.set_value("shoesearch/request_failed/unreachable/connection refused by 127.0.0.1:8765", 4)
    close(crawler)
    failure = crawler.stats.get_value(FAILURE_STAT)
    assert failure.startswith("crawl reached no site") and "connection refused by 127.0.0.1:8765" in failure
    assert json.loads(path.read_text(encoding="utf-8"))["failure"] == failure


def test_without_a_stats_file_setting_nothing_is_written(home, tmp_path):
    crawler, extension = make_crawler(home, None)
    close(crawler)
    assert extension.path is None and list(tmp_path.glob("*.json")) == []


def test_stop_message_of_the_spider_is_in_the_summary(home):
    crawler, extension = make_crawler(home, None)
    crawler.spider.stop_message = "JD answered the price API with a captcha"
    summary = extension.summary(crawler.spider, "captcha", {"shoesearch/stopped/captcha": 1})
    assert summary["stop_message"] == crawler.spider.stop_message and summary["failure"] is None


class FakeProcess:
    """Stands in for Scrapy's CrawlerProcess (the reactor is not started in unit tests)."""

    def __init__(self, failure: str | None = None, bootstrap_failed: bool = False):
        self.failure, self.bootstrap_failed, self.calls = failure, bootstrap_failed, []
        self.crawler = SimpleNamespace(stats=SimpleNamespace(get_value=lambda key: failure))

    def create_crawler(self, name):
        self.calls.append(("create", name))
        return self.crawler

    def crawl(self, crawler, **spargs):
        self.calls.append(("crawl", spargs))

    def start(self):
        self.calls.append(("start",))


def run_command(process: FakeProcess, args: list[str]):
    from crawlers.commands.crawl import Command

    command = Command()
    command.crawler_process = process
    command.run(args, SimpleNamespace(spargs={"k": "v"}))
    return command


@pytest.mark.parametrize("failure, bootstrap_failed, exitcode", [
    (None, False, 0), ("crawl reached no site: connection refused", False, 1), (None, True, 1)])
def test_scrapy_crawl_exits_non_zero_when_no_site_was_reached(capsys, failure, bootstrap_failed, exitcode):
    process = FakeProcess(failure, bootstrap_failed)
    command = run_command(process, ["jd"])
    assert command.exitcode == exitcode
    assert process.calls == [("create", "jd"), ("crawl", {"k": "v"}), ("start",)]
    err = capsys.readouterr().err
    assert (failure in err) if failure else err == ""


def test_scrapy_crawl_needs_exactly_one_spider_name():
    from scrapy.exceptions import UsageError

    for args in ([], ["jd", "other"]):
        with pytest.raises(UsageError):
            run_command(FakeProcess(), args)


def test_the_project_replaces_scrapys_crawl_command():
    from scrapy.cmdline import _get_commands_from_module

    from crawlers.commands.crawl import Command

    assert isinstance(_get_commands_from_module("crawlers.commands", True)["crawl"], Command)


def test_project_settings_follow_the_homes_toml_and_wire_our_classes(home):
    from scrapy.settings import Settings as ScrapySettings
    from scrapy.spiderloader import SpiderLoader
    from scrapy.utils.misc import load_object

    home.mkdir(parents=True)
    (home / "shoesearch.toml").write_text('[crawl]\nuser_agent = "unit-test-agent"\nmax_page_bytes = 777777\n')
    project = importlib.reload(importlib.import_module("crawlers.settings"))
    assert project.USER_AGENT == "unit-test-agent" and project.DOWNLOAD_MAXSIZE == 777777
    assert project.SHOESEARCH_HOME == str(home)
    wired = [*project.ITEM_PIPELINES, *project.EXTENSIONS, *project.DOWNLOADER_MIDDLEWARES]
    ours = [name for name in wired if name.startswith("crawlers.")]
    assert {"crawlers.pipelines.GalleryPipeline", "crawlers.pipelines.WarehousePipeline",
            "crawlers.extensions.CrawlStatsFile"} <= set(ours)
    assert all(isinstance(load_object(name), type) for name in ours)  # every class we wire exists
    assert project.ITEM_PIPELINES["crawlers.pipelines.GalleryPipeline"] < \
        project.ITEM_PIPELINES["crawlers.pipelines.WarehousePipeline"]
    loader = SpiderLoader.from_settings(ScrapySettings({"SPIDER_MODULES": project.SPIDER_MODULES}))
    assert loader.load("jd").__module__ == "crawlers.spiders.jd"
    assert importlib.import_module(project.COMMANDS_MODULE).__name__ == "crawlers.commands"
