"""Parquet tables with atomic, multi-table commits.

Layout under the warehouse directory::

    <table>/batch-<run_id>-<txn>/part-00000.parquet   committed data (readers glob these)
    <table>/batch-0-schema/part-00000.parquet        an empty file: the glob never matches nothing
    _staging/<txn>/<table>/part-*.parquet             a transaction being written (invisible)
    _staging/<txn>/COMMIT                             written atomically once every part is on disk

A transaction writes its parts into staging, then writes ``COMMIT`` (temp file + rename), then
renames each staged table directory into place (one ``rename`` each). Opening the warehouse
recovers: a staged transaction with ``COMMIT`` is rolled forward, one without it whose writer
process is gone is rolled back. A crash therefore never leaves half a batch visible, and readers
(which only list ``batch-*`` directories) never see a partial file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.schemas import KEY_SOURCES, TABLES

SCHEMA_BATCH = "batch-0-schema"


class SchemaError(ValueError):
    """Rows that do not fit a table's declared schema."""


def key_of(identifier: str) -> int:
    """The stable signed 64-bit key of an id (first 8 bytes of its BLAKE2b digest)."""
    digest = hashlib.blake2b(identifier.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _keys_for(values) -> list:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pylist()
    return [None if v is None else key_of(str(v)) for v in values]


def conform(table: str, data: Any, run_id: str | None = None) -> pa.Table:
    """Return ``data`` (pa.Table, list of dicts or dict of lists) cast to ``table``'s schema.

    A missing ``run_id`` column is filled with ``run_id`` when given.

    Unknown columns, missing required columns, nulls in required columns and values that do
    not convert are rejected with a :class:`SchemaError` naming the table and column.
    """
    if table not in TABLES:
        raise SchemaError(f"unknown table {table!r}; tables are: {', '.join(TABLES)}")
    schema = TABLES[table]
    if isinstance(data, pa.Table):
        columns = {name: data.column(name) for name in data.column_names}
    elif isinstance(data, Mapping):
        columns = dict(data)
    else:
        rows = list(data)
        names = sorted({k for row in rows for k in row})
        columns = {n: [row.get(n) for row in rows] for n in names}
    unknown = [c for c in columns if schema.get_field_index(c) < 0]
    if unknown:
        raise SchemaError(f"table {table!r}: unknown column(s) {', '.join(map(repr, unknown))}")
    n_rows = len(next(iter(columns.values()))) if columns else 0
    if run_id is not None and "run_id" not in columns:
        columns["run_id"] = [run_id] * n_rows
    for key, source in KEY_SOURCES.items():
        if schema.get_field_index(key) >= 0 and key not in columns and source in columns:
            columns[key] = _keys_for(columns[source])
    arrays = []
    for fld in schema:
        if fld.name not in columns:
            if not fld.nullable and n_rows:
                raise SchemaError(f"table {table!r}: required column {fld.name!r} is missing")
            arrays.append(pa.nulls(n_rows, type=fld.type))
            continue
        values = columns[fld.name]
        try:
            if isinstance(values, (pa.Array, pa.ChunkedArray)):
                arr = values.cast(fld.type)
            else:
                arr = pa.array(values, type=fld.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
            raise SchemaError(
                f"table {table!r}: column {fld.name!r} does not convert to {fld.type}: {exc}"
            ) from None
        if not fld.nullable and arr.null_count:
            raise SchemaError(f"table {table!r}: column {fld.name!r} may not be null ({arr.null_count} nulls)")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write a file so that readers see either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


COMMIT_ORDER = {"products": 1, "runs": 2}  # renamed after every other table of a transaction


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path, blocking: bool = True):
    """An exclusive lock between processes (``flock`` on ``path``); non-blocking raises BlockingIOError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _staging_lock(staging_dir: Path):
    """Serialise roll-forwards and recovery between processes sharing a data home."""
    return file_lock(staging_dir.parent / ".staging.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Transaction:
    """Parts staged for one or more tables, made visible together by :meth:`commit`."""

    def __init__(self, warehouse: "Warehouse", run_id: str):
        self.warehouse = warehouse
        self.run_id = run_id
        self.txn_id = f"{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.dir = warehouse.staging_dir / self.txn_id
        self.rows: dict[str, int] = {}
        self._parts: dict[str, int] = {}
        self.closed = False

    def write(self, table: str, data: Any) -> int:
        """Stage rows for ``table`` (validated now, visible after commit). Returns the row count."""
        if self.closed:
            raise RuntimeError("transaction already closed")
        tbl = conform(table, data, self.run_id)
        if tbl.num_rows == 0:
            return 0
        target = self.dir / table
        target.mkdir(parents=True, exist_ok=True)
        n = self._parts.get(table, 0)
        part = target / f"part-{n:05d}.parquet"
        pq.write_table(tbl, part, compression="zstd")
        _fsync(part)  # on disk before COMMIT can name it: a power loss never rolls forward a torn file
        self._parts[table] = n + 1
        self.rows[table] = self.rows.get(table, 0) + tbl.num_rows
        return tbl.num_rows

    def commit(self) -> dict[str, int]:
        if self.closed:
            raise RuntimeError("transaction already closed")
        self.closed = True
        if not self.rows:
            shutil.rmtree(self.dir, ignore_errors=True)
            return {}
        # Children before parents, runs last: once a new product version is visible, so are its photos.
        order = sorted(self.rows, key=lambda t: COMMIT_ORDER.get(t, 0))
        plan = {t: f"batch-{self.run_id}-{self.txn_id.split('-')[1]}" for t in order}
        atomic_write_text(self.dir / "COMMIT", json.dumps(plan))
        self.warehouse._roll_forward(self.dir)
        return dict(self.rows)

    def abort(self) -> None:
        self.closed = True
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Warehouse:
    """The Parquet tables of one data home, and DuckDB SQL over them."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.effective_settings: dict | None = None  # recorded in every run's parameters (open_warehouse)
        self.staging_dir = self.root / "_staging"
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(exist_ok=True)
        for name, schema in TABLES.items():
            marker = self.root / name / SCHEMA_BATCH / "part-00000.parquet"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                tmp = marker.with_name(f".part.{uuid.uuid4().hex[:8]}.tmp")
                pq.write_table(schema.empty_table(), tmp)
                os.replace(tmp, marker)
        self.recover()

    @classmethod
    def from_settings(cls, settings) -> "Warehouse":
        return cls(settings.warehouse_dir)

    # --- writing -------------------------------------------------------------------------
    def begin(self, run_id: str) -> Transaction:
        return Transaction(self, run_id)

    def write(self, run_id: str, tables: Mapping[str, Any]) -> dict[str, int]:
        """Append rows to several tables in one atomic commit."""
        with self.begin(run_id) as txn:
            for table, data in tables.items():
                txn.write(table, data)
        return dict(txn.rows)

    def _roll_forward(self, staged: Path) -> None:
        """Rename a committed transaction's parts into place (idempotent; serialised by a lock)."""
        with _staging_lock(self.staging_dir):
            self._roll_forward_locked(staged)

    def _roll_forward_locked(self, staged: Path) -> None:
        try:
            plan = json.loads((staged / "COMMIT").read_text())
        except FileNotFoundError:  # another process finished this transaction already
            return
        for table, batch in plan.items():
            src, dst = staged / table, self.root / table / batch
            if src.exists() and not dst.exists():
                os.replace(src, dst)
        shutil.rmtree(staged, ignore_errors=True)

    def recover(self) -> list[str]:
        """Finish committed transactions and drop abandoned ones. Returns what it did."""
        done = []
        with _staging_lock(self.staging_dir):
            for staged in sorted(p for p in self.staging_dir.iterdir() if p.is_dir()):
                if (staged / "COMMIT").exists():
                    self._roll_forward_locked(staged)
                    done.append(f"rolled forward {staged.name}")
                    continue
                pid = int(staged.name.split("-")[0]) if staged.name.split("-")[0].isdigit() else -1
                if pid != os.getpid() and not _pid_alive(pid):
                    shutil.rmtree(staged, ignore_errors=True)
                    done.append(f"rolled back {staged.name}")
        return done

    # --- reading -------------------------------------------------------------------------
    def glob(self, table: str) -> str:
        if table not in TABLES:
            raise SchemaError(f"unknown table {table!r}; tables are: {', '.join(TABLES)}")
        return str(self.root / table / "batch-*" / "*.parquet")

    def connect(self):
        """A fresh in-memory DuckDB connection with every table (and ``*_current``) as a view."""
        import duckdb

        from warehouse.catalog import view_statements

        con = duckdb.connect(":memory:")
        for stmt in view_statements(self):
            con.execute(stmt)
        return con

    def query(self, sql: str, params: Iterable[Any] | None = None) -> pa.Table:
        con = self.connect()
        try:
            cur = con.execute(sql, list(params) if params is not None else None)
            return cur.fetch_arrow_table()
        finally:
            con.close()

    def read(self, table: str, columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        sql = f"SELECT {cols} FROM {table}" + (f" WHERE {where}" if where else "")
        return self.query(sql)

    def batches(self, table: str) -> list[Path]:
        return sorted(p for p in (self.root / table).glob("batch-*") if p.name != SCHEMA_BATCH)
