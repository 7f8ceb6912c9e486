"""Durations as people and Ollama write them: ``300``, ``"5m"``, ``"1h30m"``, ``"250ms"``, ``"-1"``.

Go's time.ParseDuration units (``ns``, ``us``, ``µs``, ``ms``, ``s``, ``m``, ``h``), chained,
with an optional sign, as Ollama's ``keep_alive`` takes them, and ``d`` for days (a token's
lifetime is counted in them); a bare number is seconds.
"""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h|d)")
_NUMBER = re.compile(r"[+-]?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
# The same language as one regular expression, for JSON Schemas (anticloud.api.schema).
PATTERN = r"^[+-]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h|d))+$|^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"


def seconds(text: str) -> float:
    """``text`` in seconds; ValueError, naming it, if it is not a duration."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.removeprefix("+"))
    parts = list(_PART.finditer(body))
    if not parts or "".join(p.group(0) for p in parts) != body:
        raise ValueError(f"{text!r} is not a duration (seconds, or such as 5m, 1h30m, 250ms)")
    return sign * sum(float(p.group(1)) * _UNITS[p.group(2)] for p in parts)
