"""Unit tests of the Prefect flows (flows/*.py) and ``python -m shoesearch`` (shoesearch/__main__.py).

Running a flow needs a Prefect server (the e2e set does that): here the flow objects are inspected, the
deployments built, and the crawl summary published with the artifact call captured.
"""

from __future__ import annotations

import importlib
import inspect
import json
import runpy
import sys

import pytest

FLOWS = {  # module: (flow object name, Prefect flow name)
    "flows.crawl": ("crawl_flow", "crawl"),
    "flows.denoise": ("denoise_flow", "denoise"),
    "flows.nightly": ("nightly", "nightly"),
    "flows.train": ("train_flow", "train"),
}


@pytest.mark.parametrize("module", sorted(FLOWS))
def test_each_flow_is_a_prefect_flow_taking_home_and_overrides(module):
    """``flows/__init__``: settings reach a flow as ``home`` + ``overrides`` (what ``flow_settings`` gives)."""
    from prefect import Flow

    attribute, name = FLOWS[module]
    flow = getattr(importlib.import_module(module), attribute)
    assert isinstance(flow, Flow) and flow.name == name
    params = flow.parameters.properties
    assert {"home", "overrides"} <= set(params)
    defaults = {k: p.default for k, p in inspect.signature(flow.fn).parameters.items()}
    assert defaults["home"] is None and defaults["overrides"] is None  # optional: the default home and settings


def test_flow_parameters_are_what_their_callers_pass(settings):
    """The nightly flow calls the denoise flow with ``flow_settings`` plus ``embed_run_id``; the CLI passes a
    crawl flow its site and limits."""
    from flows import flow_settings
    from flows.crawl import crawl_flow
    from flows.denoise import denoise_flow
    from flows.train import train_flow

    denoise_params = set(denoise_flow.parameters.properties)
    assert set(flow_settings(settings)) | {"embed_run_id"} <= denoise_params
    assert {"site", "keywords", "categories", "max_products", "max_pages"} <= set(crawl_flow.parameters.properties)
    assert train_flow.parameters.properties["photos"].get("default") == "auto"


def test_local_timezone_prefers_tz_then_the_system_zone(monkeypatch):
    from flows.serve import local_timezone

    monkeypatch.setenv("TZ", ":Asia/Shanghai")
    assert local_timezone() == "Asia/Shanghai"
    monkeypatch.delenv("TZ")
    zone = local_timezone()
    assert zone and " " not in zone and not zone.startswith(":")


def test_deployments_carry_the_home_the_set_overrides_and_the_cron(settings):
    from flows.serve import deployments

    settings.set("schedule.nightly_cron", "15 3 * * *")
    settings.set("schedule.timezone", "Asia/Shanghai")
    nightly, manual = deployments(settings, {"denoise.threshold": 0.9})
    assert (nightly.flow_name, nightly.name, manual.flow_name, manual.name) == ("nightly", "nightly", "denoise",
                                                                                "manual")
    expected = {"home": str(settings.home), "overrides": {"denoise.threshold": 0.9}}
    assert nightly.parameters == expected == manual.parameters
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 3 * * *", "Asia/Shanghai")
    assert manual.schedules == []


def test_deployments_without_overrides_pass_an_empty_dict(settings):
    from flows.serve import deployments

    for deployment in deployments(settings):
        assert deployment.parameters == {"home": str(settings.home), "overrides": {}}


