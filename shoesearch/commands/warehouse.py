"""Warehouse commands: tables, sql, lineage, catalog, settings."""

from __future__ import annotations

import json
import re

from core.errors import ShoesearchError
from shoesearch.output import printable

# Statements `shoesearch sql` runs. DESCRIBE, SHOW, SUMMARIZE, FROM-first, VALUES, TABLE and UNPIVOT
# all parse as SELECT; EXPLAIN is let through only around a SELECT (EXPLAIN ANALYZE executes it).
READ_ONLY_HINT = "use SELECT / WITH / FROM / DESCRIBE / SHOW / SUMMARIZE / PIVOT / VALUES / EXPLAIN"
_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.S)
_EXPLAIN = re.compile(r"^EXPLAIN\b(?:\s+ANALY[SZ]E\b)?\s*(?:\([^)]*\))?", re.I)
SQL_BATCH_ROWS = 2048  # rows fetched (and written) at a time by `sql --format csv/json`: DuckDB's vector size


def register(sub) -> None:
    p = sub.add_parser("tables", help="list tables with row counts and the last run that wrote them")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("sql", help="run a read-only SQL query over the tables (DuckDB)")
    p.add_argument("query", help='e.g. "SELECT brand, count(*) FROM products_current GROUP BY 1"')
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--max-rows", type=int, default=100, help="rows shown in table format")
    p.add_argument("--snapshot", action="store_true",
                   help="query the materialised snapshot (`shoesearch catalog --snapshot`) instead of live files")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("lineage", help="the runs upstream of a run, an index or an image's embedding")
    p.add_argument("run_id", nargs="?", help="a run id (see `shoesearch sql 'SELECT * FROM runs'`)")
    p.add_argument("--index", help="an index id instead of a run id")
    p.add_argument("--image", help="an image id: the lineage of its newest embedding")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("catalog", help="(re)write catalog.duckdb + catalog.sql for the duckdb CLI / pandas")
    p.add_argument("--snapshot", action="store_true",
                   help="also write snapshot.duckdb: the tables copied into DuckDB storage (fastest queries)")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("settings", help="print the effective settings (defaults, config file, env)")
    p.set_defaults(func=cmd_settings)


def cmd_tables(args, settings) -> int:
    from shoesearch.output import format_table
    from warehouse import TABLES, open_warehouse

    wh = open_warehouse(settings, must_exist=True)
    parts = [
        f"""SELECT '{t}' AS table_name, (SELECT count(*) FROM {'runs_log' if t == 'runs' else t}) AS rows,
                   (SELECT r.run_id FROM runs r WHERE r.run_id IN (SELECT run_id FROM {'runs_log' if t == 'runs' else t})
                    ORDER BY r.recorded_at DESC LIMIT 1) AS last_run_id"""
        for t in TABLES
    ]
    result = wh.query(" UNION ALL ".join(parts))
    print(format_table(result, args.format))
    return 0


def one_line(exc: Exception) -> str:
    """DuckDB's message on one line: its text and hints, without the ``LINE n:`` excerpt and caret."""
    lines = []
    for line in str(exc).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    return printable(" ".join(lines))  # the data it quotes may hold terminal escapes


def parse_read_only(query: str):
    """The one read-only statement in ``query``; a syntax error or anything else is refused.

    Parsing (``duckdb.extract_statements``) comes first, so a typo is reported as DuckDB's syntax
    error, not as a write. Exactly one statement: ``SELECT 1; COPY ... TO 'file'`` would otherwise run both.
    """
    import duckdb

    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise ShoesearchError(f"query does not parse: {one_line(exc).removeprefix('Parser Error: ')}") from None
    if not statements:
        raise ShoesearchError("no query given: " + READ_ONLY_HINT.replace("use ", "write a ", 1))
    if _is_pivot(statements):  # PIVOT parses as CREATE TYPE (its ON values) + SELECT, both generated
        return query
    if len(statements) > 1:
        raise ShoesearchError(f"shoesearch sql runs one query at a time; got {len(statements)} statements")
    statement = statements[0]
    kind = statement.type
    if kind == duckdb.StatementType.EXPLAIN:
        kind = _explained_type(statement.query)
    if kind != duckdb.StatementType.SELECT:
        raise ShoesearchError(f"shoesearch sql is read-only ({kind.name} refused): {READ_ONLY_HINT} queries")
    return statement


def _is_pivot(statements) -> bool:
    import duckdb

    *prefix, last = statements
    return bool(prefix) and last.type == duckdb.StatementType.SELECT and not last.query and all(
        s.type == duckdb.StatementType.CREATE and not s.query for s in prefix)


