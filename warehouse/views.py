"""DuckDB views over the Parquet tables, and a re-creatable views file for other tools (``catalog.duckdb``).

``shoesearch sql`` uses an in-memory DuckDB connection with these views, so it never locks
anything. ``catalog.duckdb`` (and ``catalog.sql``) hold the same views with absolute paths for
the ``duckdb`` CLI, pandas or a BI tool; they are rebuilt into a temp file and renamed, so a
writer never holds a lock that an analyst would trip over.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path

from core.errors import ShoesearchError
from core.files import atomic_path, atomic_write_text
from warehouse.schemas import TABLES


class UnreadableFile(ShoesearchError):
    """A committed file DuckDB cannot read (truncated, corrupt, missing), named relative to the data home."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read {path}: {reason} (restore the file, or move its batch directory out "
                         "of the warehouse to drop that batch)")
        self.path = path
        self.reason = reason


_CATALOG_QUERY = re.compile(r"information_schema|\bpg_catalog\b|\bduckdb_\w+\s*\(|^\s*(show|pragma)\b", re.I)
_QUOTED_PATH = re.compile(r"""['"](/[^'"]+)['"]""")

# A denoise run's decisions on the current photos, with the corrections by hand over them
# (``denoise_overrides_current``): ``kept`` is the person's decision where there is one, ``rule_kept`` the rule's,
# ``decided_by`` 'person' or 'rule'. ``{run}``: the run, as an SQL expression.
_DECISIONS = """
        SELECT d.* REPLACE (coalesce(o.kept, d.kept) AS kept),
               CASE WHEN o.kept IS NULL THEN 'rule' ELSE 'person' END AS decided_by, d.kept AS rule_kept
        FROM denoise d
        JOIN images_current i ON i.image_key = d.image_key AND i.sha1 IS NOT DISTINCT FROM d.sha1
        LEFT JOIN denoise_overrides_current o ON o.image_key = d.image_key AND o.sha1 IS NOT DISTINCT FROM d.sha1
        WHERE d.run_id = {run}"""

# Views derived from the raw tables: "what is true now". A decision in ``denoise_current`` is about
# the photo now at that position (same content hash): a re-crawled photo has none until denoise reruns.
# Views are created in this order: one is listed after those it reads.
DERIVED_VIEWS = {
    "runs": """
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY recorded_at DESC) AS rn
            FROM runs_log) WHERE rn = 1""",
    "products_current": """
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY product_id ORDER BY crawled_at DESC NULLS LAST, run_id DESC) AS rn
            FROM products) WHERE rn = 1 AND content_hash IS DISTINCT FROM 'removed'""",  # a removal record (ingest)
    "images_current": """
        SELECT i.* FROM images i
        JOIN products_current p ON p.product_key = i.product_key AND p.run_id = i.run_id""",
    "denoise_overrides_current": """
        SELECT o.* EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY image_key, sha1 ORDER BY decided_at DESC, run_id DESC) AS rn
            FROM denoise_overrides) o
        JOIN images_current i ON i.image_key = o.image_key AND i.sha1 IS NOT DISTINCT FROM o.sha1
        WHERE o.rn = 1 AND o.kept IS NOT NULL""",  # the newest per photo; a withdrawal (kept null) hides it
    "denoise_current": _DECISIONS.format(run="""(
            SELECT run_id FROM runs WHERE step = 'denoise' AND status = 'success'
            ORDER BY finished_at DESC LIMIT 1)"""),
    "splits_current": """
        SELECT * FROM splits WHERE run_id = (
            SELECT run_id FROM runs WHERE step = 'split' AND status = 'success'
            ORDER BY finished_at DESC LIMIT 1)""",
    "indexes_current": """
        SELECT * FROM indexes WHERE status = 'current'
        ORDER BY created_at DESC LIMIT 1""",
}


# ``denoise_current`` pinned to one run (the ``?``): a step that reads the current run id once (``latest_run``)
# and selects by it names in its lineage the run its photos came from, even if a denoise commits meanwhile.
# The corrections by hand are those of now (``warehouse.overrides.overrides_run`` names the newest in a lineage).
DENOISE_OF_RUN = "(" + " ".join(_DECISIONS.format(run="?").split()) + ")"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def view_names() -> list[str]:
    return ["runs_log" if t == "runs" else t for t in TABLES] + list(DERIVED_VIEWS)


def views_for(sql: str) -> set[str] | None:
    """The views ``sql`` names (a word match: a name in a string literal counts too); None (all of them) when
    it names none or asks the catalog itself (SHOW, DESCRIBE without a name, information_schema, duckdb_*()).

    A connection for one query (``shoesearch sql``) creates only these and those they are built on: DuckDB
    reads every file footer of a table when it creates its view, which would cost more than a fast query.
    """
    if _CATALOG_QUERY.search(sql):
        return None
    names = {n for n in view_names() if re.search(rf"\b{n}\b", sql, re.I)}
    return names or None


def _needed(stmts: list[str], names: set[str]) -> list[str]:
    """The statements creating ``names`` and every view their bodies name, in order."""
    body = {s.split(" AS ", 1)[0].split()[-1]: s.split(" AS ", 1)[1] for s in stmts}
    todo, out = list(names), set()
    while todo:
        name = todo.pop()
        if name in body and name not in out:
            out.add(name)
            todo += [n for n in body if re.search(rf"\b{n}\b", body[name])]
    return [s for s in stmts if s.split(" AS ", 1)[0].split()[-1] in out]


