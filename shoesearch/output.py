"""Printing Arrow tables for people (aligned text) and programs (CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from typing import Any

import pyarrow as pa

MAX_CELL = 60


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ", timespec="seconds") if isinstance(value, datetime) else value.isoformat()
    text = str(value) if not isinstance(value, (list, dict)) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def format_table(table: pa.Table, fmt: str = "table", max_rows: int | None = None) -> str:
    rows = table.to_pylist()
    names = table.column_names
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, default=str, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if row[n] is None else row[n] for n in names])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use table, csv or json")
    shown = rows if max_rows is None else rows[:max_rows]
    cells = [[_cell(row[n]) for n in names] for row in shown]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''}"
    footer += f", {len(shown)} shown)" if len(shown) < len(rows) else ")"
    out.append(footer)
    return "\n".join(out)
