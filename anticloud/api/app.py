"""The HTTP API: Ollama- and OpenAI-compatible routes over a running Appliance, assembled.

The parts, one job each: `gate` (who is asking), `body` (reading and checking a request's
body), `generation` (a recorded generation, streamed or collected), and the route families
`ollama`, `openai`, `embeddings` (both APIs' embedding routes) and `operator`. This module
puts them together and answers for every refusal in one place.

Invariants:

* Before any route, a request whose Host or Origin shows a misled browser (DNS rebinding, a
  cross-site request) is refused (`anticloud.api.origin`), recorded like every refusal.
* Only ``/`` (the console's page for a browser, what Ollama answers for anyone else),
  ``/api/version``, ``/api/health``, the console's own files and its sign-in are open. Every
  other route, ``/openapi.json`` included, passes the gate (`anticloud.api.gate`), after taking
  over the policy last recorded (`Appliance.refresh`).
* Every refusal gets a 4xx or 5xx with a JSON error naming the problem, in the route
  family's own error shape (Ollama's or OpenAI's), and is recorded as ``request.rejected``
  with the identity, who sent it (``actor``, anticloud.actor) and the reason. That holds for
  unknown routes (404) and wrong methods (405) too.
* What a request causes to be recorded (its inference, a model it loads) is recorded as its
  actor's act (`anticloud.actor.acting`).
* Domain errors map to HTTP statuses in one table, `STATUS`. Refusals (air gap breached,
  model busy, engine failure) are 503s; a ledger that cannot be written refuses everything
  (fail closed). Whatever else goes wrong in a route is one recorded line (500), never a
  traceback.
* Repeated identical rejections are recorded compactly (`anticloud.api.rejections`): none
  is lost, and a flood does not grow the ledger without bound. Their counts are flushed
  periodically and when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from anticloud import __version__, actor
from anticloud.api import ollama, openai, origin, schema
from anticloud.api.body import ApiError
from anticloud.api.console import ConsoleRoutes, wants_page
from anticloud.api.embeddings import EmbeddingRoutes
from anticloud.api.gate import caller, identify
from anticloud.api.identity import PEER_PROBLEM, PEER_UID
from anticloud.api.ollama import OllamaRoutes
from anticloud.api.openai import OpenAIRoutes
from anticloud.api.operator import OperatorRoutes
from anticloud.api.rejections import RejectionLog
from anticloud.errors import (
    AirGapBreached,
    AnticloudError,
    Busy,
    ConfigError,
    ContentSealError,
    EngineError,
    LoadRefused,
    ModelError,
    PromptTooLong,
    SchemaRefused,
    UnsafeHomeError,
    Unsupported,
)
from anticloud.runtime import Appliance
from ledger import LedgerError

# One table maps domain errors to HTTP statuses; the first matching class wins.
STATUS: dict[type[Exception], int] = {PromptTooLong: 400, SchemaRefused: 400, Unsupported: 400, ModelError: 404,
                                      LoadRefused: 409, AirGapBreached: 503, Busy: 503, EngineError: 503,
                                      ConfigError: 503, LedgerError: 503, UnsafeHomeError: 503,
                                      ContentSealError: 503}

Handler = Callable[[Request, str], Awaitable[Response]]  # a protected route, given the caller's identity
ErrorShape = Callable[[int, str], Response]


def status_of(exc: Exception) -> int:
    """The HTTP status that answers ``exc``: its own for an ApiError, else from `STATUS`, else 500."""
    if isinstance(exc, ApiError):
        return exc.status
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)


def error_for(path: str) -> ErrorShape:
    """The error shape of the route family: OpenAI's under /v1/, Ollama's elsewhere."""
    return openai.error if path == "/v1" or path.startswith("/v1/") else ollama.error


class _Guard:
    """Passes every protected request through the gate, and answers and records every refusal."""

    def __init__(self, appliance: Appliance, rejection_interval: float, session: Callable[[str, str], str]) -> None:
        self.app = appliance
        self.rejections = RejectionLog(appliance.record_rejected, rejection_interval)
        self.session = session  # a console cookie's identity

    def guarded(self, handler: Handler, error: ErrorShape) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            identity = caller(request)
            try:
                self.app.refresh()  # the policy recorded last, tokens on the socket included
                identity = identify(self.app, request, self.session)
                with actor.acting(_actor(request, identity)):  # what the request causes is recorded as its act
                    return await handler(request, identity)
            except (ApiError, AnticloudError, LedgerError) as exc:
                if isinstance(exc, LedgerError):
                    self.app.refused(exc)  # no record, no operation: counted in the outage it falls in
                response = self.reject(request, identity, status_of(exc), _one_line(exc), error)
                if isinstance(exc, Busy):
                    response.headers["Retry-After"] = str(exc.retry_after)
                return response
            except Exception as exc:  # noqa: BLE001 -- a defect: still one recorded line, never a traceback
                return self.reject(request, identity, 500, f"internal error: {type(exc).__name__}: {_one_line(exc)}",
                                   error)
        return endpoint

    def open(self, handler: Callable[[Request, actor.Actor], Awaitable[Response]],
             error: ErrorShape) -> Callable[[Request], Awaitable[Response]]:
        """A route that needs no identity (console sign-in): its refusals answered and recorded alike."""
        async def endpoint(request: Request) -> Response:
            identity = caller(request)
            try:
                self.app.refresh()
                return await handler(request, _actor(request, identity))
            except (ApiError, AnticloudError, LedgerError) as exc:
                return self.reject(request, identity, status_of(exc), _one_line(exc), error)
        return endpoint

    def screen(self, inner: ASGIApp) -> ASGIApp:
        """Refuse (403, recorded) a request whose Host or Origin says a browser was misled
        (`anticloud.api.origin`), before any route sees it."""
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                request = Request(scope)
                tcp = PEER_UID not in scope and PEER_PROBLEM not in scope
                why = origin.refusal(request.headers.get("host"), request.headers.get("origin"), tcp)
                if why is not None:
                    response = self.reject(request, caller(request), 403, why, error_for(request.url.path))
                    await response(scope, receive, send)
                    return
            await inner(scope, receive, send)
        return app

    def reject(self, request: Request, identity: str, status: int, message: str, error: ErrorShape) -> Response:
        with contextlib.suppress(LedgerError):  # if the ledger is what failed, the refusal still stands
            self.rejections.record(identity, request.url.path, status, message, _actor(request, identity))
        return error(status, message)

    async def unrouted(self, request: Request, exc: Exception) -> Response:
        """404 and 405, in the shape of the route family asked for, recorded like any rejection."""
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        identity = caller(request)
        with contextlib.suppress(Exception):  # who asked, if they said: the answer is the same either way
            self.app.refresh()
            identity = identify(self.app, request, self.session)
        message = (f"{request.method} is not allowed on {request.url.path}" if status == 405
                   else "no such route")
        return self.reject(request, identity, status, message, error_for(request.url.path))


def _actor(request: Request, identity: str) -> actor.Actor:
    """Who sent ``request``: its identity (`identify`, or `caller` if it was refused first) and the socket peer."""
    return actor.of_identity(identity, request.scope.get(PEER_UID))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return (text.splitlines() or [type(exc).__name__])[0][:500] if text.strip() else type(exc).__name__


def create_app(appliance: Appliance, rejection_interval: float = 60.0) -> Starlette:
    """The application; repeated rejections are counted per ``rejection_interval`` seconds.

    Reads the identity key now, once (NotInitializedError or KeyFileError if it cannot be).
    """
    console = ConsoleRoutes(appliance)
    guard = _Guard(appliance, rejection_interval, console.identity_of)
    rejections = guard.rejections
    ollama_routes, openai_routes = OllamaRoutes(appliance), OpenAIRoutes(appliance)
    embedding_routes = EmbeddingRoutes(appliance)
    operator_routes = OperatorRoutes(appliance, appliance.head_signer())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def flush_when_due() -> None:
            while True:
                await asyncio.sleep(min(rejection_interval, 5.0))
                with contextlib.suppress(LedgerError):  # kept, and tried again at the next flush
                    await asyncio.to_thread(rejections.flush)
                with contextlib.suppress(LedgerError):  # an idle session's end: recorded at the next sweep
                    await asyncio.to_thread(console.sweep)

        task = asyncio.create_task(flush_when_due())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(LedgerError):  # then engine.stop cannot be recorded either
                rejections.flush(force=True)  # the server stops: every count is written

    async def version(request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def root(request: Request) -> Response:  # the console for a browser; what Ollama answers for probes
        return await console.page(request) if wants_page(request) else PlainTextResponse("Ollama is running")

    async def openapi(request: Request, identity: str) -> Response:  # behind an identity, like every route but two
        return JSONResponse(schema.openapi())

    g, o, oa = guard.guarded, ollama.error, openai.error
    ol, op, ad, em = ollama_routes, openai_routes, operator_routes, embedding_routes
    routes = [
        Route("/", root, methods=["GET", "HEAD"]), Route("/api/version", version), Route("/api/health", health),
        Route("/openapi.json", g(openapi, o)),
        Route("/api/generate", g(ol.generate, o), methods=["POST"]),
        Route("/api/chat", g(ol.chat, o), methods=["POST"]),
        Route("/api/show", g(ol.show, o), methods=["POST"]),
        Route("/api/embed", g(em.embed, o), methods=["POST"]),
        Route("/api/embeddings", g(em.embeddings, o), methods=["POST"]),
        Route("/api/tags", g(ol.tags, o)), Route("/api/ps", g(ol.ps, o)),
        Route("/api/status", g(ad.status, o)), Route("/api/ledger/head", g(ad.ledger_head, o)),
        Route("/v1/chat/completions", g(op.chat, oa), methods=["POST"]),
        Route("/v1/completions", g(op.completion, oa), methods=["POST"]),
        Route("/v1/embeddings", g(em.openai, oa), methods=["POST"]),
        Route("/v1/models", g(op.models, oa)), Route("/v1/models/{model:path}", g(op.model, oa)),
        Route("/console/session", guard.open(console.sign_in, o), methods=["POST"]),
        Route("/console/session", guard.open(console.session, o), methods=["GET"]),
        Route("/console/session/end", g(console.sign_out, o), methods=["POST"]),
        Route("/console/models", g(console.models, o)), Route("/console/status", g(console.status, o)),
        Route("/console/receipt/{inference:str}", g(console.receipt, o)),
        Route("/console/proof/{inference:str}", g(console.proof, o)),
        Route("/console/{name:str}", guard.open(lambda request, _: console.asset(request), o)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: guard.unrouted, 405: guard.unrouted})
    app.add_middleware(_Screened, guard=guard)
    return app


class _Screened:
    """`_Guard.screen` as a starlette middleware, outermost: no route runs for a misled browser."""

    def __init__(self, app: ASGIApp, guard: _Guard) -> None:
        self.screened = guard.screen(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.screened(scope, receive, send)
