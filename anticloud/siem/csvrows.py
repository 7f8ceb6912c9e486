"""An event as one RFC 4180 CSV row: a pure mapping, no I/O.

The columns are fixed (`COLUMNS`): ``seq, ts, kind, person, model, outcome, hash, data``, where
``data`` is the record's ``data`` as canonical JSON (the form the ledger hashes), whole.

Spreadsheets run a cell that begins with ``=``, ``+``, ``-`` or ``@`` (and some, one that
begins with a tab or a carriage return) as a formula, so a person or model name chosen by
whoever asked could run in an auditor's spreadsheet ("CSV injection"). Such a cell is written
with a ``'`` before it, which spreadsheets read as "this is text" and do not show; a cell that
itself begins with ``'`` gets one too, so that `unguard` (drop one leading ``'``) gives every
cell back exactly.
"""

from __future__ import annotations

import csv
import io

from anticloud.siem.event import Event
from ledger import encode_checked

COLUMNS = ("seq", "ts", "kind", "person", "model", "outcome", "hash", "data")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def guard(cell: str) -> str:
    """The cell as written: with a ``'`` before it if a spreadsheet could take it for a formula."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def unguard(cell: str) -> str:
    """The cell as it was before `guard`."""
    return cell[1:] if cell.startswith("'") else cell


def row(event: Event) -> list[str]:
    record = event.record
    return [guard(cell) for cell in (str(record.seq), record.ts, record.kind, event.person, event.model,
                                     event.outcome, record.hash, encode_checked(record.data).decode())]


def lines(rows: list[list[str]]) -> str:
    """``rows`` as RFC 4180 text: CRLF line ends, fields quoted where they hold ``,``, ``"`` or a
    line break, ``"`` doubled."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerows(rows)
    return buffer.getvalue()
