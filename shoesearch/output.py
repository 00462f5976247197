"""Printing Arrow tables for people (a table drawn by rich) and programs (CSV, JSON).

Rows are written batch by batch (:func:`write_rows`): CSV and JSON stream any number of rows in bounded
memory, and the table reads no more rows than it shows (plus one, to know there are more).

The table is for reading: rich measures every cell in terminal cells (a Chinese character is two), so
columns line up whatever the script. Nothing exact is cut: ids, paths, URLs and lists of ids *fold* onto the
next line when a column is narrower than them (join the lines back and the id is whole); free text (titles,
messages) wraps at spaces. Columns are narrowed in that order (free text first, ids last) to fit the width:
the terminal's, else ``COLUMNS``, else 100 (a pipe gets no colour codes and still every id whole). A price
(``price`` or ``*_price``) shows 2 decimals, a score 3, other decimals 4 significant digits, booleans yes/no;
CSV and JSON keep every value exact (``true``/``false``, every digit).

Text shown to a person has its control characters escaped (a crawled title holding ``ESC ] 0 ; ... BEL``
would otherwise retitle or reprogram the terminal); CSV and JSON keep the data exact. JSON is strict:
NaN and infinities, which JSON has no words for, are written as null.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterable, TextIO

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_WIDTH = 100  # columns when the output is not a terminal and COLUMNS is not set
# C0 controls (ESC, BEL, CR, LF, TAB ...), DEL, C1 controls (CSI 0x9b ...), line / paragraph separators and
# the bidirectional overrides and isolates (they reorder what follows them on the line).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029]")  # characters json.dumps(ensure_ascii=False) leaves raw
_EXACT = re.compile(r"(^|_)(id|ids|key|path|file|url|urls|dir|hash|sha256|home)$")  # names of values never cut
_PRICE = re.compile(r"(^|_)price$")
_SCORE = re.compile(r"(^|_)(score|distance|threshold|recall|precision|map|ap|r1|r5|r10)(_|$)")
GAP = 2  # spaces between columns
PROSE_CELLS, PROSE_LINES = 60, 2  # free text shows its first 60 cells, or 2 lines if more (CSV / JSON: all)


def printable(text: str) -> str:
    """``text`` with every control character shown as its escape (``\\x1b``, ``\\u202e``): safe on a terminal."""
    return _CONTROL.sub(lambda m: _escape(m.group()), text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def cell_text(name: str, value: Any) -> str:
    """``value`` of column ``name`` as the table shows it (one line, control characters escaped)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, Decimal)) and _PRICE.search(name):
        return f"{value:.2f}" if math.isfinite(value) else str(value)
    if isinstance(value, (float, Decimal)):
        return f"{value:.3f}" if _SCORE.search(name) and math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, datetime):
        text = value.isoformat(sep=" ", timespec="seconds")
        return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (list, dict)) for v in value):
        text = ", ".join("" if v is None else str(v) for v in value)  # ids stay whole: the table wraps at ", "
    elif isinstance(value, dict) and all(not isinstance(v, (list, dict)) for v in value.values()):
        text = ", ".join(f"{k}={v}" for k, v in value.items())  # {"models": 1} -> models=1
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    return printable(text)


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


def _csv_value(value: Any) -> Any:
    """A CSV cell: lists and objects as JSON (not Python's repr), booleans true / false, None as nothing, the
    rest as it is."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _csv_rows(rows: list[dict], names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow([_csv_value(row[n]) for n in names])
    return buf.getvalue()


# --- the table ----------------------------------------------------------------------------------------------
def output_width(out: TextIO | None = None) -> int:
    """Columns to draw in: ``COLUMNS`` when set, else the terminal's when ``out`` is one, else 100."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if out is not None and out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return DEFAULT_WIDTH


def _kind(name: str, values: list, cells: list[str]) -> int:
    """How a column is narrowed: 0 free text (wraps at spaces, at most ``PROSE_LINES`` lines), 1 ids, paths
    and lists of them (wrap between items, fold inside one), 2 numbers, times and short words (never)."""
    if _EXACT.search(name.lower()) or any(isinstance(v, (list, tuple, dict)) for v in values):
        return 1
    if all(isinstance(v, (int, float, Decimal, date)) for v in values if v is not None):
        return 2
    if any(" " in c for c in cells):
        return 0
    return 1 if any(len(c) > 24 for c in cells) else 2


def _floors(kind: int, head: int, natural: int, longest_word: int, first: bool) -> list[int]:
    """The narrowest a column becomes at each stage of :func:`column_widths` (never below its name; the
    first column, which names the row, folds last)."""
    if kind == 0:
        stages = [max(head, 20), natural, max(head, min(longest_word, 20)), max(head, 10), max(head, 10)]
    elif kind == 1:
        word = max(head, longest_word)
        stages = [natural, word, word, word if first else max(head, 8), max(head, 8)]
    else:
        stages = [natural] * 5
    return [min(natural, f) for f in stages]


