"""A crawl split over several Scrapy processes (``crawl.shards``): who crawls what, who fetches which SKU, and
one summary of them all.

Split: the keywords and categories, in the crawl's order, dealt round-robin over the shards (``plan_shards``).
It depends on nothing but the crawl's parameters, so a rerun gives every shard the same share: a shard killed
or stopped resumes alone, with its own JOBDIR.

Claims (``ClaimStore``): a product listed by two keywords of two shards must be fetched and written once, and
``max_products`` is a total over the shards. Both are decided where every shard can see it at once: a SQLite
file in the crawl job's directory (``<job>/claims.sqlite``). A shard claims the SKUs of a listing page in one
``BEGIN IMMEDIATE`` transaction (SQLite's write lock, held by one process at a time across processes, released
by the kernel if the process dies): a SKU not claimed yet and the total below ``max_products`` becomes this
shard's; a SKU another shard claimed is a duplicate for this one; past the total it is over the limit. Claims
are by shard number, not by process, and live as long as the job: a shard resumed after a kill finds its own
claims (and fetches what its earlier attempt had not written), the other shards' claims stay theirs, and the
total still counts what the killed attempt claimed. Why not the warehouse: a SKU is claimed when it is listed,
long before its product is committed (its photos first), and two shards must not both fetch it meanwhile. The
warehouse is still what says what is done: SKUs written by earlier attempts are skipped (``SHOESEARCH_DONE_RUNS``),
and photos are stored once per content hash whichever shard downloads them (``photos.imagestore``).

Summary (``merge_summaries``): the shards' Scrapy stats summed (a keyword or category belongs to one shard, so
its counts are never added twice), ``products_listed`` counted in the claims (a SKU listed by two shards once),
per-shard finish reasons; the outcome lines of ``crawlers/outcome.py`` read it as one crawl. A shard finished by
an earlier attempt of the job is carried into a resumed run's summary as done by that attempt: its ``written``
counts as ``resumed``, its photos are not this run's.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from crawlers.outcome import SOURCE_PREFIX, summarize

BUSY_TIMEOUT_S = 60.0  # another shard claiming: wait (a claim takes milliseconds)
CHUNK = 500  # SKUs per IN (...) query (SQLite's bound-variable limit is far above it)
WALLS = ("captcha", "login_wall", "robots_5xx", "robots_unreachable")  # the site stopped the crawl: stop all shards
MAX_STATS = ("elapsed_time_seconds", "memusage/max", "memusage/startup")  # per process: the largest, not a sum


def plan_shards(keywords: list[str], categories: list[str], shards: int) -> list[dict]:
    """``[{"keywords": [...], "categories": [...]}]``: the sources dealt round-robin, never an empty shard."""
    sources = [("keyword", k) for k in keywords] + [("category", c) for c in categories]
    n = max(1, min(shards, len(sources)))
    return [{"keywords": [name for kind, name in sources[i::n] if kind == "keyword"],
             "categories": [name for kind, name in sources[i::n] if kind == "category"]} for i in range(n)]


class ClaimStore:
    """Which shard fetches which SKU, and how many SKUs are claimed (``max_products`` over all shards)."""

    def __init__(self, path: str | Path, shard: int, limit: int):
        self.shard, self.limit = int(shard), int(limit)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("CREATE TABLE IF NOT EXISTS claims (sku TEXT PRIMARY KEY, shard INTEGER NOT NULL)")
        self.con.execute("CREATE TABLE IF NOT EXISTS listed (sku TEXT PRIMARY KEY)")

    def claim(self, skus: list[str]) -> dict[str, str]:
        """``sku -> "mine" | "other" | "over"`` for the SKUs of one listing page, in their order, atomically."""
        skus = list(dict.fromkeys(skus))
        if not skus:
            return {}
        self.con.execute("BEGIN IMMEDIATE")  # one shard at a time from here to COMMIT
        try:
            self.con.executemany("INSERT OR IGNORE INTO listed VALUES (?)", [(s,) for s in skus])
            owners: dict[str, int] = {}
            for i in range(0, len(skus), CHUNK):
                part = skus[i:i + CHUNK]
                marks = ",".join("?" for _ in part)
                owners.update(self.con.execute(f"SELECT sku, shard FROM claims WHERE sku IN ({marks})", part))
            (claimed,) = self.con.execute("SELECT count(*) FROM claims").fetchone()
            out = {}
            for sku in skus:
                if sku in owners:
                    out[sku] = "mine" if owners[sku] == self.shard else "other"
                elif claimed < self.limit:
                    self.con.execute("INSERT INTO claims VALUES (?, ?)", (sku, self.shard))
                    claimed += 1
                    out[sku] = "mine"
                else:
                    out[sku] = "over"
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return out

    def close(self) -> None:
        self.con.close()


def listed_count(path: Path) -> int | None:
    """Distinct SKUs the shards of a job listed (None before any listed one)."""
    if not Path(path).exists():
        return None
    with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)) as con:
        try:
            return con.execute("SELECT count(*) FROM listed").fetchone()[0]
        except sqlite3.OperationalError:  # created, no table yet
            return None


def _carried(stats: dict) -> dict:
    """The stats of a shard finished by an earlier attempt, as a resumed run counts them."""
    out = {}
    for key, value in stats.items():
        if key.startswith("shoesearch/images/"):
            continue  # its photos were that attempt's
        if key == "shoesearch/products/written":
            key = "shoesearch/products/already_done"
        elif key.startswith(SOURCE_PREFIX) and key.endswith("/written"):
            key = key[: -len("written")] + "resumed"
        out[key] = out.get(key, 0) + value if _number(value) and _number(out.get(key, 0)) else value
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _add(total: dict, stats: dict) -> None:
    for key, value in stats.items():
        if not _number(value):
            total.setdefault(key, value)  # text (a reason), None: the first shard's
        elif not _number(total.get(key)):
            total[key] = value
        elif key in MAX_STATS:
            total[key] = max(total[key], value)
        else:
            total[key] += value


def finish_reason(parts: list[dict]) -> str:
    """The crawl's reason: ``finished`` when every shard finished, else a wall, else the first other reason."""
    reasons = [p["summary"]["finish_reason"] if p["summary"] else "killed" for p in parts]
    unfinished = [r for r in reasons if r != "finished"]
    walls = [r for r in unfinished if r in WALLS]
    return (walls or unfinished or ["finished"])[0]


