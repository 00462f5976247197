"""Parquet tables with atomic, multi-table commits.

Layout under the warehouse directory::

    <table>/batch-<run_id>-<txn>/part-00000.parquet   committed data (readers glob these)
    <table>/batch-0-schema/part-00000.parquet        an empty file: the glob never matches nothing
    _staging/<txn>/<table>/part-*.parquet             a transaction being written (invisible)
    _staging/<txn>/COMMIT                             written atomically once every part is on disk
    _staging/<txn>.lock                               flock-ed by the writer for the transaction's life

A transaction writes its parts into staging, then writes ``COMMIT`` (temp file + rename), then
renames each staged table directory into place (one ``rename`` each). Opening the warehouse
recovers: a staged transaction with ``COMMIT`` is rolled forward, one without it whose writer
is gone (its lock can be taken: see :mod:`warehouse.locks`) is rolled back. A crash therefore never
leaves half a batch visible, and readers (which only list ``batch-*`` directories) never see a
partial file. A commit that finds a staged part missing raises :class:`TransactionLost` rather
than report success. Opening also upgrades a home written by an older version (:mod:`warehouse.migrate`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import ShoesearchError
from core.files import atomic_path, atomic_write_text, fsync_file
from warehouse.views import UnreadableFile, check_query, unreadable  # noqa: F401 - UnreadableFile re-exported
from warehouse.conform import SchemaError, conform, key_of  # noqa: F401 - re-exported (cli, crawlers)
from warehouse.current import listing, manifest_mtime, valid_files
from warehouse.locks import HeldLock, file_lock, pid_alive, take_if_abandoned  # noqa: F401 - file_lock re-exported
from warehouse.schemas import TABLES

SCHEMA_BATCH = "batch-0-schema"


class TransactionLost(ShoesearchError):
    """A transaction's staged parts vanished before its commit: nothing of it was committed."""


_FORKED: list = []  # cached connections a forked child inherited: kept, never closed, in that child
COMMIT_ORDER = {"products": 1, "runs": 2}  # renamed after every other table of a transaction


def _staging_lock(staging_dir: Path):
    """Serialise roll-forwards and recovery between processes sharing a data home."""
    return file_lock(staging_dir.parent / ".staging.lock")


def _txn_lock_path(staged: Path) -> Path:
    return staged.with_name(staged.name + ".lock")


