"""Embeddings: Ollama's /api/embed and its legacy /api/embeddings, and OpenAI's /v1/embeddings.

Replies follow each API's wire format, so their clients work unchanged: Ollama's
``{"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}`` and
legacy ``{"embedding"}``, OpenAI's ``{"object": "list", "data", "model", "usage"}`` with
each vector as JSON numbers or, for ``"encoding_format": "base64"``, as the base64 of its
little-endian float32 bytes.

Invariants:

* Every vector is computed and recorded (`anticloud.embedding`) before the reply begins, so a
  refusal is an HTTP error in the route family's shape, never a partial reply.
* /api/embed and /v1/embeddings return L2-normalised vectors (``dimensions``: the first ones,
  normalised again), as Ollama and OpenAI do; /api/embeddings returns the model's own, as
  Ollama's legacy route does. Ollama's routes truncate an input too long for the context
  unless ``"truncate": false`` (the legacy one never does: it refuses); OpenAI's refuses it,
  as OpenAI does.
* An empty Ollama input loads the model ahead of use (with ``keep_alive`` 0, unloads it),
  as an empty prompt does for /api/generate; nothing is embedded or recorded as an inference.
* Of Ollama's options, ``num_ctx`` is applied as for a generation: the window one input may
  fill (cut to it, or refused). The others bear on no embedding: they are accepted, as clients
  send them, and those given a value are recorded as ignored.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from anticloud.api.body import read_checked
from anticloud.api.generation import as_int, resolve_model
from anticloud.api.ollama import seconds
from anticloud.embedding import Embedded, EmbedRequest
from anticloud.runtime import Appliance


class EmbeddingRoutes:
    def __init__(self, appliance: Appliance) -> None:
        self.app = appliance

    async def embed(self, request: Request, identity: str) -> Response:
        """Ollama's /api/embed: ``input`` a string or a list of them, normalised vectors."""
        began = time.perf_counter_ns()
        body = await read_checked(request, "OllamaEmbed", self.app)
        model = resolve_model(self.app, body.get("model"))
        given = body.get("input") or []
        texts = [given] if isinstance(given, str) else list(given)
        if not texts:
            await asyncio.to_thread(self.app.preload, model, self._keep_alive(body))
            return JSONResponse({"model": model, "embeddings": []})
        asked = EmbedRequest(texts, truncate=body.get("truncate", True), dimensions=as_int(body.get("dimensions")),
                             num_ctx=_num_ctx(body), request=_ignored(body))
        done = await self._run(model, asked, identity, self._keep_alive(body))
        total = time.perf_counter_ns() - began
        return JSONResponse({"model": model, "embeddings": [done.floats(i) for i in range(len(texts))],
                             "total_duration": total, "load_duration": max(0, total - done.compute_ns),
                             "prompt_eval_count": sum(done.tokens)})

    async def embeddings(self, request: Request, identity: str) -> Response:
        """Ollama's legacy /api/embeddings: one ``prompt``, its raw vector as ``embedding``."""
        body = await read_checked(request, "OllamaEmbeddings", self.app)
        model = resolve_model(self.app, body.get("model"))
        if not body.get("prompt"):
            await asyncio.to_thread(self.app.preload, model, self._keep_alive(body))
            return JSONResponse({"embedding": []})
        asked = EmbedRequest([body["prompt"]], truncate=False, normalise=False, num_ctx=_num_ctx(body),
                             request=_ignored(body))
        done = await self._run(model, asked, identity, self._keep_alive(body))
        return JSONResponse({"embedding": done.floats(0)})

    async def openai(self, request: Request, identity: str) -> Response:
        """OpenAI's /v1/embeddings: ``input`` a string or a list of them, as floats or base64."""
        body = await read_checked(request, "OpenAIEmbeddings", self.app)
        model = resolve_model(self.app, body["model"])
        texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        said = {"user": body["user"]} if "user" in body else None  # the client's own label, beside the identity
        asked = EmbedRequest(texts, truncate=False, dimensions=as_int(body.get("dimensions")), request=said)
        done = await self._run(model, asked, identity, None)
        as_base64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(vector).decode() if as_base64 else done.floats(i)}
                for i, vector in enumerate(done.vectors)]
        tokens = sum(done.tokens)
        return JSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _run(self, model: str, asked: EmbedRequest, identity: str, keep_alive: float | None) -> Embedded:
        """The recorded embedding, in a worker thread; stopped between two inputs if this request is
        cancelled (the server stopping)."""
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(self.app.embed, model, asked, identity, cancelled.is_set, keep_alive)
        finally:
            cancelled.set()

    def _keep_alive(self, body: dict[str, Any]) -> float | None:
        default = float(self.app.setting("engine", "keep_alive"))
        return seconds(body["keep_alive"], default) if "keep_alive" in body else None


def _num_ctx(body: dict[str, Any]) -> int:
    return int((body.get("options") or {}).get("num_ctx") or 0)


def _ignored(body: dict[str, Any]) -> dict[str, Any] | None:
    options = sorted(name for name, value in (body.get("options") or {}).items()
                     if value is not None and name != "num_ctx")
    return {"ignored": [f"options.{name}" for name in options]} if options else None
