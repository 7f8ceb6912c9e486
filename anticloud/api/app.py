"""The HTTP API: Ollama- and OpenAI-compatible routes over a running Appliance.

Invariants:

* Only ``/api/version`` and ``/api/health`` are open. Every other route, ``/openapi.json``
  included, needs an identity: a live per-person bearer token, or, on the unix socket, the
  peer's uid (unless the policy requires tokens there too). The identity is in every
  inference record. The policy in force is the one last recorded, taken over before each
  request (`Appliance.refresh`).
* Bad input never reaches the engine. It gets a 4xx with a JSON error naming the problem, in
  the route's own error shape (Ollama's or OpenAI's), and is recorded as
  ``request.rejected`` with the identity and the reason. That holds for unknown routes (404)
  and wrong methods (405), non-finite numbers and bodies nested too deep, too.
* Refusals (air gap breached, model busy, engine failure) are 503s, recorded the same way; a
  ledger that cannot be written refuses everything (fail closed). Whatever else goes wrong
  in a route is one recorded line (500), never a traceback.
* Repeated identical rejections are recorded compactly (`anticloud.api.rejections`): none
  is lost, and a flood does not grow the ledger without bound.
* Generation streams through `TokenStream`: a slow reader pauses it, and a reader that goes
  away stops it within one token (``inference.end`` says ``client_disconnected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from anticloud import __version__
from anticloud import tokens as token_store
from anticloud.api import schema
from anticloud.api.identity import PEER_PROBLEM, PEER_UID
from anticloud.api.rejections import RejectionLog
from anticloud.api.streaming import TokenStream
from anticloud.engines import Done, Message, Params
from anticloud.errors import (
    AirGapBreached,
    AnticloudError,
    Busy,
    ConfigError,
    EngineError,
    LoadRefused,
    ModelError,
    PromptTooLong,
    UnsafeHomeError,
)
from anticloud.identity import load_identity
from anticloud.runtime import Appliance
from ledger import LedgerError
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.record import key_id_of, utc_timestamp

INFERENCE_HEADER = "x-anticloud-inference"

# One table maps domain errors to HTTP statuses; the first matching class wins.
STATUS: dict[type[Exception], int] = {PromptTooLong: 400, ModelError: 404, LoadRefused: 409, AirGapBreached: 503,
                                      Busy: 503, EngineError: 503, ConfigError: 503, LedgerError: 503,
                                      UnsafeHomeError: 503}
MAX_DEPTH = 16  # the deepest request the schemas allow is 4 levels: anything past this is refused unread


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _ollama_error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _openai_error(status: int, message: str) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    kind = "authentication_error" if status == 401 else kind
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def _seconds(value: str | float | int | None, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"(-?[0-9.]+)(ms|s|m|h)?", value)
    number = float(match.group(1)) if match else default
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2) if match else None]
    return number * unit


def _parse(raw: bytes) -> Any:
    """Strict JSON: no NaN or Infinity (json.loads takes them, and 1e999 as infinity), bounded depth."""
    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:40]} is out of range")
        return value

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    if _depth_exceeds(raw, MAX_DEPTH):
        raise ValueError(f"it is nested more than {MAX_DEPTH} levels deep")
    return json.loads(raw, parse_float=finite, parse_constant=constant)


def _depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``: checked on the bytes, before the
    recursive parser can run out of stack on them."""
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _error_for(path: str) -> Callable[[int, str], Response]:
    """The error shape of the route family: OpenAI's under /v1/, Ollama's elsewhere."""
    return _openai_error if path == "/v1" or path.startswith("/v1/") else _ollama_error


