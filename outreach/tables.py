"""One plain-text table: the shape of ``outreach log``, ``loops``, ``physicians`` and the benchmark.

Columns are left-aligned, two spaces apart, each as wide as its widest
cell; the last column is not padded and no line ends in spaces, so a long
note or detail at the end of a row never widens the others.
"""

from __future__ import annotations

from collections.abc import Sequence

GAP = "  "


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The header line, then one line per row; every row has one cell per header."""
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]
    return "\n".join(_line(cells, widths) for cells in (headers, *rows))


def _line(cells: Sequence[str], widths: list[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells[:-1], widths[:-1], strict=True)]
    return GAP.join([*padded, cells[-1]]).rstrip()