def column_widths(natural: list[int], floors: list[list[int]], room: int) -> list[int]:
    """Widths that fit ``room`` cells (gaps excluded) where possible. Stage by stage (free text to 20 cells,
    ids to their longest item, free text to its longest word, then ids folded to 8 cells and free text to 10,
    then the first column folded too: ``floors[i][stage]``), the widest column
    that can still give loses cells, never below its floor; what still does not fit stays wider than
    ``room`` (the terminal wraps it; nothing is cut)."""
    widths = list(natural)
    for stage in range(len(floors[0]) if floors else 0):
        while sum(widths) > room:
            shrinkable = [i for i, w in enumerate(widths) if w > floors[i][stage]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            second = max([widths[i] for i in shrinkable if i != widest] + [floors[widest][stage]])
            widths[widest] -= max(1, min(widths[widest] - second, sum(widths) - room))
    return widths


def _console(width: int):
    from rich.console import Console

    return Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, no_color=True,
                   highlight=False, markup=False, emoji=False, legacy_windows=False)


def _clipped(console, text: str, width: int):
    """Free text in at most ``PROSE_LINES`` lines of ``width`` cells (more when that is under ``PROSE_CELLS``
    cells), the last ending in … when cut."""
    from rich.cells import cell_len
    from rich.text import Text

    whole = Text(text)
    lines = whole.wrap(console, width, overflow="fold") if cell_len(text) > width else [whole]
    most = max(PROSE_LINES, -(-PROSE_CELLS // width))
    if len(lines) <= most:
        return whole
    kept = [line.copy() for line in lines[:most]]
    kept[-1].rstrip()
    kept[-1].truncate(width - 1)
    kept[-1].append("…")
    return Text("\n").join(kept)


def _aligned(rows: list[dict], names: list[str], footer: str, width: int, exact: Iterable[str] = ()) -> str:
    from rich.box import Box
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    cells = [[cell_text(n, row[n]) for n in names] for row in rows]
    heads = [printable(n) for n in names]
    columns = [[c[i] for c in cells] for i in range(len(names))]
    kinds = [1 if n in exact else _kind(n, [r[n] for r in rows], col) for n, col in zip(names, columns)]
    natural = [max([cell_len(h)] + [cell_len(c) for c in col]) for h, col in zip(heads, columns)]
    floors = [_floors(k, cell_len(h), n, max([cell_len(w) for c in col for w in c.split()] + [1]), i == 0)
              for i, (k, h, n, col) in enumerate(zip(kinds, heads, natural, columns))]
    widths = column_widths(natural, floors, max(width - GAP * (len(names) - 1), len(names)))
    numeric = [any(r[n] is not None for r in rows) and all(
        isinstance(r[n], (int, float, Decimal)) and not isinstance(r[n], bool) for r in rows if r[n] is not None)
        for n in names]
    console = _console(sum(widths) + GAP * (len(names) - 1))
    table = Table(box=Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True), show_edge=False,
                  pad_edge=False, padding=(0, 1, 0, 0), header_style="none",
                  show_lines=bool(names) and widths[0] < natural[0])  # a folded first column: rows apart
    for head, w, right in zip(heads, widths, numeric):
        table.add_column(Text(head), width=w, overflow="fold", justify="right" if right else "left")
    for row in cells:
        table.add_row(*(_clipped(console, c, w) if k == 0 else Text(c) for c, w, k in zip(row, widths, kinds)))
    if names:
        console.print(table)
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
    return "\n".join([*lines, footer]) + "\n"


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
               max_rows: int | None = None, shown: list[str] | None = None, width: int | None = None,
               exact: Iterable[str] = ()) -> None:
    """Write the rows of ``batches`` (columns ``names``) to ``out`` as ``fmt``: one ``out.write`` per batch.
    The table shows the columns ``shown`` (default: all) in ``width`` columns (default: :func:`output_width`),
    never cutting the columns ``exact`` (besides ids, paths, URLs, lists: see :func:`_kind`); CSV and JSON
    always carry every column, exact."""
    if fmt == "table":
        rows, more = _first_rows(batches, max_rows)
        n = len(rows)
        footer = f"(more than {n} rows, {n} shown)" if more else f"({n} row{'s' if n != 1 else ''})"
        out.write(_aligned(rows, list(shown or names), footer, width or output_width(out), exact))
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


def format_table(table: pa.Table, fmt: str = "table", max_rows: int | None = None, shown: list[str] | None = None,
                 width: int | None = None, exact: Iterable[str] = ()) -> str:
    """``table`` as text (see :func:`write_rows`), without the final newline (for ``print``)."""
    import sys

    buf = io.StringIO()
    write_rows(table.to_batches(), table.column_names, fmt, buf, max_rows, shown, width or output_width(sys.stdout),
               exact)
    return buf.getvalue().rstrip("\n")