class _Api:
    def __init__(self, appliance: Appliance, rejection_interval: float = 60.0) -> None:
        self.app = appliance

        def append(data: dict[str, Any]) -> None:
            appliance.writer.append("request.rejected", data)

        self.rejections = RejectionLog(append, rejection_interval)

    # -- the gate every protected route passes --------------------------------------------------

    def _identity(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            token = token_store.identify(token_store.load(self.app.home), header[7:].strip())
            if token is None:
                raise ApiError(401, "the bearer token is unknown or revoked")
            return f"token:{token.name}"
        uid = request.scope.get(PEER_UID)
        if not self.app.config.get("api", "tokens_on_unix_socket"):
            if uid is not None:
                return f"uid:{uid}"
            if PEER_PROBLEM in request.scope:  # a unix socket peer whose real uid is unknown: never guess
                raise ApiError(503, request.scope[PEER_PROBLEM])
        raise ApiError(401, "a bearer token is required (anticloud tokens create NAME)")

    async def _body(self, request: Request, name: str) -> dict[str, Any]:
        limit = self.app.config.get("api", "max_body_bytes")
        if int(request.headers.get("content-length") or 0) > limit:
            raise ApiError(413, f"the body is over the {limit}-byte limit")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"the body is over the {limit}-byte limit")
        try:
            body = _parse(bytes(raw))
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        problem = schema.problems(name, body)
        if problem:
            raise ApiError(400, f"invalid request: {problem}")
        assert isinstance(body, dict)
        return body

    def _model(self, name: str | None) -> str:
        model = (name or self.app.config.get("inference", "default_model")).removesuffix(":latest")
        self.app.store.get(model)  # ModelError (404) for an unknown model, before anything is loaded
        return model

    def guarded(self, handler: Callable[[Request, str], Awaitable[Response]],
                error: Callable[[int, str], Response]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            identity = "anonymous"
            try:
                self.app.refresh()  # the policy recorded last, tokens on the socket included
                identity = self._identity(request)
                return await handler(request, identity)
            except (ApiError, AnticloudError, LedgerError) as exc:
                status = exc.status if isinstance(exc, ApiError) else next(
                    (code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)
                return self.reject(request, identity, status, _one_line(exc), error)
            except Exception as exc:  # a defect: still one recorded line, never a traceback
                return self.reject(request, identity, 500, f"internal error: {type(exc).__name__}: {_one_line(exc)}",
                                   error)
        return endpoint

    def reject(self, request: Request, identity: str, status: int, message: str,
               error: Callable[[int, str], Response]) -> Response:
        with contextlib.suppress(LedgerError):  # if the ledger is what failed, the refusal still stands
            self.rejections.record(identity, request.url.path, status, message)
        return error(status, message)

    async def unrouted(self, request: Request, exc: Exception) -> Response:
        """404 and 405, in the shape of the route family asked for, recorded like any rejection."""
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        identity = "anonymous"
        with contextlib.suppress(Exception):  # who asked, if they said: the answer is the same either way
            self.app.refresh()
            identity = self._identity(request)
        message = (f"{request.method} is not allowed on {request.url.path}" if status == 405
                   else "no such route")
        return self.reject(request, identity, status, message, _error_for(request.url.path))

    async def _start(self, identity: str, model: str, prompt: str | list[Message], params: Params,
                     keep_alive: float | None) -> tuple[TokenStream, str | Done, dict[str, str]]:
        """Start a generation and wait for its first piece, so refusals become HTTP errors.

        Also returns the headers to send: ``x-anticloud-inference`` names the inference in the ledger.
        """
        ids: list[str] = []

        def produce(cancelled: Callable[[], bool]) -> Any:
            return self.app.infer(model, prompt, params, identity, cancelled, keep_alive, ids.append)

        stream = TokenStream(produce, self.app.config.get("api", "stall_timeout"))
        kind, value = await stream.get()
        if kind == "error":
            raise value
        if kind == "end":
            raise ApiError(500, "the engine produced nothing")
        return stream, value, {INFERENCE_HEADER: ids[0]} if ids else {}

    # -- Ollama ----------------------------------------------------------------------------------------

    async def ollama_generate(self, request: Request, identity: str) -> Response:
        body = await self._body(request, "OllamaGenerate")
        prompt = body["prompt"] if not body.get("system") else f"{body['system']}\n\n{body['prompt']}"
        return await self._ollama(body, identity, prompt, chat=False)

    async def ollama_chat(self, request: Request, identity: str) -> Response:
        body = await self._body(request, "OllamaChat")
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        return await self._ollama(body, identity, messages, chat=True)

    async def _ollama(self, body: dict[str, Any], identity: str, prompt: str | list[Message], chat: bool) -> Response:
        start = time.perf_counter_ns()
        model = self._model(body.get("model"))
        params = _ollama_params(body.get("options") or {}, self.app.config.compute_for(model).n_ctx)
        default = float(self.app.config.get("engine", "keep_alive"))
        keep_alive = _seconds(body["keep_alive"], default) if "keep_alive" in body else None
        stream, first, headers = await self._start(identity, model, prompt, params, keep_alive)

        def line(piece: str | Done) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "created_at": utc_timestamp()}
            text = "" if isinstance(piece, Done) else piece
            out.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
            if isinstance(piece, Done):
                total = time.perf_counter_ns() - start
                out.update(done=True, done_reason=piece.done_reason, total_duration=total,
                           load_duration=max(0, total - piece.prompt_eval_ns - piece.eval_ns),
                           prompt_eval_count=piece.prompt_tokens, prompt_eval_duration=piece.prompt_eval_ns,
                           eval_count=piece.completion_tokens, eval_duration=piece.eval_ns)
            else:
                out["done"] = False
            return out

        if body.get("stream", True):
            return StreamingResponse(_lines(stream, first, lambda p: json.dumps(line(p)) + "\n"),
                                     media_type="application/x-ndjson", headers=headers)
        pieces = await _collect(stream, first)
        final = line(pieces[-1]) if isinstance(pieces[-1], Done) else line(Done("stop", 0, 0, 0, 0))
        text = "".join(p for p in pieces if isinstance(p, str))
        final.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
        return JSONResponse(final, headers=headers)

    async def tags(self, request: Request, identity: str) -> Response:
        return JSONResponse({"models": [self._describe(m.name) for m in self.app.store.list()]})

    async def show(self, request: Request, identity: str) -> Response:
        body = await self._body(request, "OllamaShow")
        model = self._model(body.get("model") or body.get("name"))
        stored = self.app.store.get(model)
        return JSONResponse({"details": self._describe(model)["details"], "model_info": {
            "manifest": stored.digest, "files": [f.path for f in stored.manifest.files],
            "chat_templates": [t.sha3_256 for t in stored.manifest.chat_templates]},
            "parameters": "", "template": "", "modelfile": ""})

    async def ps(self, request: Request, identity: str) -> Response:
        return JSONResponse({"models": [{**self._describe(str(s["name"])), "expires_in": s["expires_in"]}
                                        for s in self.app.pool.status()]})

    def _describe(self, name: str) -> dict[str, Any]:
        stored = self.app.store.get(name)
        weights = stored.manifest.files[0]
        return {"name": f"{name}:latest", "model": f"{name}:latest", "modified_at": stored.manifest.created,
                "size": sum(f.size for f in stored.manifest.files), "digest": weights.sha3_256,
                "details": {"format": "gguf", "family": "", "families": [], "parameter_size": "",
                            "quantization_level": ""}}

    # -- OpenAI ------------------------------------------------------------------------------------------

    async def openai_chat(self, request: Request, identity: str) -> Response:
        body = await self._body(request, "OpenAIChat")
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        return await self._openai(body, identity, messages, chat=True)

    async def openai_completion(self, request: Request, identity: str) -> Response:
        body = await self._body(request, "OpenAICompletion")
        return await self._openai(body, identity, body["prompt"], chat=False)

    async def _openai(self, body: dict[str, Any], identity: str, prompt: str | list[Message], chat: bool) -> Response:
        model = self._model(body["model"])
        stop = body.get("stop")
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or (512 if chat else 16)
        params = Params(temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                        seed=_int(body.get("seed")), stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
                        num_predict=_int(limit),
                        repeat_penalty=1.0, top_k=0, min_p=0.0)
        stream, first, headers = await self._start(identity, model, prompt, params, None)
        ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}", int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(text: str | None, finish: str | None, first_chunk: bool = False) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": text or ""} if first_chunk else (
                    {"content": text} if text is not None else {})
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        def usage(done: Done) -> dict[str, int]:
            return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                    "total_tokens": done.prompt_tokens + done.completion_tokens}

        if body.get("stream"):
            include_usage = (body.get("stream_options") or {}).get("include_usage", False)
            sent = {"first": True}

            def event(piece: str | Done) -> str:
                base = {"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": created, "model": model}
                if isinstance(piece, Done):
                    chunks = [{**base, "choices": [choice(None, piece.done_reason)]}]
                    if include_usage:
                        chunks.append({**base, "choices": [], "usage": usage(piece)})
                    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
                chunk = {**base, "choices": [choice(piece, None, sent["first"])]}
                sent["first"] = False
                return f"data: {json.dumps(chunk)}\n\n"

            return StreamingResponse(_lines(stream, first, event), media_type="text/event-stream", headers=headers)
        pieces = await _collect(stream, first)
        done = pieces[-1] if isinstance(pieces[-1], Done) else Done("stop", 0, 0, 0, 0)
        text = "".join(p for p in pieces if isinstance(p, str))
        reply = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": done.done_reason} \
            if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": done.done_reason}
        return JSONResponse({"id": ident, "object": kind, "created": created, "model": model, "choices": [reply],
                             "usage": usage(done)}, headers=headers)

    async def models(self, request: Request, identity: str) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "anticloud"} for m in self.app.store.list()]})

    # -- operators -----------------------------------------------------------------------------------------

    async def status(self, request: Request, identity: str) -> Response:
        return JSONResponse(self.app.status())

    async def ledger_head(self, request: Request, identity: str) -> Response:
        head, genesis = self.app.writer.head, self.app.writer.genesis
        key = load_identity(self.app.home)
        from ledger.checkpoint import raw_public_key

        signed = sign_checkpoint(Checkpoint(genesis.data["ledger_id"], head.seq, head.hash, utc_timestamp(),
                                            key_id_of(raw_public_key(key.public_key()))), key)
        return JSONResponse({"seq": head.seq, "hash": head.hash, "checkpoint": signed.to_json()})


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return (text.splitlines() or [type(exc).__name__])[0][:500] if text.strip() else type(exc).__name__


