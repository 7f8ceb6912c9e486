"""Ledger records in the formats SIEMs import: OCSF 1.8.0 JSON, CEF, RFC 5424 syslog, CSV.

Layers, each depending only on those above it:

* ``event``   -- a record read as a security event: its person, model, outcome and severity
  (the one severity table, `SEVERITY`), and the inference it belongs to (pure);
* ``ocsf``, ``cef``, ``syslog``, ``csvrows`` -- one event in one format, with that format's
  escaping (pure);
* `export`    -- the only I/O: records in, one line (one row) each out, streamed.

docs/siem.md documents every format and field mapping.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import IO

from anticloud.errors import ExportError
from anticloud.siem.cef import to_cef
from anticloud.siem.csvrows import COLUMNS, lines, row
from anticloud.siem.event import SEVERITY, Correlator, Event, Level
from anticloud.siem.ocsf import to_ocsf
from anticloud.siem.syslog import to_syslog
from ledger import Located, Record, encode_checked

FORMATS = ("ocsf", "cef", "syslog", "csv")
_BATCH = 256  # rows rendered per write: few system calls, bounded memory


def _ocsf(event: Event, host: str | None) -> str:
    # JSON allows U+0085, U+2028 and U+2029 raw, but some line readers break lines at them:
    # escaped, each event stays on one line for every reader, and decodes to the same value.
    text = encode_checked(to_ocsf(event, host)).decode()  # strings and integers only: in the profile
    return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"


def _line(render: Callable[[Event, str | None], str]) -> Callable[[Event, str | None], str]:
    return lambda event, host: render(event, host) + "\n"


_RENDER: dict[str, Callable[[Event, str | None], str]] = {
    "ocsf": _ocsf,
    "cef": _line(to_cef),
    "syslog": _line(to_syslog),
    "csv": lambda event, _host: lines([row(event)]),
}


def export(records: Iterable[Record | Located], fmt: str, out: IO[bytes] | IO[str], *,
           host: str | None = None) -> int:
    """Write ``records`` to ``out`` in ``fmt`` (one of `FORMATS`), one event per line (for
    ``csv``, a header row, then one row per record), and return how many records were written.

    ``out`` may be a binary stream (written UTF-8) or a text stream. ``host`` names the
    appliance the ledger comes from (syslog HOSTNAME, CEF dvchost, OCSF src_endpoint), where
    the caller knows it. Records are read one at a time: memory does not grow with the ledger.
    Raises ExportError for an unknown format before anything is written.
    """
    if fmt not in _RENDER:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    render, correlator = _RENDER[fmt], Correlator()
    binary = not isinstance(out, io.TextIOBase) and "b" in getattr(out, "mode", "b")

    def write(text: str) -> None:
        out.write(text.encode() if binary else text)  # type: ignore[arg-type]

    if fmt == "csv":
        write(lines([list(COLUMNS)]))
    count, batch = 0, []
    for item in records:
        record = item.record if isinstance(item, Located) else item
        batch.append(render(correlator.event(record), host))
        count += 1
        if len(batch) >= _BATCH:
            write("".join(batch))
            batch = []
    write("".join(batch))
    return count


__all__ = ["FORMATS", "SEVERITY", "Correlator", "Event", "Level", "export", "to_cef", "to_ocsf", "to_syslog"]
