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
# The lineage table's columns (a run id starts with its step; csv / json: every column).
LINEAGE_SHOWN = ["depth", "run_id", "status", "input_run_ids", "output_rows"]
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

    p = sub.add_parser("settings", help="the settings in force and where each came from (default, file, env, --set)",
                       description="The settings in force. The table lists those a layer sets (the home's "
                                   "shoesearch.toml, SHOESEARCH_<SECTION>__<FIELD>, --set) with their source; "
                                   "--all lists every one; csv and json always list every one.")
    p.add_argument("--all", action="store_true", help="every setting, also those at their defaults")
    p.add_argument("--explain", action="store_true",
                   help="every setting with its source, its default and the values of lower layers it overrode")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
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

    from shoesearch.output import output_width, write_rows

    shown = args.max_rows if args.format == "table" else None
    reader = con.execute(statement).to_arrow_reader(SQL_BATCH_ROWS if shown is None else shown + 1)
    write_rows(reader, reader.schema.names, args.format, budget.writer(sys.stdout), shown,
               width=output_width(sys.stdout))


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
    rows = [{c: r.get(c) for c in cols} for r in rows]
    if args.format == "table":  # {"models": 1, "train_metrics": 1} -> models=1, train_metrics=1
        rows = [{**r, "output_rows": _counts(r["output_rows"])} for r in rows]
    table = pa.Table.from_pylist(rows)
    print(format_table(table, args.format, shown=LINEAGE_SHOWN))
    return 0


def _counts(text: str | None) -> str | None:
    """A run's ``output_rows`` JSON (rows written per table) as ``table=n, ...`` for people."""
    try:
        counts = json.loads(text) if text else None
    except ValueError:
        return text
    return ", ".join(f"{k}={v}" for k, v in counts.items()) if isinstance(counts, dict) else text


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


def setting_rows(settings, home_given: bool, overrides: dict) -> list[dict]:
    """One row per setting, ``home`` first: its value, where it came from (``default``, ``shoesearch.toml``,
    ``env SHOESEARCH_...``, ``--set``), its default and what lower layers said (``overridden``)."""
    import os

    from core.settings import ENV_HOME, SECRET_SETTINGS, Settings

    sources = settings.sources(overrides)
    defaults = Settings(home=".").shown()
    home_source = "--home" if home_given else f"env {ENV_HOME}" if os.environ.get(ENV_HOME) else "default"
    rows = [{"setting": "home", "value": str(settings.home), "source": home_source, "default": "./data",
             "overridden": []}]
    for dotted, value in settings.shown().items():
        layers = [(src, "(set)" if v else "") if dotted in SECRET_SETTINGS else (src, v)
                  for src, v in sources.get(dotted, [])]
        rows.append({"setting": dotted, "value": value, "source": layers[0][0] if layers else "default",
                     "default": defaults[dotted], "overridden": [{"source": s, "value": v} for s, v in layers[1:]]})
    return rows


def _as_text(value, shown: bool = True) -> str:
    """A setting's value as it is written in ``--set`` / the TOML file: true, none, ["a", "b"] (and, when
    ``shown`` in a table, the empty text as \"\")."""
    if isinstance(value, str):
        return value or ('""' if shown else "")
    return "none" if value is None else json.dumps(value, ensure_ascii=False)


def cmd_settings(args, settings) -> int:
    import pyarrow as pa

    from shoesearch.output import format_table
    from shoesearch.runtime import set_overrides

    rows = setting_rows(settings, bool(args.home), set_overrides(args.set))
    if args.format == "json":
        print(json.dumps(rows, indent=1, ensure_ascii=False, default=str))
        return 0
    everything = args.all or args.explain or args.format == "csv"
    shown = [r for r in rows if args.format == "csv" or r["setting"] != "home" and (
        everything or r["source"] != "default")]
    if args.format == "table":  # the home above the table: a long path stays on one line
        print(f"home: {printable(rows[0]['value'])} ({rows[0]['source']})")
    cols = ["setting", "value", "source", "default", "overridden"] if args.explain or args.format == "csv" else [
        "setting", "value", "source"]
    table_fmt = args.format == "table"
    text = [{"setting": r["setting"], "value": _as_text(r["value"], table_fmt), "source": r["source"],
             "default": "" if table_fmt and r["default"] == r["value"] else _as_text(r["default"], table_fmt),
             "overridden": "; ".join(f"{o['source']}: {_as_text(o['value'])}" for o in r["overridden"])}
            for r in shown]
    table = pa.table({c: pa.array([r[c] for r in text], pa.string()) for c in cols})
    if table.num_rows or not table_fmt:
        print(format_table(table, args.format, exact=cols))
    hidden = len(rows) - len(shown) - table_fmt
    if hidden:
        print(f"{f'{hidden} more' if table.num_rows else f'all {hidden}'} settings at their defaults (--all lists "
              "every one; --explain adds each default and what a setting overrode)")
    return 0