def _int(value: Any) -> Any:
    """JSON Schema's "integer" admits 1.0; the engine and the ledger need a real int."""
    return None if value is None else int(value)


def _ollama_params(options: dict[str, Any], n_ctx: int) -> Params:
    default = Params()  # the defaults are Params's own: an option left out keeps it
    stop = options.get("stop")
    predict = _int(options.get("num_predict", default.num_predict))
    return Params(temperature=float(options.get("temperature", default.temperature)),
                  top_p=float(options.get("top_p", default.top_p)), top_k=_int(options.get("top_k", default.top_k)),
                  min_p=float(options.get("min_p", default.min_p)), seed=_int(options.get("seed", default.seed)),
                  num_predict=n_ctx if predict < 0 else predict,
                  stop=(stop,) if isinstance(stop, str) else tuple(stop or default.stop),
                  repeat_penalty=float(options.get("repeat_penalty", default.repeat_penalty)))


async def _lines(stream: TokenStream, first: str | Done, encode: Callable[[str | Done], str]) -> AsyncIterator[bytes]:
    """The response body; if the client goes away this is cancelled, and so is the generation."""
    try:
        yield encode(first).encode()
        if isinstance(first, Done):
            return
        while True:
            kind, value = await stream.get()
            if kind != "piece":
                return
            yield encode(value).encode()
            if isinstance(value, Done):
                return
    finally:
        stream.cancel()