def test_crawl_summary_is_published_as_one_markdown_artifact(settings, monkeypatch):
    import flows.crawl as crawl_module
    from crawlers.outcome import source_rows

    run_id = "crawl-20260101T000000-abcdef"
    per_source = {"pages": 2, "listed": 4, "new": 4, "written": 3, "unchanged": 1, "parse_failed": 1}
    raw = {f"shoesearch/source/keyword:跑步鞋/{counter}": n for counter, n in per_source.items()}
    summary = {  # what the stats-file extension and the crawl task write (crawlers/extensions.py)
        "finish_reason": "finished", "products_written": 3, "products_unchanged": 1, "products_resumed": 0,
        "images_written": 9, "pages": 2, "retries": 1, "duration_s": 4.2, "images_by_status": {"ok": 9},
        "parse_failures": {"item": 1}, "params": {"site": "http://127.0.0.1:8765"}, "failure": None,
        "stop_message": None, "products_listed": 4, "max_products": 10, "max_pages": 5,
        "sources": source_rows(raw, ["跑步鞋"], []),
    }
    path = settings.crawl_dir / "runs" / f"{run_id}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summary))
    published = []
    monkeypatch.setattr(crawl_module, "create_markdown_artifact", lambda **kw: published.append(kw))
    assert crawl_module.publish_crawl_summary(settings, run_id) == run_id
    (artifact,) = published
    assert artifact["key"] == "crawl-summary" and run_id in artifact["description"]
    markdown = artifact["markdown"]
    assert "site: `http://127.0.0.1:8765`" in markdown and "listings ran out" in markdown
    assert "| products written | 3 |" in markdown and "| photos: ok | 9 |" in markdown
    assert "| parse failures: item | 1 |" in markdown and "| keyword 跑步鞋 |" in markdown


def test_crawl_summary_of_an_unknown_run_is_refused(settings):
    from core.errors import ShoesearchError
    from flows.crawl import publish_crawl_summary

    with pytest.raises(ShoesearchError, match="no crawl summary"):
        publish_crawl_summary(settings, "crawl-20260101T000000-000000")


def test_python_dash_m_shoesearch_runs_the_cli(monkeypatch, capsys):
    """``python -m shoesearch`` (run here as ``-m`` runs it) exits with ``shoesearch.cli.main``'s code."""
    from shoesearch import __version__

    for argv, code in ((["--version"], 0), ([], 2)):  # no command: the help, exit 2
        monkeypatch.setattr(sys, "argv", ["shoesearch", *argv])
        with pytest.raises(SystemExit) as exited:
            runpy.run_module("shoesearch", run_name="__main__", alter_sys=True)
        assert exited.value.code == code
    out = capsys.readouterr().out
    assert out.startswith(f"shoesearch {__version__}\nusage: shoesearch")
    assert all(f"\n    {name} " in out for name in ("crawl", "denoise", "train"))  # the commands are listed


def test_flow_runs_are_named_after_what_they_do_and_their_home(tmp_path):
    """``flows.describe``: the names flow runs get (the real run's name and tags: tests/test_train.py)."""
    import datetime as dt

    from flows import describe, home_tags

    home = str(tmp_path / "shop-a")
    day = dt.date(2026, 12, 6)
    assert describe("nightly", {"home": home}, today=day) == "nightly-shop-a-2026-12-06"
    assert describe("denoise", {"home": home, "threshold": 1.1}) == "denoise-shop-a-t1.1"
    assert describe("denoise", {"home": home, "overrides": {"denoise.threshold": 1.1, "denoise.drop_rate": 0.2}}) \
        == "denoise-shop-a-drop0.2"  # a drop rate calibrates the threshold: it is what the run used
    assert describe("denoise", {"home": home, "overrides": {"denoise.threshold": 0.9}}) == "denoise-shop-a-t0.9"
    assert describe("crawl", {"home": home, "site": "http://127.0.0.1:8765/"}) == "crawl-shop-a-127.0.0.1:8765"
    assert describe("crawl", {"home": home}) == "crawl-shop-a-jd"
    assert describe("train", {"home": home, "photos": "raw"}) == "train-shop-a-raw"
    assert home_tags(home) == ["home:shop-a"]


def test_deployments_are_tagged_with_the_home(settings):
    from flows.serve import deployments

    for deployment in deployments(settings):
        assert deployment.tags == [f"home:{settings.home.name}"]
