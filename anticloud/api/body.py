"""Request bodies: read within a size limit, parsed strictly, checked against the contract.

Invariants:

* Bad input never reaches the engine: a body is refused (`ApiError`, a 4xx naming the
  problem) unless it is within ``api.max_body_bytes``, strict JSON, and valid under its
  schema (`anticloud.api.schema`). The limit is checked on the declared length and again on
  the bytes as they arrive, so a body that lies about its length is cut off, not buffered.
* A body must arrive within ``api.stall_timeout`` seconds (408 otherwise): a client that
  opens a request and then trickles or withholds it holds no connection for long.
* Non-finite numbers (NaN, Infinity, and 1e999, which json reads as infinity) are refused.
* Nesting past `MAX_DEPTH` is refused on the bytes, before the recursive parser can run out
  of stack on them.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Protocol

from starlette.requests import Request

from anticloud.api import schema
from ledger import nesting_depth

# A request is 4 levels deep but for a structured-output JSON Schema, which nests as deep as its
# data does: 32 leaves such a schema about a dozen levels of objects. Anything deeper is refused unread.
MAX_DEPTH = 32


class ApiError(Exception):
    """A request refused by the API itself, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Settings(Protocol):
    def setting(self, section: str, key: str) -> Any: ...


async def read_checked(request: Request, name: str, settings: Settings) -> dict[str, Any]:
    """`read_body` within the limits in force (``api.max_body_bytes``, ``api.stall_timeout``)."""
    return await read_body(request, name, settings.setting("api", "max_body_bytes"),
                           settings.setting("api", "stall_timeout"))


async def read_body(request: Request, name: str, limit: int, deadline: float) -> dict[str, Any]:
    """The body of ``request``, at most ``limit`` bytes arriving within ``deadline`` seconds,
    valid under the schema ``name``."""
    if int(request.headers.get("content-length") or 0) > limit:
        raise ApiError(413, f"the body is over the {limit}-byte limit")
    raw = bytearray()
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > limit:
                    raise ApiError(413, f"the body is over the {limit}-byte limit")
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {deadline:g} s") from None
    try:
        body = parse(bytes(raw))
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    problem = schema.problems(name, body)
    if problem:
        raise ApiError(400, f"invalid request: {problem}")
    assert isinstance(body, dict)
    return body


def parse(raw: bytes) -> Any:
    """Strict JSON: no NaN or Infinity (json.loads takes them, and 1e999 as infinity), bounded depth."""
    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:40]} is out of range")
        return value

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    # The ledger's own rule, counted on the text without recursing (invalid UTF-8 fails below anyway).
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and nesting_depth(raw.decode(errors="replace")) > MAX_DEPTH:
        raise ValueError(f"it is nested more than {MAX_DEPTH} levels deep")
    return json.loads(raw, parse_float=finite, parse_constant=constant)
