"""An event as one RFC 5424 syslog message: a pure mapping, no I/O.

``<PRI>1 TIMESTAMP HOSTNAME anticloud - MSGID [anticloud@32473 ...] MSG``

* PRI is facility 13 ("log audit") * 8 + the outcome level's severity (`event.Level`);
* TIMESTAMP is the record's ``ts`` as written (RFC 3339, UTC, six fraction digits);
* HOSTNAME is the appliance's name when the exporter is told it, else ``-`` (NILVALUE): a copy
  of a ledger does not say which host wrote it; PROCID is the writer's pid where the record
  names one (``engine.start``/``stop``), else ``-``; MSGID is the kind, cut to 32 characters;
* the structured data element's SD-ID is ``anticloud@32473``: 32473 is the private enterprise
  number RFC 5612 reserves for documentation and examples, which stands here until the
  project registers one of its own;
* in a PARAM-VALUE, ``"``, ``\\`` and ``]`` are backslashed (RFC 5424 §6.3.3). A message is one
  line, so control characters (line breaks included) and the Unicode line separators become
  U+FFFD; a value is cut at `MAX_VALUE` characters (ending in ``…``);
* MSG is the event's summary, preceded by the UTF-8 byte order mark when it is not ASCII, as
  §6.4 asks of a UTF-8 MSG.
"""

from __future__ import annotations

import re

from anticloud.siem.event import Event

FACILITY = 13  # log audit
PEN = 32473  # RFC 5612: reserved for documentation
SD_ID = f"anticloud@{PEN}"
MAX_VALUE = 1023
BOM = "\ufeff"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _clean(text: str) -> str:
    text = text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"
    return _UNSAFE.sub("\ufffd", text)


def param_value(text: str) -> str:
    """An SD-PARAM value, escaped: ``"``, ``\\`` and ``]`` backslashed, one line."""
    return _clean(text).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def header_token(text: str, limit: int) -> str:
    """A header field (HOSTNAME, APP-NAME, PROCID, MSGID): printable ASCII, at most ``limit``
    characters, ``-`` when empty; anything else becomes ``_``."""
    return _PRINTUSASCII.sub("_", text)[:limit] or "-"


def to_syslog(event: Event, host: str | None = None) -> str:
    """The RFC 5424 message for ``event`` (without its line end)."""
    record = event.record
    params: list[tuple[str, str]] = [("seq", str(record.seq)), ("hash", record.hash), ("kind", record.kind),
                                     ("outcome", event.outcome), ("severity", event.level.name)]
    if event.person:
        params.append(("person", event.person))
    if event.uid is not None:
        params.append(("uid", str(event.uid)))
    if event.model:
        params.append(("model", event.model))
    if event.inference:
        params.append(("inference", event.inference))
    if event.reason and event.outcome != "success":
        params.append(("reason", event.reason))
    pid = record.data.get("pid")
    procid = str(pid) if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else "-"
    structured = f"[{SD_ID} " + " ".join(f'{name}="{param_value(value)}"' for name, value in params) + "]"
    message = _clean(event.summary())
    if not message.isascii():
        message = BOM + message
    pri = FACILITY * 8 + event.level.syslog
    return (f"<{pri}>1 {record.ts} {header_token(host or '', 255)} anticloud {procid} "
            f"{header_token(record.kind, 32)} {structured} {message}")
