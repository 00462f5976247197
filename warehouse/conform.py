"""Rows to a table's schema: :func:`conform` (validation and casting) and the integer keys (:func:`key_of`)."""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import pyarrow as pa

from warehouse.schemas import KEY_SOURCES, NULL_IF_NOT_FINITE, TABLES


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


def _null_if_not_finite(arr, column: str, nulled: dict[str, int] | None):
    """``arr`` with NaN / infinite values as null; their number is added to ``nulled[column]``."""
    import pyarrow.compute as pc

    bad = pc.invert(pc.is_finite(arr))  # null stays null (not counted)
    n = pc.sum(bad).as_py() or 0
    if not n:
        return arr
    if nulled is not None:
        nulled[column] = nulled.get(column, 0) + n
    return pc.if_else(bad, pa.scalar(None, arr.type), arr)


def conform(table: str, data: Any, run_id: str | None = None, nulled: dict[str, int] | None = None) -> pa.Table:
    """Return ``data`` (pa.Table, list of dicts or dict of lists) cast to ``table``'s schema.

    A missing ``run_id`` column is filled with ``run_id`` when given. Non-finite numbers in the columns
    of ``schemas.NULL_IF_NOT_FINITE`` become null, counted in ``nulled`` (``{"products.price": n}``).

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
        except MemoryError:
            raise
        except (pa.ArrowException, TypeError, ValueError) as exc:  # any failed conversion (invalid, type, unsupported)
            raise SchemaError(
                f"table {table!r}: column {fld.name!r} does not convert to {fld.type}: {exc}"
            ) from None
        if fld.name in NULL_IF_NOT_FINITE.get(table, ()):
            arr = _null_if_not_finite(arr, f"{table}.{fld.name}", nulled)
        if not fld.nullable and arr.null_count:
            raise SchemaError(f"table {table!r}: column {fld.name!r} may not be null ({arr.null_count} nulls)")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema)
