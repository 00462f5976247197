"""DuckDB views over the Parquet tables, and a re-creatable catalog file for other tools.

``shoesearch sql`` uses an in-memory DuckDB connection with these views, so it never locks
anything. ``catalog.duckdb`` (and ``catalog.sql``) hold the same views with absolute paths for
the ``duckdb`` CLI, pandas or a BI tool; they are rebuilt into a temp file and renamed, so a
writer never holds a lock that an analyst would trip over.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from warehouse.files import atomic_write_text
from warehouse.schemas import TABLES

# Views derived from the raw tables: "what is true now". A decision in ``denoise_current`` is about
# the photo now at that position (same content hash): a re-crawled photo has none until denoise reruns.
DERIVED_VIEWS = {
    "runs": """
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY recorded_at DESC) AS rn
            FROM runs_log) WHERE rn = 1""",
    "products_current": """
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY product_id ORDER BY crawled_at DESC NULLS LAST, run_id DESC) AS rn
            FROM products) WHERE rn = 1""",
    "images_current": """
        SELECT i.* FROM images i
        JOIN products_current p ON p.product_key = i.product_key AND p.run_id = i.run_id""",
    "denoise_current": """
        SELECT d.* FROM denoise d
        JOIN images_current i ON i.image_key = d.image_key AND i.sha1 IS NOT DISTINCT FROM d.sha1
        WHERE d.run_id = (
            SELECT run_id FROM runs WHERE step = 'denoise' AND status = 'success'
            ORDER BY finished_at DESC LIMIT 1)""",
    "splits_current": """
        SELECT * FROM splits WHERE run_id = (
            SELECT run_id FROM runs WHERE step = 'split' AND status = 'success'
            ORDER BY finished_at DESC LIMIT 1)""",
    "indexes_current": """
        SELECT * FROM indexes WHERE status = 'current'
        ORDER BY created_at DESC LIMIT 1""",
}


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def view_statements(warehouse, materialize: bool = False) -> list[str]:
    """CREATE statements for every raw table and derived view (absolute paths).

    ``materialize`` copies the tables and the derived "current" views into DuckDB's own storage
    (a snapshot: fastest for analysts, as of the time it was written) instead of views over the
    live Parquet files.
    """
    stmts = []
    kind = "TABLE" if materialize else "VIEW"
    for table in TABLES:
        name = "runs_log" if table == "runs" else table
        glob = _sql_string(warehouse.glob(table))
        stmts.append(
            f"CREATE OR REPLACE {kind} {name} AS SELECT * FROM read_parquet({glob}, union_by_name = true)"
        )
    for name, body in DERIVED_VIEWS.items():  # a snapshot stores these too: no work left at query time
        stmts.append(f"CREATE OR REPLACE {kind} {name} AS {' '.join(body.split())}")
    return stmts


def confine(con, directories: list[Path]) -> None:
    """Let ``con`` touch files only under ``directories`` (none: no files at all), for good.

    ``enable_external_access = false`` stops every file, network and extension access; DuckDB's
    ``allowed_directories`` (plus its own temp directory, set here to a private one under the system
    temp folder) are the exceptions. The views read the tables at query time, so the warehouse
    directory stays allowed; ``read_csv('/etc/passwd')``, ``read_text``, ``glob`` elsewhere fail with
    a Permission Error. ``lock_configuration`` then makes any later ``SET`` fail: a query cannot undo it.
    Writes are refused before this, by ``shoesearch sql``'s parser check (one SELECT-type statement).
    """
    spill = Path(tempfile.gettempdir()) / f"shoesearch-duckdb-{uuid.uuid4().hex[:12]}"
    con.execute(f"SET temp_directory = {_sql_string(str(spill))}")
    if directories:
        listed = ", ".join(_sql_string(str(Path(d).resolve()).rstrip("/") + "/") for d in directories)
        con.execute(f"SET allowed_directories = [{listed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def view_names() -> list[str]:
    return ["runs_log" if t == "runs" else t for t in TABLES] + list(DERIVED_VIEWS)


def write_catalog(warehouse, db_path: Path, sql_path: Path | None = None, materialize: bool = False) -> Path:
    """(Re)create the catalog database atomically; also write the view statements as a .sql file."""
    import duckdb

    stmts = view_statements(warehouse, materialize)
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f".{db_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    con = duckdb.connect(str(tmp))
    try:
        for stmt in stmts:
            con.execute(stmt)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, db_path)
    wal = tmp.with_name(tmp.name + ".wal")
    if wal.exists():
        wal.unlink()
    if sql_path is not None:

        atomic_write_text(Path(sql_path), ";\n".join(view_statements(warehouse)) + ";\n")
    return db_path
