"""Canonical JSON: the one byte string every hash and signature in anticloud is computed over.

This form is part of the documented contract (docs/ledger-format.md, "Canonical JSON"):
changing it changes every hash and invalidates every ledger and signature ever written.

It is RFC 8785 (JCS) restricted to a profile without floating point numbers:

* values are objects, arrays, strings, integers, ``true``, ``false`` and ``null``;
* integers lie in [-(2**53 - 1), 2**53 - 1], where RFC 8785's number rule writes them
  as plain decimal digits with no sign for zero, no leading zeros and no exponent;
* object member names are sorted by their UTF-16 code units, duplicates are not allowed;
* strings are written in UTF-8 with only ``"``, ``\\`` and U+0000..U+001F escaped:
  ``\\b \\t \\n \\f \\r`` in short form, the other controls as lowercase ``\\u00hh``;
  lone surrogates are not allowed;
* there is no whitespace between tokens.

Python's ``json`` writes exactly these strings and integers with ``ensure_ascii=False``.
Its ``sort_keys`` orders by code point, which agrees with UTF-16 order unless a name holds
a supplementary-plane character, so those (rare) documents take a slower exact path.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ledger.errors import EncodingError

MAX_SAFE_INTEGER = 2**53 - 1

_SUPPLEMENTARY = re.compile("[\U00010000-\U0010ffff]")
_fast = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def canonical_bytes(value: Any) -> bytes:
    """Return the canonical UTF-8 encoding of ``value``, checking that it is in the profile."""
    _check(value)
    return encode_checked(value)


def encode_checked(value: Any) -> bytes:
    """Encode a value already known to be in the profile (for instance one from `loads_strict`)."""
    text = _fast.encode(value)
    if _SUPPLEMENTARY.search(text):
        text = _encode_exact(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError("string holds a lone surrogate") from exc


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing anything outside the profile's value domain.

    Raises ValueError (json.JSONDecodeError, UnicodeDecodeError) or RecursionError. The
    result may still be written non-canonically in ``text``: compare with `encode_checked`.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return json.loads(text, parse_float=_no_float, parse_constant=_no_float, parse_int=_bounded_int)


def _no_float(literal: str) -> Any:
    raise ValueError(f"number {literal} is not an integer")


def _bounded_int(literal: str) -> int:
    number = int(literal)
    if abs(number) > MAX_SAFE_INTEGER:
        raise ValueError(f"integer {literal} is outside +-(2**53 - 1)")
    return number


def _check(value: Any) -> None:
    # Iterative so that hostile nesting cannot exhaust the Python stack.
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, (bool, str)):
            continue
        if isinstance(item, int):
            if abs(item) > MAX_SAFE_INTEGER:
                raise EncodingError(f"integer {item} is outside +-(2**53 - 1)")
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise EncodingError(f"object member name {key!r} is not a string")
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            raise EncodingError(f"{type(item).__name__} is not allowed in canonical JSON")


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _encode_exact(value: Any) -> str:
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        inner = ",".join(_fast.encode(k) + ":" + _encode_exact(v) for k, v in members)
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode_exact(v) for v in value) + "]"
    return _fast.encode(value)
