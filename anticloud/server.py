"""The HTTP server: a starlette app over a running Appliance.

It listens only on loopback or a unix socket, with CORS off. Routes: ``GET /api/health``,
``GET /api/status``, and ``POST /api/generate`` (Ollama's request and NDJSON stream shape).
The full Ollama and OpenAI APIs build on this.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from anticloud.engines import Done, Params
from anticloud.errors import AirGapBreached, AnticloudError, Busy, EngineError, LoadRefused, ModelError
from anticloud.runtime import Appliance

# One table maps domain errors to HTTP statuses; the first matching class wins.
STATUS: dict[type[AnticloudError], int] = {AirGapBreached: 503, Busy: 503, ModelError: 404, LoadRefused: 409,
                                           EngineError: 500}


def loopback_only(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(app: Appliance) -> Starlette:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def status(request: Request) -> Response:
        return JSONResponse(app.status())

    async def generate(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
                raise ValueError("the body must be a JSON object with a string prompt")
            model = body.get("model") or app.config.get("inference", "default_model")
            options = body.get("options") or {}
            params = Params(**{k: v for k, v in options.items() if k in Params.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": f"invalid request: {exc}"}, status_code=400)
        client = f"peer:{request.client.host}" if request.client else "unix-socket"
        stream = app.infer(model, body["prompt"], params, client)
        try:
            first = next(stream)  # refusals (breach, busy, unknown model) surface here, before any byte is sent
        except AnticloudError as exc:
            code = next((c for t, c in STATUS.items() if isinstance(exc, t)), 500)
            return JSONResponse({"error": str(exc)}, status_code=code)
        if body.get("stream", True):
            return StreamingResponse(_ndjson(model, first, stream), media_type="application/x-ndjson")
        text, done = _collect(first, stream)
        return JSONResponse({"model": model, "response": text, **done})

    return Starlette(routes=[Route("/api/health", health), Route("/api/status", status),
                             Route("/api/generate", generate, methods=["POST"])])


def _ndjson(model: str, first: str | Done, rest: Iterator[str | Done]) -> Iterator[bytes]:
    for piece in _chain(first, rest):
        if isinstance(piece, Done):
            yield json.dumps({"model": model, "response": "", "done": True, **_final(piece)}).encode() + b"\n"
        else:
            yield json.dumps({"model": model, "response": piece, "done": False}).encode() + b"\n"


def _collect(first: str | Done, rest: Iterator[str | Done]) -> tuple[str, dict[str, Any]]:
    text, final = [], {}
    for piece in _chain(first, rest):
        if isinstance(piece, Done):
            final = {"done": True, **_final(piece)}
        else:
            text.append(piece)
    return "".join(text), final


def _chain(first: str | Done, rest: Iterator[str | Done]) -> Iterator[str | Done]:
    yield first
    yield from rest


def _final(done: Done) -> dict[str, Any]:
    return {"done_reason": done.done_reason, "prompt_eval_count": done.prompt_tokens,
            "prompt_eval_duration": done.prompt_eval_ns, "eval_count": done.completion_tokens,
            "eval_duration": done.eval_ns}
