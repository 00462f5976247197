"""Printing Arrow tables for people (aligned text) and programs (CSV, JSON).

Rows are written batch by batch (:func:`write_rows`): CSV and JSON stream any number of rows in bounded
memory, and the aligned table reads no more rows than it shows (plus one, to know there are more).
Text shown to a person has its control characters escaped (a crawled title holding ``ESC ] 0 ; ... BEL``
would otherwise retitle or reprogram the terminal); CSV and JSON keep the data exact. JSON is strict:
NaN and infinities, which JSON has no words for, are written as null.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Iterable, TextIO

if TYPE_CHECKING:
    import pyarrow as pa

MAX_CELL = 60
# C0 controls (ESC, BEL, CR, LF, TAB ...), DEL, C1 controls (CSI 0x9b ...), line / paragraph separators and
# the bidirectional overrides and isolates (they reorder what follows them on the line).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029]")  # characters json.dumps(ensure_ascii=False) leaves raw


def printable(text: str) -> str:
    """``text`` with every control character shown as its escape (``\\x1b``, ``\\u202e``): safe on a terminal."""
    return _CONTROL.sub(lambda m: _escape(m.group()), text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ", timespec="seconds") if isinstance(value, datetime) else value.isoformat()
    text = str(value) if not isinstance(value, (list, dict)) else json.dumps(value, ensure_ascii=False, default=str)
    text = printable(text)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _finite(value: Any) -> Any:
    """``value`` with NaN / infinite floats (at any depth) replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_rows(rows: list[dict]) -> str:
    """``rows`` as the items of a JSON list, one indented object each (without the list's brackets)."""
    text = json.dumps(_finite(rows), ensure_ascii=False, default=str, indent=1, allow_nan=False)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text[2:-2])  # still the same string, read back


def _csv_rows(rows: list[dict], names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if row[n] is None else row[n] for n in names])
    return buf.getvalue()


def _aligned(rows: list[dict], names: list[str], footer: str) -> str:
    cells = [[_cell(row[n]) for n in names] for row in rows]
    heads = [printable(n) for n in names]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    out = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    out.append(footer)
    return "\n".join(out) + "\n"


def _first_rows(batches: Iterable[pa.RecordBatch], limit: int | None) -> tuple[list[dict], bool]:
    """Up to ``limit`` rows, and whether there were more (no batch is read past the first extra row)."""
    rows: list[dict] = []
    for batch in batches:
        if limit is not None and len(rows) + batch.num_rows > limit:
            rows += batch.slice(0, limit - len(rows)).to_pylist()
            return rows, True
        rows += batch.to_pylist()
    return rows, False


def write_rows(batches: Iterable[pa.RecordBatch], names: list[str], fmt: str, out: TextIO,
               max_rows: int | None = None) -> None:
    """Write the rows of ``batches`` (columns ``names``) to ``out`` as ``fmt``: one ``out.write`` per batch."""
    if fmt == "table":
        rows, more = _first_rows(batches, max_rows)
        n = len(rows)
        footer = f"(more than {n} rows, {n} shown)" if more else f"({n} row{'s' if n != 1 else ''})"
        out.write(_aligned(rows, names, footer))
    elif fmt == "csv":
        out.write(_header(names))
        for batch in batches:
            out.write(_csv_rows(batch.to_pylist(), names))
    elif fmt == "json":
        sep = "[\n"
        for batch in batches:
            if batch.num_rows:
                out.write(sep + _json_rows(batch.to_pylist()))
                sep = ",\n"
        out.write("[]\n" if sep == "[\n" else "\n]\n")
    else:
        raise ValueError(f"unknown format {fmt!r}: use table, csv or json")


def _header(names: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(names)
    return buf.getvalue()


def format_table(table: pa.Table, fmt: str = "table", max_rows: int | None = None) -> str:
    """``table`` as text (see :func:`write_rows`), without the final newline (for ``print``)."""
    buf = io.StringIO()
    write_rows(table.to_batches(), table.column_names, fmt, buf, max_rows)
    return buf.getvalue().rstrip("\n")
