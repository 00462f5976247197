"""Bring a data home written by an older shoesearch up to the current format, when it is opened.

Format 2 added the integer keys (``product_key``, ``image_key``) to ``products``, ``images`` and
``denoise``. A home without ``_format.json`` (or with an older version in it) is checked file by
file: every committed Parquet file of those tables that lacks a key column is rewritten with it,
computed by :func:`warehouse.conform.key_of` exactly as a write computes it, into a temp file that
then replaces the original (one ``rename``: a reader sees the old file or the new one, never a
torn one). The migration is idempotent, so a crash midway is finished by the next open; it runs
under the staging lock (one process migrates, the others wait and find it done), and
``_format.json`` is written last.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from core.files import atomic_path, atomic_write_text
from warehouse.conform import SchemaError, conform
from warehouse.schemas import KEY_SOURCES, TABLES

FORMAT_FILE = "_format.json"
FORMAT_VERSION = 2  # 1: before the integer keys; 2: product_key / image_key


def home_format(root: Path) -> int:
    """The format version recorded in the warehouse directory ``root`` (1 when none is)."""
    try:
        return int(json.loads((root / FORMAT_FILE).read_text())["version"])
    except FileNotFoundError:
        return 1
    except (ValueError, KeyError, TypeError):
        raise SchemaError(f"{root / FORMAT_FILE} is not a shoesearch format file; delete it to re-check the home")


def migrate(root: Path, lock) -> list[str]:
    """Upgrade the warehouse directory ``root`` in place (``lock``: the staging lock). Returns what it did."""

    if home_format(root) >= FORMAT_VERSION:
        return []
    with lock:
        if home_format(root) >= FORMAT_VERSION:  # another process migrated it while we waited
            return []
        done = backfill_keys(root)
        atomic_write_text(root / FORMAT_FILE, json.dumps({"version": FORMAT_VERSION}) + "\n")
    return done


def backfill_keys(root: Path) -> list[str]:
    """Rewrite every committed file of a keyed table that lacks a key column. Returns the files."""
    done = []
    for table, schema in TABLES.items():
        keys = [k for k in KEY_SOURCES if schema.get_field_index(k) >= 0]
        if not keys:
            continue
        for stale in (root / table).glob("batch-*/.*.tmp"):  # a migration killed before its rename
            stale.unlink(missing_ok=True)
        for part in sorted((root / table).glob("batch-*/*.parquet")):
            if all(k in pq.read_schema(part).names for k in keys):
                continue
            _rewrite(table, part)
            done.append(str(part.relative_to(root)))
    return done


def _rewrite(table: str, part: Path) -> None:
    try:
        upgraded = conform(table, pq.read_table(part))  # fills the keys from the ids, as a write does
    except SchemaError as exc:
        raise SchemaError(f"cannot upgrade {part} to the current format: {exc}") from None
    with atomic_path(part) as tmp:
        pq.write_table(upgraded, tmp, compression="zstd")
