"""The HTTP API: Ollama- and OpenAI-compatible routes over a running Appliance.

Invariants:

* Only ``/api/version`` and ``/api/health`` are open. Every other route needs an identity:
  a live per-person bearer token, or, on the unix socket, the peer's uid (unless the policy
  requires tokens there too). The identity is in every inference record.
* Bad input never reaches the engine. It gets a 4xx with a JSON error naming the problem, in
  the route's own error shape (Ollama's or OpenAI's), and is recorded as
  ``request.rejected`` with the identity and the reason.
* Refusals (air gap breached, model busy) are 503s, recorded the same way; a ledger that
  cannot be written refuses everything (fail closed).
* Generation streams through `TokenStream`: a slow reader pauses it, and a reader that goes
  away stops it within one token (``inference.end`` says ``client_disconnected``).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from anticloud import __version__
from anticloud import tokens as token_store
from anticloud.api import schema
from anticloud.api.identity import PEER_PROBLEM, PEER_UID
from anticloud.api.streaming import TokenStream
from anticloud.engines import Done, Message, Params
from anticloud.errors import (
    AirGapBreached,
    AnticloudError,
    Busy,
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
                                      Busy: 503, LedgerError: 503, UnsafeHomeError: 503}


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


class _Api:
    def __init__(self, appliance: Appliance) -> None:
        self.app = appliance

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
            body = json.loads(raw)
        except ValueError as exc:
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
                identity = self._identity(request)
                return await handler(request, identity)
            except (ApiError, AnticloudError, LedgerError) as exc:
                status = exc.status if isinstance(exc, ApiError) else next(
                    (code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._record_rejection(request, identity, status, message)
                return error(status, message)
        return endpoint

    def _record_rejection(self, request: Request, identity: str, status: int, reason: str) -> None:
        with contextlib.suppress(LedgerError):  # if the ledger is what failed, the refusal still stands
            self.app.writer.append("request.rejected", {"identity": identity, "path": request.url.path,
                                                        "status": status, "reason": reason[:500]})

    async def _start(self, identity: str, model: str, prompt: str | list[Message], params: Params,
                     keep_alive: float | None) -> tuple[TokenStream, str | Done, dict[str, str]]:
        """Start a generation and wait for its first piece, so refusals become HTTP errors.

        Also returns the headers to send: ``x-anticloud-inference`` names the inference in the ledger.
        """
        ids: list[str] = []

        def produce(cancelled: Callable[[], bool]) -> Any:
            return self.app.infer(model, prompt, params, identity, cancelled, keep_alive, ids.append)

        stream = TokenStream(produce)
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


def _int(value: Any) -> Any:
    """JSON Schema's "integer" admits 1.0; the engine and the ledger need a real int."""
    return None if value is None else int(value)


def _ollama_params(options: dict[str, Any], n_ctx: int) -> Params:
    stop = options.get("stop")
    predict = _int(options.get("num_predict", 128))
    return Params(temperature=float(options.get("temperature", 0.8)), top_p=float(options.get("top_p", 0.9)),
                  top_k=_int(options.get("top_k", 40)), min_p=float(options.get("min_p", 0.0)),
                  seed=_int(options.get("seed")), num_predict=n_ctx if predict < 0 else predict,
                  stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
                  repeat_penalty=float(options.get("repeat_penalty", 1.1)))


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


def create_app(appliance: Appliance) -> Starlette:
    api = _Api(appliance)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema.openapi())

    o, oa = _ollama_error, _openai_error
    routes = [
        Route("/api/version", version), Route("/api/health", health), Route("/openapi.json", openapi),
        Route("/api/generate", api.guarded(api.ollama_generate, o), methods=["POST"]),
        Route("/api/chat", api.guarded(api.ollama_chat, o), methods=["POST"]),
        Route("/api/show", api.guarded(api.show, o), methods=["POST"]),
        Route("/api/tags", api.guarded(api.tags, o)), Route("/api/ps", api.guarded(api.ps, o)),
        Route("/api/status", api.guarded(api.status, o)), Route("/api/ledger/head", api.guarded(api.ledger_head, o)),
        Route("/v1/chat/completions", api.guarded(api.openai_chat, oa), methods=["POST"]),
        Route("/v1/completions", api.guarded(api.openai_completion, oa), methods=["POST"]),
        Route("/v1/models", api.guarded(api.models, oa)),
    ]
    return Starlette(routes=routes)
