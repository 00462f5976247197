"""The crawl step: runs ``scrapy crawl jd`` in a subprocess and records the run.

Twisted's reactor cannot restart inside one process, so the spider always runs in a child
process (``python -m scrapy crawl jd -s ...``). This task opens the ``crawl`` run, passes its run
id to the child, which commits complete products (each with all its photo rows) every
``crawl.commit_every`` products, and reads the stats file the child writes when it closes.

Crash and resume: a crawl job is identified by what it crawls (site, keywords, categories,
limits) and kept in ``<crawl_dir>/jobs/<key>/`` until it finishes. Rows committed by an
interrupted attempt stay (a product is never half-visible: it and its photos are one commit).
Rerunning the same crawl resumes: the new run lists the earlier attempts as inputs, marks them
failed ("interrupted"), and the spider skips every SKU they already wrote, so no product is
written twice. Scrapy's ``JOBDIR`` keeps the request queue across a clean stop (captcha, login
wall, Ctrl-C); after a hard kill its files may be inconsistent, so it is discarded and the
listings are re-walked (cheap) while the warehouse stays the record of what is done.

Outcome: the stats file says per keyword/category what was listed, written, duplicated or failed,
and why the crawl ended below ``--max-products`` (``crawlers/outcome.py``). A crawl that parsed no
listing page at all (dead port, unknown host, no network) raises one line naming the cause (the run
is recorded failed; the spider process exits 1 then, see ``crawlers/commands/crawl.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import ShoesearchError
from core.files import atomic_write_text
from crawlers.config import scrapy_settings
from crawlers.jdsite import SiteMap
from crawlers.outcome import shortfall_reason
from warehouse import open_warehouse, start_run
from warehouse.locks import file_lock
from warehouse.runs import code_version

REPO_ROOT = Path(__file__).resolve().parent.parent
# JOBDIR state is consistent after these (a clean stop: the same crawl resumes from it)
CLEAN_REASONS = ("finished", "captcha", "login_wall", "robots_5xx", "robots_unreachable", "shutdown")
CHILD_STOP_TIMEOUT_S = 30  # grace for the spider to close cleanly before it is killed
LOG_TAIL_CHARS = 3000  # of the spider's log, quoted when it fails


def _logger():
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow run
        return logging.getLogger("shoesearch.crawl")


def crawl_params(settings, site=None, keywords=None, categories=None, max_products=None, max_pages=None) -> dict:
    """The crawl's effective parameters (arguments win over ``settings.crawl``), validated.

    What to crawl is all or nothing: given ``keywords`` and/or ``categories`` (not None) are the whole
    crawl (``--keyword K`` alone crawls only K); ``crawl.keywords``/``crawl.categories`` apply only when
    neither is given.
    """
    c = settings.crawl
    if keywords is None and categories is None:
        keywords, categories = c.keywords, c.categories
    params = {
        "site": (site if site is not None else c.site) or "",
        "keywords": [k.strip() for k in keywords or [] if k.strip()],
        "categories": [k.strip() for k in categories or [] if k.strip()],
        "max_products": int(max_products if max_products is not None else c.max_products),
        "max_pages": int(max_pages if max_pages is not None else c.max_pages),
    }
    try:
        SiteMap(params["site"] or None)
    except ValueError as exc:
        raise ShoesearchError(str(exc)) from None
    if not params["keywords"] and not params["categories"]:
        raise ShoesearchError("nothing to crawl: give --keyword and/or --category (or set crawl.keywords)")
    for cat in params["categories"]:
        if not all(part.isdigit() for part in cat.split(",")):
            raise ShoesearchError(f"category {cat!r} is not a JD category id like 1318,12099,9756")
    if params["max_products"] < 1 or params["max_pages"] < 1:
        raise ShoesearchError("max products and max pages must be at least 1")
    return params


class CrawlJob:
    """The files of one crawl job (same params) until it finishes: attempts, JOBDIR, stats."""

    def __init__(self, settings, params: dict):
        key = hashlib.sha1(json.dumps(params, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]
        self.dir = settings.crawl_dir / "jobs" / key
        self.state_path = self.dir / "job.json"
        self.scrapy_dir = self.dir / "scrapy"
        self.params = params

    def attempts(self) -> list[str]:
        if not self.state_path.exists():
            return []
        return list(json.loads(self.state_path.read_text())["attempts"])

    def stats_path(self, run_id: str) -> Path:
        return self.dir / f"stats-{run_id}.json"

    def ended_cleanly(self, run_id: str) -> bool:
        path = self.stats_path(run_id)
        return path.exists() and json.loads(path.read_text()).get("finish_reason") in CLEAN_REASONS

    def begin(self, run_id: str) -> None:
        attempts = self.attempts()
        if attempts and not self.ended_cleanly(attempts[-1]):
            shutil.rmtree(self.scrapy_dir, ignore_errors=True)
        atomic_write_text(self.state_path, json.dumps({"params": self.params, "attempts": attempts + [run_id]},
                                                      ensure_ascii=False))

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _mark_interrupted(wh, run_ids: list[str], resumed_by: str) -> None:
    """Close the log entry of earlier attempts that were killed while ``running``."""
    if not run_ids:
        return
    marks = ",".join("?" for _ in run_ids)
    rows = wh.query(f"SELECT * FROM runs WHERE run_id IN ({marks}) AND status = 'running'", run_ids).to_pylist()
    now = datetime.now(timezone.utc)
    for row in rows:
        row.update(status="failed", finished_at=now, recorded_at=now,
                   message=f"interrupted; its committed products are kept and {resumed_by} resumed it")
        wh.write(row["run_id"], {"runs": [row]})


def _scrapy_command(settings, run_id: str, job: CrawlJob, done_runs: list[str], params: dict) -> list[str]:
    settings_for_child = dict(scrapy_settings(settings))
    crawl = json.loads(settings_for_child["SHOESEARCH_CRAWL"])
    crawl.update(params)
    settings_for_child["SHOESEARCH_CRAWL"] = json.dumps(crawl, ensure_ascii=False)
    settings_for_child.update({
        "SHOESEARCH_RUN_ID": run_id,
        "SHOESEARCH_DONE_RUNS": json.dumps(done_runs),
        "SHOESEARCH_STATS_FILE": str(job.stats_path(run_id)),
        "SHOESEARCH_PROGRESS_FILE": str(job.dir / "progress.json"),
        "JOBDIR": str(job.scrapy_dir),
        "LOG_FILE": str(settings.crawl_dir / "logs" / f"{run_id}.log"),
        "LOG_FILE_APPEND": False,
    })
    cmd = [sys.executable, "-m", "scrapy", "crawl", "jd"]
    for key, value in settings_for_child.items():
        cmd += ["-s", f"{key}={value}"]
    return cmd


def _run_spider(settings, cmd: list[str], job: CrawlJob, run_id: str) -> dict:
    log = _logger()
    log_path = settings.crawl_dir / "logs" / f"{run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCRAPY_SETTINGS_MODULE": "crawlers.settings", "SHOESEARCH_HOME": str(settings.home)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    progress_path = job.dir / "progress.json"
    with open(job.dir / f"output-{run_id}.txt", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        last = None
        try:
            while proc.poll() is None:
                time.sleep(min(1.0, settings.crawl.progress_every_s))
                if progress_path.exists():
                    text = progress_path.read_text()
                    if text != last:
                        last = text
                        p = json.loads(text)
                        log.info("crawl %s: %d products written, %d pages", run_id, p["products_written"], p["pages"])
        finally:  # cancelled or interrupted: never leave the spider running on its own
            if proc.poll() is None:
                proc.terminate()  # Scrapy stops cleanly on SIGTERM (JOBDIR stays resumable)
                try:
                    proc.wait(timeout=CHILD_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    stats_path = job.stats_path(run_id)
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else None
    if stats is not None and stats.get("failure"):
        return stats  # the spider ran and says why it reached nothing (it exits 1 then)
    if proc.returncode != 0 or stats is None:
        tail = (log_path.read_text(errors="replace") if log_path.exists() else "")[-LOG_TAIL_CHARS:]
        tail += (job.dir / f"output-{run_id}.txt").read_text(errors="replace")[-LOG_TAIL_CHARS:]
        raise ShoesearchError(f"the spider exited with code {proc.returncode} without finishing; "
                              f"log: {log_path}\n{tail}")
    return stats


def crawl(settings, site: str | None = None, keywords: list[str] | None = None,
          categories: list[str] | None = None, max_products: int | None = None,
          max_pages: int | None = None) -> str:
    """Crawl JD (or ``site``) into ``products``/``images``; returns the crawl's run id."""
    params = crawl_params(settings, site, keywords, categories, max_products, max_pages)
    job = CrawlJob(settings, params)
    lock = job.dir.with_name(job.dir.name + ".lock")  # beside the job: it outlives job.finish()
    try:
        with file_lock(lock, blocking=False):
            return _crawl_job(settings, params, job)
    except BlockingIOError:
        raise ShoesearchError(f"another crawl with the same parameters is running (job {job.dir.name}); "
                              "wait for it to finish, or change --keyword/--category/--max-products") from None