def merge_summaries(parts: list[dict], params: dict, listed: int | None) -> dict:
    """One summary of the shards. ``parts``: per shard ``{"index", "keywords", "categories", "summary"`` (None:
    it died without one), ``"attempt"`` (the run it ran in), ``"carried"`` (finished by an earlier attempt)}."""
    raw: dict = {}
    for part in parts:
        if part["summary"]:
            _add(raw, _carried(part["summary"]["stats"]) if part["carried"] else part["summary"]["stats"])
    if listed is not None:
        raw["shoesearch/products/listed"] = listed
    ran = [p["summary"] for p in parts if p["summary"] and not p["carried"]]
    stop = next((s["stop_message"] for s in ran if s.get("stop_message")), None)
    out = summarize(raw, finish_reason(parts), {
        "stop_message": stop, "duration_s": max([s["duration_s"] or 0 for s in ran], default=0),
        "keywords": params["keywords"], "categories": params["categories"],
        "max_products": params["max_products"], "max_pages": params["max_pages"]})
    out["shards"] = [shard_line(p) for p in parts]
    return out


def shard_line(part: dict) -> dict:
    s = part["summary"] or {}
    return {"index": part["index"], "keywords": part["keywords"], "categories": part["categories"],
            "finish_reason": s.get("finish_reason", "killed"), "attempt": part["attempt"],
            "carried": part["carried"], "products_written": s.get("products_written", 0),
            "images_written": s.get("images_written", 0), "failure": s.get("failure")}


def shards_text(s: dict) -> str:
    """Per-shard finish reasons in one line, e.g. ``shard 0 finished (by crawl-...), shard 1 captcha``."""
    parts = []
    for sh in s.get("shards") or []:
        if sh["finish_reason"] == "killed":
            parts.append(f"shard {sh['index']} killed (no stats)")
        elif sh["carried"]:
            parts.append(f"shard {sh['index']} {sh['finish_reason']} (by {sh['attempt']})")
        else:
            parts.append(f"shard {sh['index']} {sh['finish_reason']}: {sh['products_written']} written")
    return ", ".join(parts)
