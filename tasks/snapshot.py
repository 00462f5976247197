"""Refresh ``snapshot.duckdb``: the tables copied into DuckDB storage for fast analyst queries.

The live views (``shoesearch sql``, ``catalog.duckdb``) always show the newest data; the snapshot
is as of its last refresh, which the flows do at their end. It is written to a temp file and
renamed, so an analyst who has the old snapshot open keeps reading it undisturbed.
"""

from __future__ import annotations

from prefect import task

from warehouse import open_warehouse
from warehouse.views import write_views_file


def refresh_snapshot(settings) -> str:
    """Rewrite ``settings.snapshot_path`` from the current tables; returns its path."""
    return str(write_views_file(open_warehouse(settings), settings.snapshot_path, materialize=True))


refresh_snapshot_task = task(refresh_snapshot, name="refresh-snapshot")
