"""Excel workbooks (.xlsx) as training data: each sheet of conversations read as the CSV file an export of it would be.

Written by hand over openpyxl's cells (not pandas) because what a shop sees in Excel must be what trains: a cell
shown as "15%" is 15%, not 0.15; an order number formatted "00001234" keeps its zeros; a formula Excel never
calculated, or an error value (#N/A), is an error at its cell, not an empty or literal answer.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from ecombot.data.readers import NoRows, NotATable, RawFile, message_text, read_table
from ecombot.errors import DataError

OLE_SIGNATURE = b"\xd0\xcf\x11\xe0"  # an old .xls, or an .xlsx saved with a password (encrypted in an OLE container)
CURRENCY = re.compile(r"[$€£¥]")


def shown(cell: Any) -> str:
    """A cell's value as Excel shows it in the usual formats: percent, fixed decimals, zero-padded numbers, a
    currency sign; a whole number without ".0"; a date alone when its format has no time; TRUE/FALSE; otherwise the
    number as Python writes it. Formats it does not know (fractions, custom text) give the plain number."""
    value, form = cell.value, (getattr(cell, "number_format", None) or "General").split(";")[0]
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        midnight = (value.hour, value.minute, value.second, value.microsecond) == (0, 0, 0, 0)
        return value.date().isoformat() if midnight and not re.search(r"[hs]", form.lower()) else value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if not isinstance(value, (int, float)):
        return str(value)
    digits = re.sub(r'"[^"]*"|\[[^\]]*\]|\\.', "", form)  # quoted text, [$€-407] codes, escaped characters out
    if re.fullmatch(r"0+", digits) and float(value).is_integer():
        return str(int(value)).zfill(len(digits))
    percent = "%" in digits
    number = value * 100 if percent else value
    fixed = re.search(r"\.(0+)", digits)
    if fixed:
        decimals = len(fixed.group(1))
        text = f"{number:,.{decimals}f}" if "," in digits else f"{number:.{decimals}f}"
    elif float(number).is_integer():
        text = f"{int(number):,}" if "," in digits else str(int(number))
    else:
        text = repr(round(number, 12)) if percent else str(number)
    sign = CURRENCY.search(form)
    return (sign.group(0) if sign else "") + text + ("%" if percent else "")


def read_xlsx(path: Path) -> RawFile:
    """Every visible sheet holding a table of conversations, read as a CSV file's rows are (places "sheet 'FAQ' row
    N" as Excel numbers rows; a title above the header skipped, and said). A shop splitting its FAQ by topic
    ("Shipping", "Returns") gets every sheet, the sheet's name as the category of rows without one; sheets without
    question and answer columns (notes, a cover page) and sheets of another layout than the first are named in
    "read from", not read."""
    from openpyxl import load_workbook

    with path.open("rb") as f:
        if f.read(4) == OLE_SIGNATURE:
            raise DataError(path, None, None, "an old (.xls) or password-protected Excel workbook: save it as .xlsx "
                                              "without a password, or as CSV")
    try:
        # values as last calculated; the formulas themselves, to tell a formula never calculated from an empty cell
        values, formulas = (load_workbook(path, read_only=True, data_only=True),
                            load_workbook(path, read_only=True, data_only=False))
    except MemoryError:
        raise
    except Exception as exc:  # openpyxl raises zip, XML, key and value errors alike for a damaged file
        raise DataError(path, None, None, f"not a readable Excel workbook (.xlsx): {exc}") from None
    try:
        sheets = [sheet for sheet in values.worksheets if sheet.sheet_state == "visible"]  # hidden: lookup tables
        filled = [sheet for sheet in sheets if any(cell.value is not None and str(cell.value).strip()
                                                   for row in rows_of(sheet) for cell in row)]
        if not filled:
            raise DataError(path, None, None, "the workbook's visible sheets are empty")
        tables = [(sheet.title, *sheet_cells(path, sheet, formulas[sheet.title])) for sheet in filled]
    finally:
        values.close()
        formulas.close()
    read: list[tuple[str, RawFile]] = []
    skipped: list[str] = []
    refusal: NotATable | None = None  # why the first sheet not read is no table of conversations
    for title, table, cell_error in tables:
        if cell_error and len(tables) == 1:
            raise cell_error
        try:
            raw = sheet_table(path, title, table)
        except (NotATable, NoRows) as exc:
            if len(tables) == 1:
                raise
            empty = isinstance(exc, NoRows)
            skipped.append(f"'{title}'" + (" (no rows)" if empty else ""))
            refusal = refusal or (None if empty else exc)
            continue
        if cell_error:  # a table of conversations with a cell that cannot be read
            raise cell_error
        if read and raw.format != read[0][1].format:
            skipped.append(f"'{title}' (another layout)")
        else:
            read.append((title, raw))
    if not read and refusal is None:
        raise NoRows(path, None, None, f"every sheet has a header but no rows (sheets: {', '.join(skipped)})")
    if not read:
        raise NotATable(path, None, None, f"no sheet has question and answer columns (sheets: {', '.join(skipped)}); "
                                          f"sheet '{tables[0][0]}': {refusal.problem}")
    if len(read) > 1:
        for title, raw in read:
            for conversation in raw.conversations:
                conversation.category = conversation.category or title
    conversations = [conversation for _, raw in read for conversation in raw.conversations]
    places = "; ".join(raw.read_from for _, raw in read) + (f" (not read: {', '.join(skipped)})" if skipped else "")
    return RawFile(path, read[0][1].format, conversations, read_from=places)


def sheet_cells(path: Path, sheet, formulas) -> tuple[list[list[str]], DataError | None]:
    """The sheet's cells as text, and the first cell that cannot be read (an error only where the sheet turns out to
    be a table of conversations)."""
    computed = {(n, i) for n, row in enumerate(rows_of(formulas), start=1)
                for i, cell in enumerate(row) if cell.data_type == "f"}
    errors: list[DataError] = []

    def text(n: int, i: int, cell: Any) -> str:
        try:
            return cell_text(path, sheet.title, n, i, cell, (n, i) in computed)
        except DataError as exc:
            errors.append(exc)
            return ""

    table = [[text(n, i, cell) for i, cell in enumerate(row)] for n, row in enumerate(rows_of(sheet), start=1)]
    return table, errors[0] if errors else None


def rows_of(sheet) -> Iterator[tuple]:
    """The sheet's rows from row 1 as they are stored: the dimension a file declares can be stale (a sheet declaring
    A1:B3 that holds 7 rows and 3 columns would be read as 3 rows of 2)."""
    sheet.reset_dimensions()
    return sheet.iter_rows()


def cell_text(path: Path, title: str, row: int, column: int, cell: Any, formula: bool) -> str:
    if cell.value is None and formula:
        raise DataError(path, f"sheet '{title}' row {row}", f"column {column + 1}",
                        "a formula Excel never calculated (the file holds no value for it): open and save it in "
                        "Excel or LibreOffice, or paste the values")
    if getattr(cell, "data_type", None) == "e":
        raise DataError(path, f"sheet '{title}' row {row}", f"column {column + 1}",
                        f"an Excel error value, {cell.value}")
    return shown(cell)


def sheet_table(path: Path, title: str, table: list[list[str]]) -> RawFile:
    numbered = [(n, row) for n, row in enumerate(table, start=1) if any(cell.strip() for cell in row)]
    # the header: the first row naming two columns or more (a title above the table, "Voltwise FAQ export", is not)
    at = next((i for i, (_, row) in enumerate(numbered) if sum(bool(cell.strip()) for cell in row) > 1), 0)
    (first, header), body = numbered[at], numbered[at + 1:]
    width = max((i + 1 for i, cell in enumerate(header) if cell.strip()), default=0)
    header = [cell.strip() for cell in header[:width]]
    names = [name.lower() for name in header]

    def rows() -> Iterator[tuple[str, dict[str, str]]]:
        for n, row in body:
            beyond = [i for i, cell in enumerate(row[width:], start=width + 1) if cell.strip()]
            if beyond:
                raise DataError(path, f"sheet '{title}' row {n}", None,
                                f"a value in column {beyond[0]} but the header has {width}")
            cells = row[:width] + [""] * (width - len(row))  # a row stored shorter than the header
            yield f"sheet '{title}' row {n}", dict(zip(names, [message_text(cell) for cell in cells]))

    raw = read_table(path, f"sheet '{title}' row {first}", names, header, rows(), kind="xlsx")
    sheet = f"sheet '{title}'" + (f", header on row {first}" if at else "")
    raw.read_from = ", ".join(filter(None, (sheet, raw.read_from)))
    return raw
