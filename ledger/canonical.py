"""Canonical JSON: the one byte string every hash and signature in anticloud is computed over.

This form is part of the documented contract (docs/ledger-format.md, "Canonical JSON"):
changing it changes every hash and invalidates every ledger and signature ever written.

It is RFC 8785 (JCS) restricted to a profile without floating point numbers:

* values are objects, arrays, strings, integers, ``true``, ``false`` and ``null``;
* integers lie in [-(2**53 - 1), 2**53 - 1], where RFC 8785's number rule writes them
  as plain decimal digits with no sign for zero, no leading zeros and no exponent;
* arrays and objects nest at most MAX_DEPTH deep (a document that is one object is depth 1),
  so that neither the writer nor any verifier can run out of stack on a value the other
  accepted;
* object member names are sorted by their UTF-16 code units, duplicates are not allowed;
* strings are written in UTF-8 with only ``"``, ``\\`` and U+0000..U+001F escaped:
  ``\\b \\t \\n \\f \\r`` in short form, the other controls as lowercase ``\\u00hh``;
  lone surrogates are not allowed;
* there is no whitespace between tokens.

Python's ``json`` writes exactly these strings and integers with ``ensure_ascii=False``.
Its ``sort_keys`` orders by code point, which agrees with UTF-16 order unless a name holds
a supplementary-plane character, so those (rare) documents take a slower exact path.

Speed matters here (the verifier re-encodes every record), so the encoder and decoder are
built once, and ASCII text skips the search for supplementary-plane characters.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ledger.errors import EncodingError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 64

_SUPPLEMENTARY = re.compile("[\U00010000-\U0010ffff]")
_fast = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
# CPython's C encoder, built once: JSONEncoder.encode would build it again on every call.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encoder = None if _c_make_encoder is None else _c_make_encoder(
    {}, None, json.encoder.encode_basestring, None, ":", ",", True, False, False)


def _encode_one(value: Any) -> str:
    if _c_encoder is None or isinstance(value, str):
        text: str = _fast.encode(value)
        return text
    return "".join(_c_encoder(value, 0))


def canonical_bytes(value: Any, max_depth: int = MAX_DEPTH) -> bytes:
    """Return the canonical UTF-8 encoding of ``value``, checking that it is in the profile.

    ``max_depth`` is lower where the value is embedded in a larger document (a record's data).
    """
    _check(value, max_depth)
    return encode_checked(value)


def encode_checked(value: Any) -> bytes:
    """Encode a value already known to be in the profile (for instance one from `loads_strict`)."""
    text = _encode_one(value)
    if not text.isascii() and _SUPPLEMENTARY.search(text):
        text = _encode_exact(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError("string holds a lone surrogate") from exc


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing anything outside the profile's value domain.

    Raises ValueError (json.JSONDecodeError, UnicodeDecodeError, or nesting deeper than
    MAX_DEPTH, checked before the recursive decoder runs). The result may still be written
    non-canonically in ``text``: compare with `encode_checked`.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    _check_depth(text, MAX_DEPTH)
    try:
        return _decoder.decode(text)
    except RecursionError:  # unreachable after the depth check; kept so no caller ever sees one
        raise ValueError("JSON nested too deeply") from None


def parse_canonical(raw: bytes, max_depth: int = MAX_DEPTH) -> Any | None:
    """The value ``raw`` encodes if ``raw`` is exactly its canonical encoding, else None."""
    try:
        text = raw.decode("utf-8")
        _check_depth(text, max_depth)
        value = _decoder.raw_decode(text)[0]  # trailing bytes fail the comparison
        return value if encode_checked(value) == raw else None
    except (ValueError, RecursionError, EncodingError):
        return None


_DEPTH_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text``, without recursing.

    Exact for valid JSON; for invalid JSON it is exact over the longest valid prefix, which
    is as far as any decoder descends before it fails.
    """
    depth = deepest = 0
    for token in _DEPTH_TOKENS.finditer(text):
        c = token.group()
        if c == "[" or c == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif c == "]" or c == "}":
            depth -= 1
    return deepest


def _check_depth(text: str, max_depth: int) -> None:
    # Cheap bound first: a text with no more brackets than allowed cannot nest deeper.
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise ValueError(f"JSON nests arrays and objects more than {max_depth} deep")


def _no_float(literal: str) -> Any:
    raise ValueError(f"number {literal} is not an integer")


def _bounded_int(literal: str) -> int:
    number = int(literal)
    if abs(number) > MAX_SAFE_INTEGER:
        raise ValueError(f"integer {literal} is outside +-(2**53 - 1)")
    return number


_decoder = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_float, parse_int=_bounded_int)


class _TooDeep(Exception):
    pass


def _check(value: Any, max_depth: int) -> None:
    try:
        _walk(value, max_depth)
    except (_TooDeep, RecursionError):  # RecursionError: a value that contains itself
        raise EncodingError(f"value nests arrays and objects more than {max_depth} deep") from None


def _walk(value: Any, room: int) -> None:
    """Check ``value``; ``room`` is how many more arrays or objects may enclose what is inside."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return
    if kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise EncodingError(f"integer {value} is outside +-(2**53 - 1)")
        return
    if room <= 0 and (kind is dict or kind is list or kind is tuple):
        raise _TooDeep
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise EncodingError(f"object member name {key!r} is not a string")
            _walk(item, room - 1)
    elif kind is list or kind is tuple:
        for item in value:
            _walk(item, room - 1)
    elif isinstance(value, (str, int, dict, list, tuple)):  # subclasses, such as enums: slower, same rules
        _walk(_BASE[next(t for t in _BASE if isinstance(value, t))](value), room)
    else:
        raise EncodingError(f"{kind.__name__} is not allowed in canonical JSON")


_BASE: dict[type, Any] = {bool: bool, str: str, int: int, dict: dict, list: list, tuple: tuple}


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _encode_exact(value: Any) -> str:
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        inner = ",".join(_encode_one(k) + ":" + _encode_exact(v) for k, v in members)
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode_exact(v) for v in value) + "]"
    return _encode_one(value)
