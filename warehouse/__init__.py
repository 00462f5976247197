"""Parquet + DuckDB warehouse: schemas declared once, atomic commits, lineage in ``runs``."""

from core.errors import ShoesearchError
from warehouse.runs import Run, latest_run, lineage, start_run, upstream_of
from warehouse.schemas import TABLES
from warehouse.store import SchemaError, Transaction, TransactionLost, UnreadableFile, Warehouse, conform, key_of

__all__ = [
    "TABLES", "Run", "SchemaError", "Transaction", "TransactionLost", "UnreadableFile", "Warehouse",
    "MissingHome", "conform", "key_of", "latest_run", "lineage", "open_warehouse", "require_home",
    "start_run", "upstream_of",
]




class MissingHome(ShoesearchError):
    """A data home with no warehouse in it: usually a mistyped ``--home`` (or ``$SHOESEARCH_HOME``)."""

    def __init__(self, home):
        super().__init__(f"no shoesearch home at {home}: run `shoesearch ingest DIR` or `shoesearch crawl` "
                         "first, or check --home")
        self.home = home


def require_home(settings) -> None:
    """Refuse, creating nothing, a home whose ``warehouse/`` does not exist (read-only commands call this).

    Writers (crawl, ingest, embed, ...) create the home instead; readers must not, or a typo in
    ``--home`` would leave an empty home behind and answer as if the catalog were empty.
    """
    if not settings.warehouse_dir.is_dir():
        raise MissingHome(settings.home)


def open_warehouse(settings, must_exist: bool = False) -> Warehouse:
    """The warehouse of ``settings.home``; writes the DuckDB catalog file on first use.

    A missing home is created, unless ``must_exist`` (read-only commands): then :class:`MissingHome`.
    """
    from warehouse.views import write_views_file

    if must_exist:
        require_home(settings)
    wh = Warehouse(settings.warehouse_dir)
    sql_path = settings.home / "catalog.sql"
    stale = not sql_path.exists() or wh.glob("runs") not in sql_path.read_text(encoding="utf-8")
    # A read-only home is read as committed; its catalog file is rewritten by the next writer.
    if not wh.read_only and (stale or wh.migrated or not settings.views_path.exists()):  # missing, moved, upgraded
        try:
            write_views_file(wh, settings.views_path, sql_path)
        except UnreadableFile:  # reported by the queries that need that table; the next open retries
            pass
    # Recorded in every run's parameters (analysts read them): a secret is recorded as set or not, never its value.
    wh.effective_settings = settings.shown()
    return wh
