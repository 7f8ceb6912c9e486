"""The grammars exported lines are checked against, written from their specifications, and the
checks the SIEM tests share: OCSF against the vendored JSON Schema, CEF against the CEF
implementation standard, syslog against the ABNF of RFC 5424 §6, CSV with the stdlib reader."""

from __future__ import annotations

import csv
import io
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

OCSF_SCHEMA = Path(__file__).parent / "ocsf" / "api_activity-1.8.0.schema.json"

# -- RFC 5424 §6, ABNF rule by rule ------------------------------------------------------------
PRINTUSASCII = r"[\x21-\x7e]"
NILVALUE = "-"
PRI = r"<(?P<prival>[0-9]{1,3})>"  # PRIVAL = 1*3DIGIT, range 0 .. 191 (checked below)
VERSION = r"(?P<version>[1-9][0-9]{0,2})"  # NONZERO-DIGIT 0*2DIGIT
FULL_DATE = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
PARTIAL_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,6})?"
TIME_OFFSET = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
TIMESTAMP = rf"(?P<timestamp>{NILVALUE}|{FULL_DATE}T{PARTIAL_TIME}{TIME_OFFSET})"
HOSTNAME = rf"(?P<hostname>{NILVALUE}|{PRINTUSASCII}{{1,255}})"
APP_NAME = rf"(?P<app>{NILVALUE}|{PRINTUSASCII}{{1,48}})"
PROCID = rf"(?P<procid>{NILVALUE}|{PRINTUSASCII}{{1,128}})"
MSGID = rf"(?P<msgid>{NILVALUE}|{PRINTUSASCII}{{1,32}})"
SD_NAME = r"[\x21\x23-\x3c\x3e-\x5c\x5e-\x7e]{1,32}"  # PRINTUSASCII but '=', ']' and '"' (SP is outside it)
# PARAM-VALUE is UTF-8 with '"', '\' and ']' escaped; our writer escapes every backslash, so a
# backslash is always followed by one of the three.
PARAM_VALUE = r'(?:[^"\\\]]|\\["\\\]])*'
SD_PARAM = rf'{SD_NAME}="{PARAM_VALUE}"'
SD_ELEMENT = rf"\[{SD_NAME}(?: {SD_PARAM})*\]"
STRUCTURED_DATA = rf"(?P<sd>{NILVALUE}|(?:{SD_ELEMENT})+)"
MSG = r"(?: (?P<msg>.*))?"
SYSLOG_MSG = re.compile(rf"{PRI}{VERSION} {TIMESTAMP} {HOSTNAME} {APP_NAME} {PROCID} {MSGID} {STRUCTURED_DATA}{MSG}\Z",
                        re.DOTALL)
SD_PARAM_PARTS = re.compile(rf'({SD_NAME})="({PARAM_VALUE})"')

# -- CEF (ArcSight Common Event Format implementation standard) ---------------------------------
HEADER_FIELD = r"(?:[^|\\\r\n]|\\[|\\])*"  # '|' and '\' escaped; no line break
CEF_LINE = re.compile(
    rf"CEF:(?P<version>0)\|(?P<vendor>{HEADER_FIELD})\|(?P<product>{HEADER_FIELD})\|(?P<dversion>{HEADER_FIELD})"
    rf"\|(?P<signature>{HEADER_FIELD})\|(?P<name>{HEADER_FIELD})\|(?P<severity>[0-9]|10|Low|Medium|High|Very-High)"
    r"\|(?P<extension>.*)\Z", re.DOTALL)
EXT_KEY = r"[A-Za-z0-9_]+"
EXT_VALUE = r"(?:[^\\=\r\n]|\\[\\=nr])*?"  # '\' and '=' escaped; line breaks as \n or \r
CEF_EXTENSION = re.compile(rf"(?:{EXT_KEY}={EXT_VALUE}(?: {EXT_KEY}={EXT_VALUE})*)?\Z", re.DOTALL)
CEF_PAIR = re.compile(rf"({EXT_KEY})=({EXT_VALUE})(?= {EXT_KEY}=|\Z)", re.DOTALL)


def syslog_fields(line: str) -> dict[str, Any]:
    """The parts of an RFC 5424 line, its SD-PARAMs unescaped; AssertionError if it breaks the grammar."""
    assert "\n" not in line and "\r" not in line, line
    match = SYSLOG_MSG.match(line)
    assert match, f"not RFC 5424: {line[:300]!r}"
    assert 0 <= int(match["prival"]) <= 191
    params = {name: re.sub(r'\\(["\\\]])', r"\1", value) for name, value in SD_PARAM_PARTS.findall(match["sd"])}
    return {**match.groupdict(), "params": params}


def cef_fields(line: str) -> dict[str, Any]:
    """The parts of a CEF line, header and extensions unescaped; AssertionError if it breaks the grammar."""
    assert "\n" not in line and "\r" not in line, line
    match = CEF_LINE.match(line)
    assert match, f"not CEF: {line[:300]!r}"
    assert CEF_EXTENSION.match(match["extension"]), f"bad CEF extension: {match['extension'][:300]!r}"
    header = {k: re.sub(r"\\([|\\])", r"\1", v) for k, v in match.groupdict().items() if k != "extension"}
    unescape = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}
    extensions = {key: re.sub(r"\\([\\=nr])", lambda m: unescape[m[1]], value)
                  for key, value in CEF_PAIR.findall(match["extension"])}
    rebuilt = " ".join(f"{k}={v}" for k, v in CEF_PAIR.findall(match["extension"]))
    assert rebuilt == match["extension"], "the extension splits into key=value pairs and nothing else"
    return {**header, "ext": extensions}


@cache
def ocsf_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(OCSF_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def ocsf_errors(event: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in ocsf_validator().iter_errors(event)]


def csv_rows(text: str) -> list[list[str]]:
    """The rows of RFC 4180 text, read by the stdlib reader (which must find CRLF line ends)."""
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))
