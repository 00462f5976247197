"""Prefect flow ``crawl``: run the spider (in a subprocess) and publish a summary artifact."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from core.settings import Settings
from flows import label_run, run_name
from tasks.crawl import crawl_summary, crawl_task


def publish_crawl_summary(settings: Settings, run_id: str) -> str:
    """A markdown artifact with the crawl's counts; returns ``run_id`` (the dataset version)."""
    s = crawl_summary(settings, run_id)
    rows = [
        ("finish reason", s["finish_reason"]), ("products written", s["products_written"]),
        ("products unchanged (skipped)", s["products_unchanged"]),
        ("products done by earlier attempts", s["products_resumed"]), ("photos written", s["images_written"]),
        ("pages", s["pages"]), ("retries", s["retries"]), ("duration (s)", s["duration_s"]),
    ]
    rows += [(f"photos: {k}", v) for k, v in sorted(s["images_by_status"].items())]
    rows += [(f"parse failures: {k}", v) for k, v in sorted(s["parse_failures"].items())]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    from crawlers.outcome import shortfall_reason, sources_markdown

    sources = f"\n\n## By keyword and category\n\n{sources_markdown(s)}" if s.get("sources") else ""
    create_markdown_artifact(
        key="crawl-summary", description=f"crawl {run_id}",
        markdown=(f"# Crawl {run_id}\n\nsite: `{s['params']['site'] or 'JD'}`\n\n**Outcome:** {shortfall_reason(s)}"
                  f"\n\n| | |\n|---|---|\n{table}{sources}"),
    )
    return run_id


publish_crawl_summary_task = task(publish_crawl_summary, name="publish-crawl-summary", cache_policy=NO_CACHE)


@flow(name="crawl", log_prints=True, flow_run_name=run_name("crawl"))
def crawl_flow(home: str | None = None, overrides: dict | None = None, site: str | None = None,
               keywords: list[str] | None = None, categories: list[str] | None = None,
               max_products: int | None = None, max_pages: int | None = None) -> str:
    """Crawl JD (or a demo shop at ``site``) into products/images; returns the crawl run id."""
    settings = Settings.load(home, overrides)
    label_run(settings)
    run_id = crawl_task(settings, site=site, keywords=keywords, categories=categories,
                        max_products=max_products, max_pages=max_pages)
    return publish_crawl_summary_task(settings, run_id)
