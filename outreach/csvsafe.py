"""CSV cells that a spreadsheet shows as text, never runs as a formula.

A cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage
return, which some spreadsheets skip before looking) is read by Excel,
LibreOffice and Google Sheets as a formula: ``=HYPERLINK(...)`` in a note or
a subject would run on the practice's computer when the log is opened
(OWASP "CSV Injection"). Every CSV the project writes passes its cells
through ``safe_cell``, which prefixes such text with a single quote, as
OWASP recommends; the spreadsheet then shows it as typed.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """``value`` as a cell that cannot start a formula; numbers and other non-text as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(row: dict) -> dict:
    """Every cell of a ``csv.DictWriter`` row made safe."""
    return {key: safe_cell(value) for key, value in row.items()}
