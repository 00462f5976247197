"""What each product's listing entry showed when its item page was last fetched, per site.

JD's listings show per item its SKU, title, price, photo and shop (``crawlers.jdsite.ListingEntry``). The
spider re-fetches an item page only when that entry's signature differs from the one recorded at the last fetch,
or that fetch is older than ``crawl.refetch_after_days``, or the product is not in ``products_current`` (or has a
photo worth retrying): see ``JdSpider._unchanged_in_listing``.

Where it lives: ``<crawl_dir>/listings/<site>.sqlite``, one small SQLite file per site (``jd`` for the real
hosts, ``host_port`` for ``--site``), not a ``products`` column. The signature is a crawler's bookkeeping, not
product data: a column would need a warehouse format migration, while this file can be deleted at any time
(the next crawl then fetches every item page once, exactly as before the feature). SQLite makes it safe for the
shards of a sharded crawl, which read it when they open and write it at their commits, concurrently.

When it is written: for a product the crawl wrote, only after its warehouse commit (``WarehousePipeline``), so a
crawl killed before a commit never records a signature for a product the warehouse does not hold; for a product
whose item page showed nothing new (same content hash), when that was found. A SKU skipped for an unchanged
listing is not recorded again: its last fetch keeps its age, so ``refetch_after_days`` still comes round.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

BUSY_TIMEOUT_S = 60.0  # another shard writing: wait (a write takes milliseconds)


def site_slug(site: str | None) -> str:
    """A file name for a site: ``jd`` for the real hosts, ``127.0.0.1_8765`` for ``--site http://127.0.0.1:8765``."""
    if not site:
        return "jd"
    parts = urlsplit(site)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.hostname or 'site'}_{parts.port or parts.scheme}")


class ListingMemory:
    """``sku -> (signature, fetched_at)`` of one site, in ``<crawl_dir>/listings/<site>.sqlite``."""

    def __init__(self, crawl_dir: Path, site: str | None):
        self.path = Path(crawl_dir) / "listings" / f"{site_slug(site)}.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")  # readers (shards opening) never wait for a writer
        con.execute("CREATE TABLE IF NOT EXISTS seen (sku TEXT PRIMARY KEY, signature TEXT NOT NULL, "
                    "fetched_at TEXT NOT NULL)")
        return con

    def load(self) -> dict[str, tuple[str, datetime]]:
        """Every recorded SKU: its listing signature at the last fetch and when that fetch was."""
        if not self.path.exists():
            return {}
        with closing(self._connect()) as con:
            rows = con.execute("SELECT sku, signature, fetched_at FROM seen").fetchall()
        return {sku: (sig, datetime.fromisoformat(at)) for sku, sig, at in rows}

    def record(self, rows: list[tuple[str, str, datetime]]) -> None:
        """Upsert ``(sku, signature, fetched_at)`` rows in one transaction (rows without a signature are left out)."""
        rows = [(sku, sig, _utc(at).isoformat()) for sku, sig, at in rows if sig]
        if not rows:
            return
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT (sku) DO UPDATE SET "
                            "signature = excluded.signature, fetched_at = excluded.fetched_at", rows)
            con.execute("COMMIT")


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