def _crawl_job(settings, params: dict, job: "CrawlJob") -> str:
    earlier = job.attempts()
    wh = open_warehouse(settings)
    with start_run(wh, step="crawl", params=params, inputs=earlier) as run:
        _mark_interrupted(wh, earlier, run.run_id)
        job.begin(run.run_id)
        if earlier:
            _logger().info("resuming crawl job %s (earlier attempts: %s)", job.dir.name, ", ".join(earlier))
        stats = _run_spider(settings, _scrapy_command(settings, run.run_id, job, earlier, params), job, run.run_id)
        run.rows.update({"products": stats["products_written"], "images": stats["images_written"]})
        reason = stats["finish_reason"]
        bad = {k: v for k, v in stats["images_by_status"].items() if k != "ok"}
        run.message = (
            f"{reason}: {stats['products_written']} products written, {stats['products_unchanged']} unchanged, "
            f"{stats['products_resumed']} done by earlier attempts; {stats['images_written']} photos"
            + (f" (refused: {json.dumps(bad, sort_keys=True)})" if bad else "")
            + (f"; {shortfall_reason(stats)}" if not stats.get("failure") else "")
        )
        summary_path = settings.crawl_dir / "runs" / f"{run.run_id}.json"
        atomic_write_text(summary_path, json.dumps({**stats, "run_id": run.run_id, "params": params,
                                                    "code_version": code_version()}, indent=1, ensure_ascii=False))
        if stats.get("failure"):  # reached no site: the run is recorded failed with this one line
            if not earlier:
                job.finish()  # nothing was listed, nothing to resume: the next try starts afresh
            raise ShoesearchError(stats["failure"])
    if reason == "finished":
        job.finish()
    else:
        _logger().warning("crawl stopped early (%s): %s. Run the same crawl again to resume.",
                          reason, stats.get("stop_message") or "")
    return run.run_id


def crawl_summary(settings, run_id: str) -> dict:
    """The stats a crawl run wrote (see :class:`crawlers.extensions.CrawlStatsFile`)."""
    path = settings.crawl_dir / "runs" / f"{run_id}.json"
    if not path.exists():
        raise ShoesearchError(f"no crawl summary for run {run_id} at {path}")
    return json.loads(path.read_text())


crawl_task = task(crawl, name="crawl", cache_policy=NO_CACHE, retries=0)