async def _collect(stream: TokenStream, first: str | Done) -> list[str | Done]:
    pieces = [first]
    try:
        while not isinstance(pieces[-1], Done):
            kind, value = await stream.get()
            if kind == "error":
                raise value
            if kind == "end":
                break
            pieces.append(value)
    finally:
        stream.cancel()
    return pieces


def create_app(appliance: Appliance, rejection_interval: float = 60.0) -> Starlette:
    """The application; repeated rejections are counted per ``rejection_interval`` seconds."""
    api = _Api(appliance, rejection_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def flush_when_due() -> None:
            while True:
                await asyncio.sleep(min(rejection_interval, 5.0))
                with contextlib.suppress(LedgerError):  # kept, and tried again at the next flush
                    await asyncio.to_thread(api.rejections.flush)

        task = asyncio.create_task(flush_when_due())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(LedgerError):  # then engine.stop cannot be recorded either
                api.rejections.flush(force=True)  # the server stops: every count is written

    async def version(request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(request: Request) -> Response:  # behind an identity, like every route but two
        return JSONResponse(schema.openapi())

    o, oa = _ollama_error, _openai_error
    routes = [
        Route("/api/version", version), Route("/api/health", health),
        Route("/openapi.json", api.guarded(lambda request, identity: openapi(request), o)),
        Route("/api/generate", api.guarded(api.ollama_generate, o), methods=["POST"]),
        Route("/api/chat", api.guarded(api.ollama_chat, o), methods=["POST"]),
        Route("/api/show", api.guarded(api.show, o), methods=["POST"]),
        Route("/api/tags", api.guarded(api.tags, o)), Route("/api/ps", api.guarded(api.ps, o)),
        Route("/api/status", api.guarded(api.status, o)), Route("/api/ledger/head", api.guarded(api.ledger_head, o)),
        Route("/v1/chat/completions", api.guarded(api.openai_chat, oa), methods=["POST"]),
        Route("/v1/completions", api.guarded(api.openai_completion, oa), methods=["POST"]),
        Route("/v1/models", api.guarded(api.models, oa)),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: api.unrouted, 405: api.unrouted})