class Transaction:
    """Parts staged for one or more tables, made visible together by :meth:`commit`.

    The transaction holds an exclusive lock on ``_staging/<txn>.lock`` from its start to its end
    (taken before its directory exists): :meth:`Warehouse.recover` in any process, in any PID
    namespace, rolls the staging back only once it can take that lock, i.e. once this process is gone.
    """

    def __init__(self, warehouse: "Warehouse", run_id: str):
        self.warehouse = warehouse
        self.run_id = run_id
        self.txn_id = f"{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.dir = warehouse.staging_dir / self.txn_id
        self._lock = HeldLock(_txn_lock_path(self.dir))
        self.rows: dict[str, int] = {}
        self.nulled: dict[str, int] = {}  # {"products.price": n}: non-finite numbers stored as null (conform)
        self._parts: dict[str, int] = {}
        self.closed = False

    def write(self, table: str, data: Any) -> int:
        """Stage rows for ``table`` (validated now, visible after commit). Returns the row count."""
        if self.closed:
            raise RuntimeError("transaction already closed")
        tbl = conform(table, data, self.run_id, self.nulled)
        if tbl.num_rows == 0:
            return 0
        target = self.dir / table
        target.mkdir(parents=True, exist_ok=True)
        n = self._parts.get(table, 0)
        part = target / f"part-{n:05d}.parquet"
        try:
            pq.write_table(tbl, part, compression="zstd")
            fsync_file(part)  # on disk before COMMIT can name it: a power loss never rolls forward a torn file
        except OSError as exc:  # disk full, quota: one line naming the file (the staging is rolled back)
            part.unlink(missing_ok=True)
            raise ShoesearchError(f"cannot write {part}: {exc.strerror or exc}") from exc
        self._parts[table] = n + 1
        self.rows[table] = self.rows.get(table, 0) + tbl.num_rows
        return tbl.num_rows

    def _missing_parts(self) -> list[str]:
        return [f"{t}/part-{i:05d}.parquet" for t, n in self._parts.items() for i in range(n)
                if not (self.dir / t / f"part-{i:05d}.parquet").is_file()]

    def _lost(self, what: list[str]) -> TransactionLost:
        shown = ", ".join(what[:3]) + (f" and {len(what) - 3} more" if len(what) > 3 else "")
        return TransactionLost(f"run {self.run_id}: staged data of transaction {self.txn_id} vanished before "
                               f"its commit ({shown}); nothing of it was committed")

    def commit(self) -> dict[str, int]:
        """Make every staged part visible at once; :class:`TransactionLost` if any part is missing."""
        if self.closed:
            raise RuntimeError("transaction already closed")
        self.closed = True
        try:
            if not self.rows:
                shutil.rmtree(self.dir, ignore_errors=True)
                return {}
            missing = self._missing_parts()
            if missing:  # never write COMMIT over a gap: it would report success for rows that are gone
                shutil.rmtree(self.dir, ignore_errors=True)
                raise self._lost(missing)
            # Children before parents, runs last: once a new product version is visible, so are its photos.
            order = sorted(self.rows, key=lambda t: COMMIT_ORDER.get(t, 0))
            plan = {t: f"batch-{self.run_id}-{self.txn_id.split('-')[1]}" for t in order}
            atomic_write_text(self.dir / "COMMIT", json.dumps(plan))
            self.warehouse._roll_forward(self.dir)
            lost = [f"{t}/{b}" for t, b in plan.items() if not (self.warehouse.root / t / b).is_dir()]
            if lost:
                raise self._lost(lost)
            return dict(self.rows)
        finally:
            self._lock.release()

    def abort(self) -> None:
        self.closed = True
        shutil.rmtree(self.dir, ignore_errors=True)
        self._lock.release()

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _writer_gone(staged: Path) -> tuple[bool, HeldLock | None]:
    """Whether the writer of ``staged`` is gone, and (if so) its lock, taken, for the caller to release."""
    path = _txn_lock_path(staged)
    if not path.exists():  # staged by a version before lock files, which named the writer by PID only
        pid = staged.name.split("-")[0]
        return pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)), None
    lock = take_if_abandoned(path)
    return lock is not None, lock


def _drop_lock_if_abandoned(path: Path) -> None:
    lock = take_if_abandoned(path) if path.exists() else None
    if lock is not None:
        lock.release()


