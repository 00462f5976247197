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

Shards (``crawl.shards`` > 1): the keywords/categories are dealt over N such processes, run concurrently
(locally, or as Ray tasks under ``compute.engine = "ray"``: ``crawlers/launch.py``), all writing into the one
run with its run id; each has its own JOBDIR, stats, progress and log files under ``<job>/shard-<i>/``. Which
shard fetches a SKU listed by two of them, and ``max_products`` as a total, are settled in the job's claims
file (``crawlers/shards.py``). A shard that finished is marked ``done`` and a rerun of the same crawl runs the
other shards only; the run's summary merges them (per-shard finish reasons in the message). A shard that died
fails the run (the others' products are kept) and the rerun resumes it alone.

Outcome: the stats file says per keyword/category what was listed, written, duplicated or failed,
and why the crawl ended below ``--max-products`` (``crawlers/outcome.py``). A crawl that parsed no
listing page at all (dead port, unknown host, no network) raises one line naming the cause (the run
is recorded failed; the spider process exits 1 then, see ``crawlers/commands/crawl.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import ShoesearchError
from core.files import atomic_write_text
from core.progress import progress, run_logger
from crawlers.config import scrapy_settings
from crawlers.jdsite import SiteMap
from crawlers.launch import LocalSpider, RaySpider, supervise
from crawlers.outcome import shortfall_reason
from crawlers.shards import listed_count, merge_summaries, plan_shards, shards_text
from warehouse import open_warehouse, start_run
from warehouse.locks import file_lock
from warehouse.runs import code_version

# JOBDIR state is consistent after these (a clean stop: the same crawl resumes from it)
CLEAN_REASONS = ("finished", "captcha", "login_wall", "robots_5xx", "robots_unreachable", "shutdown")
LOG_TAIL_CHARS = 3000  # of the spider's log, quoted when it fails


def _logger():
    return run_logger("crawl")  # the flow run's log in a flow, the module logger outside one


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


class Shard:
    """One shard's files in a crawl job: JOBDIR, stats per attempt, progress, pid, and ``done`` once it finished.
    The one shard of an unsharded crawl keeps the job's own directory (the layout from before shards)."""

    def __init__(self, job_dir: Path, index: int, part: dict, alone: bool):
        self.index, self.keywords, self.categories, self.alone = index, part["keywords"], part["categories"], alone
        self.dir = job_dir if alone else job_dir / f"shard-{index}"
        self.scrapy_dir = self.dir / "scrapy"
        self.progress_path = self.dir / "progress.json"
        self.pid_path = self.dir / "pid"  # the spider process of the attempt running now
        self.done_path = self.dir / "done"  # the run id of the attempt that finished it

    def stats_path(self, run_id: str) -> Path:
        return self.dir / f"stats-{run_id}.json"

    def stats(self, run_id: str) -> dict | None:
        path = self.stats_path(run_id)
        return json.loads(path.read_text()) if path.exists() else None

    def ended_cleanly(self, run_id: str) -> bool:
        return (self.stats(run_id) or {}).get("finish_reason") in CLEAN_REASONS

    def done_by(self) -> str | None:
        return self.done_path.read_text().strip() if self.done_path.exists() else None

    def log_path(self, settings, run_id: str) -> Path:
        return settings.crawl_dir / "logs" / (f"{run_id}.log" if self.alone else f"{run_id}-shard{self.index}.log")

    def output_path(self, run_id: str) -> Path:
        return self.dir / f"output-{run_id}.txt"


class CrawlJob:
    """The files of one crawl job (same params, same shard count) until it finishes: attempts, shards, claims."""

    def __init__(self, settings, params: dict):
        plan = plan_shards(params["keywords"], params["categories"], settings.crawl.shards)
        keyed = {**params, "shards": len(plan)} if len(plan) > 1 else params  # unsharded: the key from before
        key = hashlib.sha1(json.dumps(keyed, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]
        self.dir = settings.crawl_dir / "jobs" / key
        self.state_path = self.dir / "job.json"
        self.params = params
        self.shards = [Shard(self.dir, i, part, len(plan) == 1) for i, part in enumerate(plan)]
        self.claims_path = self.dir / "claims.sqlite" if len(plan) > 1 else None  # crawlers/shards.ClaimStore

    def attempts(self) -> list[str]:
        if not self.state_path.exists():
            return []
        return list(json.loads(self.state_path.read_text())["attempts"])

    def pending(self) -> list[Shard]:
        """The shards no attempt finished: a rerun runs these only."""
        return [shard for shard in self.shards if shard.done_by() is None]

    def begin(self, run_id: str) -> None:
        attempts = self.attempts()
        for shard in self.pending():
            if attempts and not shard.ended_cleanly(attempts[-1]):  # killed: its JOBDIR may be torn
                shutil.rmtree(shard.scrapy_dir, ignore_errors=True)
            shard.dir.mkdir(parents=True, exist_ok=True)
            shard.progress_path.unlink(missing_ok=True)
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


def _spider_args(settings, run_id: str, job: CrawlJob, shard: Shard, done_runs: list[str], params: dict) -> list[str]:
    """The ``-s`` settings of one shard's ``scrapy crawl jd`` (its keywords/categories, its files)."""
    settings_for_child = dict(scrapy_settings(settings))
    crawl = json.loads(settings_for_child["SHOESEARCH_CRAWL"])
    crawl.update(params, keywords=shard.keywords, categories=shard.categories)
    settings_for_child["SHOESEARCH_CRAWL"] = json.dumps(crawl, ensure_ascii=False)
    settings_for_child.update({
        "SHOESEARCH_RUN_ID": run_id,
        "SHOESEARCH_DONE_RUNS": json.dumps(done_runs),
        "SHOESEARCH_STATS_FILE": str(shard.stats_path(run_id)),
        "SHOESEARCH_PROGRESS_FILE": str(shard.progress_path),
        "JOBDIR": str(shard.scrapy_dir),
        "LOG_FILE": str(shard.log_path(settings, run_id)),
        "LOG_FILE_APPEND": False,
    })
    if job.claims_path:  # sharded: who fetches which SKU, max_products over all shards
        settings_for_child.update({"SHOESEARCH_CLAIMS": str(job.claims_path), "SHOESEARCH_SHARD": shard.index})
    return [arg for key, value in settings_for_child.items() for arg in ("-s", f"{key}={value}")]


def _ray(settings, job: CrawlJob):
    """The Ray cluster when ``compute.engine = "ray"`` runs the shards (one shard: a local process, as ever)."""
    if settings.compute.engine != "ray" or len(job.shards) < 2:
        return None
    from embedding.ray_engine import connect

    return connect(settings)


def _run_spiders(settings, job: CrawlJob, run_id: str, done_runs: list[str], params: dict) -> dict[int, int]:
    """Run the pending shards concurrently to their end; their exit codes by shard."""
    log = _logger()
    (settings.crawl_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = {**{k: v for k, v in os.environ.items() if k.startswith("SHOESEARCH_")}, "SHOESEARCH_HOME": str(settings.home)}
    pending = job.pending()
    ray = _ray(settings, job) if pending else None
    spiders = {}
    try:
        for shard in pending:
            args = _spider_args(settings, run_id, job, shard, done_runs, params)
            files = (args, env, shard.output_path(run_id), shard.pid_path)
            spiders[shard.index] = RaySpider(ray, *files) if ray else LocalSpider(*files)
    except BaseException:
        for spider in spiders.values():
            spider.close()
        raise
    def report(written: int, pages: int) -> None:
        bar.moveto(written)
        bar.fields(pages=pages)
        log.info("crawl %s: %d products written, %d pages", run_id, written, pages)

    with progress("crawl", params.get("max_products") or None, "products") as bar:
        return supervise(spiders, {s.index: s.stats_path(run_id) for s in pending},
                         {s.index: s.progress_path for s in pending}, report, settings.crawl.progress_every_s)


def _died(settings, shard: Shard, run_id: str, code: int | None, with_tail: bool = True) -> str:
    """Why a spider gave no stats; ``with_tail``: its log's last lines too."""
    log_path = shard.log_path(settings, run_id)
    what = "the spider" if shard.alone else f"shard {shard.index} ({', '.join(shard.keywords + shard.categories)})"
    line = f"{what} exited with code {code} without finishing; log: {log_path}"
    if not with_tail:
        return line
    tail = (log_path.read_text(errors="replace") if log_path.exists() else "")[-LOG_TAIL_CHARS:]
    output = shard.output_path(run_id)
    tail += (output.read_text(errors="replace") if output.exists() else "")[-LOG_TAIL_CHARS:]
    return f"{line}\n{tail}"


def _outcome(settings, job: CrawlJob, run_id: str, codes: dict[int, int]) -> dict:
    """The crawl's summary: the one spider's, or the shards' merged (crawlers/shards.py)."""
    if len(job.shards) == 1:
        shard = job.shards[0]
        stats = shard.stats(run_id)
        if stats is not None and stats.get("failure"):
            return stats  # the spider ran and says why it reached nothing (it exits 1 then)
        if codes.get(0) != 0 or stats is None:
            raise ShoesearchError(_died(settings, shard, run_id, codes.get(0)))
        return stats
    parts = []
    for shard in job.shards:
        done = shard.done_by()
        summary = shard.stats(done or run_id)
        parts.append({"index": shard.index, "keywords": shard.keywords, "categories": shard.categories,
                      "summary": summary, "attempt": done or run_id, "carried": done is not None})
        if (done is None and summary and summary["finish_reason"] == "finished" and not summary.get("failure")
                and codes.get(shard.index) == 0):
            atomic_write_text(shard.done_path, run_id + "\n")  # a rerun leaves it alone
    return merge_summaries(parts, job.params, listed_count(job.claims_path))


def _message(stats: dict) -> str:
    in_listing = stats.get("products_unchanged_in_listing", 0)
    bad = {k: v for k, v in stats["images_by_status"].items() if k != "ok"}
    return (
        f"{stats['finish_reason']}: {stats['products_written']} products written, "
        f"{stats['products_unchanged']} unchanged"
        + (f" ({in_listing} seen unchanged in the listing, item page not fetched)" if in_listing else "")
        + f", {stats['products_resumed']} done by earlier attempts; {stats['images_written']} photos"
        + (f" (refused: {json.dumps(bad, sort_keys=True)})" if bad else "")
        + (f"; shards: {shards_text(stats)}" if stats.get("shards") else "")
        + (f"; {shortfall_reason(stats)}" if not stats.get("failure") else "")
    )


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


def _crawl_job(settings, params: dict, job: CrawlJob) -> str:
    earlier = job.attempts()
    wh = open_warehouse(settings)
    run_params = {**params, "shards": len(job.shards)} if len(job.shards) > 1 else params
    with start_run(wh, step="crawl", params=run_params, inputs=earlier) as run:
        _mark_interrupted(wh, earlier, run.run_id)
        job.begin(run.run_id)
        if earlier:
            _logger().info("resuming crawl job %s (earlier attempts: %s; shards to run: %s)", job.dir.name,
                           ", ".join(earlier), ", ".join(str(s.index) for s in job.pending()) or "none")
        codes = _run_spiders(settings, job, run.run_id, earlier, params)
        stats = _outcome(settings, job, run.run_id, codes)
        run.rows.update({"products": stats["products_written"], "images": stats["images_written"]})
        reason = stats["finish_reason"]
        run.message = _message(stats)
        summary_path = settings.crawl_dir / "runs" / f"{run.run_id}.json"
        atomic_write_text(summary_path, json.dumps({**stats, "run_id": run.run_id, "params": params,
                                                    "code_version": code_version()}, indent=1, ensure_ascii=False))
        if stats.get("failure"):  # reached no site: the run is recorded failed with this one line
            if not earlier:
                job.finish()  # nothing was listed, nothing to resume: the next try starts afresh
            raise ShoesearchError(stats["failure"])
        died = [s for s in job.shards if codes.get(s.index) is not None and not s.stats(run.run_id)]
        if died:  # the others' products are committed; the run is recorded failed, the rerun resumes these
            causes = "; ".join(_died(settings, s, run.run_id, codes[s.index], with_tail=False) for s in died)
            raise ShoesearchError(f"{len(died)} of {len(job.shards)} shards died without finishing; run the same "
                                  f"crawl again to resume only the unfinished shards. {run.message}. {causes}")
    _logger().info("crawl %s: %s", run.run_id, run.message)
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