def _explained_type(text: str):
    """The type of the statement an EXPLAIN [ANALYZE] [(options)] wraps (INVALID when unclear)."""
    import duckdb

    body = _LEADING_NOISE.sub("", text, count=1)
    match = _EXPLAIN.match(body)
    try:
        inner = duckdb.extract_statements(body[match.end():]) if match else []
    except duckdb.Error:
        inner = []
    return inner[0].type if len(inner) == 1 else duckdb.StatementType.INVALID


def _print_result(con, statement, args, budget) -> None:
    """Stream the result to stdout: every row as CSV / JSON, or the rows the table shows (+1 to see more)."""
    import sys

    from shoesearch.output import write_rows

    shown = args.max_rows if args.format == "table" else None
    reader = con.execute(statement).to_arrow_reader(SQL_BATCH_ROWS if shown is None else shown + 1)
    write_rows(reader, reader.schema.names, args.format, budget.writer(sys.stdout), shown)


def cmd_sql(args, settings) -> int:
    import duckdb

    from shoesearch.bounded import run_bounded
    from warehouse import open_warehouse
    from warehouse.views import check_query, confine, unreadable

    statement = parse_read_only(args.query)  # before touching the home: a bad query changes nothing
    if args.max_rows < 0:
        raise ShoesearchError(f"--max-rows must be 0 or more, got {args.max_rows}")
    wh = open_warehouse(settings, must_exist=True)
    limits = {"memory_limit": settings.sql.memory_limit,
              "max_temp_directory_size": settings.sql.max_temp_directory_size}
    if args.snapshot:
        if not settings.snapshot_path.exists():
            raise ShoesearchError("no snapshot yet: run `shoesearch catalog --snapshot` first")
        con = duckdb.connect(str(settings.snapshot_path), read_only=True)
        confine(con, [], limits)  # its tables are inside the file: no other file is needed
    else:
        con = wh.connect(confined=True, limits=limits, for_query=args.query)  # in-memory, warehouse files only
    try:
        check_query(args.query, wh.broken)  # a table with an unreadable file: name the file, in one line
        run_bounded(con, lambda budget: _print_result(con, statement, args, budget), settings.sql.timeout_s)
    except duckdb.Error as exc:
        if unreadable(exc, wh.root):
            raise unreadable(exc, wh.root) from None
        message = one_line(exc)
        if message.startswith("Permission Error"):
            where = "no files" if args.snapshot else f"only the files under {wh.root}"
            message += f" (shoesearch sql reads {where}: query the tables and views)"
        elif message.startswith("Out of Memory Error"):  # DuckDB's advice (SET ...) cannot run here: its settings
            message = message.split(" Possible solutions:")[0] + (  # are locked; ours can be raised
                f" (shoesearch sql's bounds: sql.memory_limit={settings.sql.memory_limit}, sql.max_temp_directory_size="
                f"{settings.sql.max_temp_directory_size}; raise them with --set)")
        raise ShoesearchError(f"query failed: {message}") from None
    finally:
        con.close()
    return 0


def cmd_lineage(args, settings) -> int:
    import pyarrow as pa

    from shoesearch.output import format_table
    from warehouse import lineage, open_warehouse, upstream_of

    wh = open_warehouse(settings, must_exist=True)
    try:
        if args.index:
            rows = upstream_of(wh, "indexes", "index_id", args.index)
        elif args.image:
            rows = upstream_of(wh, "embeddings", "image_id", args.image)
        elif args.run_id:
            rows = lineage(wh, args.run_id)
        else:
            raise ShoesearchError("give a RUN_ID, --index ID or --image ID")
    except KeyError as exc:
        raise ShoesearchError(str(exc.args[0])) from None
    cols = ["depth", "run_id", "step", "flow", "status", "finished_at", "input_run_ids", "output_rows"]
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    print(format_table(table, args.format))
    return 0


def cmd_catalog(args, settings) -> int:
    from warehouse import open_warehouse
    from warehouse.views import write_views_file

    wh = open_warehouse(settings, must_exist=True)  # writes inside a home, never creates one
    path = write_views_file(wh, settings.views_path, settings.home / "catalog.sql")
    print(f"wrote {path} (views over the live Parquet files) and {settings.home / 'catalog.sql'}")
    print(f"open it with:  duckdb -readonly {path}")
    if args.snapshot:
        snap = write_views_file(wh, settings.snapshot_path, materialize=True)
        print(f"wrote {snap} (tables copied as of now; rerun to refresh)")
    return 0


def cmd_settings(args, settings) -> int:
    print(json.dumps(settings.as_dict(), indent=2, default=str, ensure_ascii=False))
    return 0
