"""Parquet + DuckDB warehouse: schemas declared once, atomic commits, lineage in ``runs``."""

from warehouse.runs import Run, latest_run, lineage, start_run, upstream_of
from warehouse.schemas import TABLES
from warehouse.store import (
    SchemaError, Transaction, Warehouse, atomic_write_bytes, atomic_write_text, conform, key_of,
)

__all__ = [
    "TABLES", "Run", "SchemaError", "Transaction", "Warehouse", "atomic_write_bytes", "atomic_write_text",
    "conform", "key_of", "latest_run", "lineage", "open_warehouse", "start_run", "upstream_of",
]


def open_warehouse(settings) -> Warehouse:
    """The warehouse of ``settings.home``; writes the DuckDB catalog file on first use."""
    from warehouse.catalog import write_catalog

    wh = Warehouse(settings.warehouse_dir)
    sql_path = settings.home / "catalog.sql"
    stale = not sql_path.exists() or wh.glob("runs") not in sql_path.read_text(encoding="utf-8")
    if stale or not settings.catalog_path.exists():  # missing, or the home was moved / copied
        write_catalog(wh, settings.catalog_path, sql_path)
    return wh
