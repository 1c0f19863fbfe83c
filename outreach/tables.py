"""One plain-text table (the shape of ``outreach log``, ``loops``, ``physicians`` and the benchmark), and JSON and CSV.

Columns are left-aligned, two spaces apart, each as wide as its widest
cell; the last column is not padded and no line ends in spaces, so a long
note or detail at the end of a row never widens the others.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from datetime import date, datetime

from outreach.csvsafe import safe_row

GAP = "  "


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The header line, then one line per row; every row has one cell per header."""
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]
    return "\n".join(_line(cells, widths) for cells in (headers, *rows))


def _line(cells: Sequence[str], widths: list[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells[:-1], widths[:-1], strict=True)]
    return GAP.join([*padded, cells[-1]]).rstrip()


def _plain(row: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime | date) else v) for k, v in row.items()}


def as_json(rows: Sequence[dict]) -> str:
    """Rows as a JSON array, times in ISO 8601 (``--format json``)."""
    return json.dumps([_plain(row) for row in rows], ensure_ascii=False, indent=1)


def as_csv(rows: Sequence[dict], fields: Sequence[str]) -> str:
    """Rows as CSV with a header, every cell safe from spreadsheet formulas (``--format csv``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(safe_row({k: "" if v is None else v for k, v in _plain(row).items()}) for row in rows)
    return out.getvalue().rstrip("\n")


def as_format(
    rows: Sequence[dict],
    fmt: str,
    fields: Sequence[str],
    headers: Sequence[str],
    cells: Callable[[dict], Sequence[str]],
    empty: str,
) -> str:
    """``--format json``, ``csv`` (every field) or ``table`` (``headers``, one row of ``cells`` per row)."""
    if fmt == "json":
        return as_json(rows)
    if fmt == "csv":
        return as_csv(rows, fields)
    return format_table(headers, [cells(row) for row in rows]) if rows else empty