class Warehouse:
    """The Parquet tables of one data home, and DuckDB SQL over them."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.effective_settings: dict | None = None  # recorded in every run's parameters (open_warehouse)
        self.staging_dir = self.root / "_staging"
        self.broken: dict = {}  # views the last connect() left out, with the unreadable file behind each
        self._cached = None  # (what its views read, connection, broken): see _cursor
        self._cache_lock = threading.Lock()
        # A home we may not write (read-only mount, another user's files) is read as committed: recovery and
        # migration need writes and a lock file, and a reader must not fail for want of them.
        self.read_only = self.root.is_dir() and not os.access(self.root, os.W_OK)
        self.migrated: list[str] = []
        if self.read_only:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(exist_ok=True)
        for name, schema in TABLES.items():
            marker = self.root / name / SCHEMA_BATCH / "part-00000.parquet"
            if not marker.exists():
                with atomic_path(marker) as tmp:
                    pq.write_table(schema.empty_table(), tmp)
        self.recover()
        from warehouse.migrate import migrate

        self.migrated = migrate(self.root, _staging_lock(self.staging_dir))  # files of an older home upgraded

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
        """Finish committed transactions and drop abandoned ones. Returns what it did.

        A staged transaction without ``COMMIT`` is abandoned once its lock can be taken (its writer
        is gone, whatever PID namespace either process runs in); while the writer lives it is kept.
        """
        done = []
        with _staging_lock(self.staging_dir):
            for staged in sorted(p for p in self.staging_dir.iterdir() if p.is_dir()):
                if (staged / "COMMIT").exists():
                    self._roll_forward_locked(staged)
                    done.append(f"rolled forward {staged.name}")
                    _drop_lock_if_abandoned(_txn_lock_path(staged))
                    continue
                gone, lock = _writer_gone(staged)
                if gone:
                    shutil.rmtree(staged, ignore_errors=True)
                    done.append(f"rolled back {staged.name}")
                if lock is not None:
                    lock.release()  # deletes the lock file: the transaction is finished
            for path in self.staging_dir.glob("*.lock"):  # left by a writer killed after its cleanup
                if not path.with_suffix("").exists():
                    _drop_lock_if_abandoned(path)
        return done

    # --- reading -------------------------------------------------------------------------
    def glob(self, table: str) -> str:
        if table not in TABLES:
            raise SchemaError(f"unknown table {table!r}; tables are: {', '.join(TABLES)}")
        return str(self.root / table / "batch-*" / "*.parquet")

    def connect(self, confined: bool = False, limits: dict[str, str] | None = None, materialised: bool = True,
                for_query: str | None = None):
        """A fresh in-memory DuckDB connection with every table (and ``*_current``) as a view.

        ``products_current``, ``images_current`` and ``denoise_current`` read their materialised files while
        those are exact (:mod:`warehouse.current`), else (or with ``materialised=False``) they are computed.
        ``confined`` (for SQL typed by a user): the connection reads files under the warehouse directory only,
        and its settings (with ``limits``) are locked so a query cannot lift that (see ``views.confine``).
        ``for_query`` (a connection for that one query): only the views it needs (``views.views_for``).
        """
        from warehouse.views import views_for

        only = views_for(for_query) if for_query else None
        return self._connect(valid_files(self) if materialised else {}, confined, limits, only)

    def _connect(self, files: dict[str, str], confined: bool = False, limits: dict[str, str] | None = None,
                 only: set[str] | None = None):
        import duckdb

        from warehouse.views import confine, create_views

        con = duckdb.connect(":memory:")
        self.broken = create_views(con, self, current=files, only=only)  # a table with an unreadable file is left out
        if confined:
            confine(con, [self.root], limits)
        return con

    def _cursor(self):
        """A cursor on this process's cached connection, rebuilt when a commit or refresh changed what its
        views read (a directory listing per query, no file read); views over globs see new batches anyway."""
        now = listing(self)
        key = (os.getpid(), json.dumps(now), manifest_mtime(self))
        with self._cache_lock:
            cached = self._cached
            if cached is not None and cached[0][0] != os.getpid():  # inherited by fork: never touch it here
                _FORKED.append(cached)
            if cached is None or cached[0] != key:
                con = self._connect(valid_files(self, now))
                cached = self._cached = (key, con, dict(self.broken))
                if self.broken:  # retried by the next query: the file may be restored meanwhile
                    self._cached = None
            self.broken = cached[2]
            return cached[1].cursor()

    def query(self, sql: str, params: Iterable[Any] | None = None) -> pa.Table:
        """Run ``sql`` over the views; a file it cannot read is :class:`UnreadableFile` (named, one line).

        The process keeps one in-memory connection per warehouse (its views created once): a query pays
        for itself only, not for a new connection and its views.
        """
        import duckdb

        cur = self._cursor()
        try:
            check_query(sql, self.broken)
            cur.execute(sql, list(params) if params is not None else None)
            return cur.fetch_arrow_table()
        except duckdb.Error as exc:
            err = unreadable(exc, self.root)
            if err is None:
                raise
            raise err from None
        finally:
            cur.close()

    def read(self, table: str, columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        sql = f"SELECT {cols} FROM {table}" + (f" WHERE {where}" if where else "")
        return self.query(sql)

    def batches(self, table: str) -> list[Path]:
        return sorted(p for p in (self.root / table).glob("batch-*") if p.name != SCHEMA_BATCH)
