"""An event as one ArcSight Common Event Format (CEF) line: a pure mapping, no I/O.

``CEF:0|anticloud|anticloud|<version>|<kind>|<summary>|<severity 0-10>|<extensions>``

Escaping, as the CEF implementation standard has it:

* in the header, ``\\`` becomes ``\\\\`` and ``|`` becomes ``\\|``; a header holds no line
  break, so CR and LF become a space;
* in an extension value, ``\\`` becomes ``\\\\``, ``=`` becomes ``\\=``, a line break (CRLF,
  LF or CR) becomes ``\\n`` or ``\\r``; ``|`` needs none there;
* other control characters, and the Unicode line and paragraph separators (U+0085, U+2028,
  U+2029), which the standard has no escape for and which some readers take for a line
  break, become U+FFFD;
* a value is cut at `MAX_VALUE` characters (the last one then ``…``): a line is an alert,
  not the record; the ledger line is in the OCSF and CSV exports whole.
"""

from __future__ import annotations

import re

from anticloud import __version__
from anticloud.siem.event import Event

MAX_VALUE = 1023
_UNSAFE = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_HEADER_BREAK = re.compile(r"\r\n|[\r\n]")


def _clean(text: str) -> str:
    return _UNSAFE.sub("\ufffd", text)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def header_field(text: str) -> str:
    """A header field, escaped: ``\\`` and ``|`` backslashed, line breaks made spaces."""
    return _clean(_HEADER_BREAK.sub(" ", _cut(text))).replace("\\", "\\\\").replace("|", "\\|")


def extension_value(text: str) -> str:
    """An extension value, escaped: ``\\`` and ``=`` backslashed, line breaks as ``\\n``/``\\r``."""
    escaped = _clean(_cut(text)).replace("\\", "\\\\").replace("=", "\\=")
    return escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def to_cef(event: Event, host: str | None = None) -> str:
    """The CEF line for ``event`` (without its line end)."""
    record = event.record
    pairs: list[tuple[str, str]] = [
        ("rt", str(event.time_ms)),
        ("externalId", str(record.seq)),
        ("cat", record.kind.split(".")[0]),
        ("act", record.kind),
        ("outcome", event.outcome),
    ]
    if event.person:
        pairs.append(("suser", event.person))
    if event.uid is not None:
        pairs.append(("suid", str(event.uid)))
    if host:
        pairs.append(("dvchost", host))
    if event.reason and event.outcome != "success":
        pairs.append(("reason", event.reason))
    if record.kind == "request.rejected" and isinstance(record.data.get("path"), str):
        pairs.append(("request", record.data["path"]))
    pairs += [("cs1Label", "recordHash"), ("cs1", record.hash)]
    if event.model:
        pairs += [("cs2Label", "model"), ("cs2", event.model)]
    if event.inference:
        pairs += [("cs3Label", "inferenceId"), ("cs3", event.inference)]
    summary = event.summary()
    pairs.append(("msg", summary))
    header = ["CEF:0", "anticloud", "anticloud", __version__, record.kind, summary, str(event.level.cef)]
    extensions = " ".join(f"{key}={extension_value(value)}" for key, value in pairs)
    return "|".join([header[0], *(header_field(h) for h in header[1:])]) + "|" + extensions