def view_statements(warehouse, materialize: bool = False, current: dict[str, str] | None = None,
                    only: set[str] | None = None) -> list[str]:
    """CREATE statements for every raw table and derived view (absolute paths).

    ``materialize`` copies the tables and the derived "current" views into DuckDB's own storage
    (a snapshot: fastest for analysts, as of the time it was written) instead of views over the
    live Parquet files. ``current`` ({view: Parquet file}, from :func:`warehouse.current.valid_files`)
    reads those derived views from their materialised files, exact as of now, instead of computing them.
    ``only`` (see :func:`views_for`): just these views and those they are built on.
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
        if current and name in current:
            body = f"SELECT * FROM read_parquet({_sql_string(current[name])})"
        stmts.append(f"CREATE OR REPLACE {kind} {name} AS {' '.join(body.split())}")
    return stmts if only is None else _needed(stmts, only)


def unreadable(exc: Exception, root: Path) -> UnreadableFile | None:
    """The file a DuckDB error is about when it lies under the warehouse ``root`` (None otherwise), on one line:
    the file relative to the data home (``root``'s parent) and DuckDB's reason without its ``LINE n:`` excerpt."""
    text = str(exc)
    home = Path(root).parent
    if text.startswith("Permission Error"):  # a confined query reaching out of the warehouse: not a bad file
        return None
    for found in _QUOTED_PATH.findall(text):
        path = Path(os.path.normpath(found))  # lexical: '<root>/../x' is not under the root
        if path.is_relative_to(root):
            reason = text.split("\n", 1)[0].split(": ", 1)[-1]  # DuckDB's first line, without "IO Error: "
            reason = re.sub(r"""\s*['"]""" + re.escape(found) + r"""['"]""", "", reason).strip() or "unreadable"
            return UnreadableFile(str(path.relative_to(home)), reason)
    return None


def create_views(con, warehouse, materialize: bool = False, current: dict[str, str] | None = None,
                 only: set[str] | None = None) -> dict[str, UnreadableFile]:
    """Run :func:`view_statements` on ``con``, one by one; returns the views left out, each with its cause.

    DuckDB reads every file's footer when it creates a view, so one unreadable file of one table would
    otherwise fail the whole connection. A table with such a file (and any view built on it) is left out;
    a query naming it is refused by :func:`check_query` with the file named, and the others still work.
    """
    import duckdb

    broken: dict[str, UnreadableFile] = {}
    for stmt in view_statements(warehouse, materialize, current, only):
        name = stmt.split(" AS ", 1)[0].split()[-1]
        try:
            con.execute(stmt)
        except duckdb.Error as exc:
            cause = unreadable(exc, warehouse.root) or next(
                (err for dep, err in broken.items() if re.search(rf"\b{dep}\b", stmt.split(" AS ", 1)[1])), None)
            if cause is None:
                raise
            broken[name] = cause
    return broken


def check_query(sql: str, broken: dict[str, UnreadableFile]) -> None:
    """Raise the cause of the first left-out view that ``sql`` names (see :func:`create_views`)."""
    for name, cause in broken.items():
        if re.search(rf"\b{name}\b", sql, re.I):
            raise cause


def confine(con, directories: list[Path], limits: dict[str, str] | None = None) -> None:
    """Let ``con`` touch files only under ``directories`` (none: no files at all), for good.

    ``limits`` (e.g. ``memory_limit``, ``max_temp_directory_size``) are set too, and locked with the rest.

    ``enable_external_access = false`` stops every file, network and extension access; DuckDB's
    ``allowed_directories`` (plus its own temp directory, set here to a private one under the system
    temp folder) are the exceptions. The views read the tables at query time, so the warehouse
    directory stays allowed; ``read_csv('/etc/passwd')``, ``read_text``, ``glob`` elsewhere fail with
    a Permission Error. ``lock_configuration`` then makes any later ``SET`` fail: a query cannot undo it.
    Writes are refused before this, by ``shoesearch sql``'s parser check (one SELECT-type statement).
    """
    spill = Path(tempfile.gettempdir()) / f"shoesearch-duckdb-{uuid.uuid4().hex[:12]}"
    con.execute(f"SET temp_directory = {_sql_string(str(spill))}")
    for name, value in (limits or {}).items():
        con.execute(f"SET {name} = {_sql_string(value)}")
    if directories:
        listed = ", ".join(_sql_string(str(Path(d).resolve()).rstrip("/") + "/") for d in directories)
        con.execute(f"SET allowed_directories = [{listed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def write_views_file(warehouse, db_path: Path, sql_path: Path | None = None, materialize: bool = False) -> Path:
    """(Re)create the catalog database atomically; also write the view statements as a .sql file."""
    import duckdb

    db_path = Path(db_path)
    with atomic_path(db_path) as tmp:
        wal = tmp.with_name(tmp.name + ".wal")
        try:
            with duckdb.connect(str(tmp)) as con:
                broken = create_views(con, warehouse, materialize)
                if broken:  # never publish a catalog without some tables: the old one stays, the next open retries
                    raise next(iter(broken.values()))
                con.execute("CHECKPOINT")
        finally:
            wal.unlink(missing_ok=True)
    if sql_path is not None:

        atomic_write_text(Path(sql_path), ";\n".join(view_statements(warehouse)) + ";\n")
    return db_path
