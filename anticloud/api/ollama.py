"""Ollama's routes: /api/generate, /api/chat, /api/show, /api/tags and /api/ps.

Replies follow Ollama's wire format, its errors included (``{"error": message}``), so Ollama's
clients work unchanged. Options the contract does not name are refused by the schema, never
ignored; those it names get Ollama's defaults. ``format`` constrains the output
(`anticloud.structured`); a schema the grammar cannot enforce is refused before anything runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from anticloud import durations, structured
from anticloud.api.body import read_checked
from anticloud.api.generation import as_int, collect, conversation, lines, resolve_model, start
from anticloud.api.schema import IGNORED_OPTIONS
from anticloud.content import completion_prompt
from anticloud.engines import Done, Message, Params
from anticloud.errors import ModelError
from anticloud.runtime import Appliance
from anticloud.structured import OutputFormat
from ledger import utc_timestamp


def error(status: int, message: str) -> Response:
    """An error in Ollama's shape."""
    return JSONResponse({"error": message}, status_code=status)


class OllamaRoutes:
    def __init__(self, appliance: Appliance) -> None:
        self.app = appliance

    async def generate(self, request: Request, identity: str) -> Response:
        body = await read_checked(request, "OllamaGenerate", self.app)
        if not body.get("prompt"):  # Ollama's way to load a model ahead of use, or (keep_alive 0) unload it
            return await self._load_or_unload(body)
        prompt = completion_prompt(body["prompt"], body.get("system"))
        return await self._generate(body, identity, prompt, chat=False)

    async def _load_or_unload(self, body: dict[str, Any]) -> Response:
        model = resolve_model(self.app, body.get("model"))
        default = float(self.app.setting("engine", "keep_alive"))
        keep_alive = seconds(body["keep_alive"], default) if "keep_alive" in body else None
        reason = await asyncio.to_thread(self.app.preload, model, keep_alive)  # loading can take a while
        return JSONResponse({"model": model, "created_at": utc_timestamp(), "response": "", "done": True,
                             "done_reason": reason})

    async def chat(self, request: Request, identity: str) -> Response:
        body = await read_checked(request, "OllamaChat", self.app)
        messages, ignored = conversation(body["messages"])
        return await self._generate(body, identity, messages, chat=True, ignored=ignored)

    async def _generate(self, body: dict[str, Any], identity: str, prompt: str | list[Message],
                        chat: bool, ignored: list[str] | None = None) -> Response:
        began = time.perf_counter_ns()
        model = resolve_model(self.app, body.get("model"))
        # A schema the grammar cannot enforce is refused here. Building a grammar can take a large schema
        # a second of CPU: off the event loop, which other clients' streams share.
        output = await asyncio.to_thread(_output_format, body.get("format"))
        options = body.get("options") or {}
        params = params_from_options(options, self.app.context_size(model))
        default = float(self.app.setting("engine", "keep_alive"))
        keep_alive = seconds(body["keep_alive"], default) if "keep_alive" in body else None
        ignored = [*(ignored or []), *(f"options.{k}" for k in IGNORED_OPTIONS if k in options)]
        said: dict[str, Any] = {"ignored": ignored} if ignored else {}
        if as_int(options.get("num_ctx", 0)) > params.num_ctx:  # more than the model is loaded with: what it has
            said["num_ctx"] = {"asked": as_int(options["num_ctx"]), "applied": params.num_ctx}  # 4096.0 is 4096
        stream, first, headers = await start(self.app, identity, model, prompt, params, keep_alive, said or None,
                                             output)

        def line(piece: str | Done) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "created_at": utc_timestamp()}
            text = "" if isinstance(piece, Done) else piece
            out.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
            if isinstance(piece, Done):
                total = time.perf_counter_ns() - began
                out.update(done=True, done_reason=piece.done_reason, total_duration=total,
                           load_duration=max(0, total - piece.prompt_eval_ns - piece.eval_ns),
                           prompt_eval_count=piece.prompt_tokens, prompt_eval_duration=piece.prompt_eval_ns,
                           eval_count=piece.completion_tokens, eval_duration=piece.eval_ns)
            else:
                out["done"] = False
            return out

        if body.get("stream", True):
            return StreamingResponse(lines(stream, first, lambda p: json.dumps(line(p)) + "\n"),
                                     media_type="application/x-ndjson", headers=headers)
        pieces = await collect(stream, first)
        final = line(pieces[-1]) if isinstance(pieces[-1], Done) else line(Done("stop", 0, 0, 0, 0))
        text = "".join(p for p in pieces if isinstance(p, str))
        final.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
        return JSONResponse(final, headers=headers)

    async def tags(self, request: Request, identity: str) -> Response:
        return JSONResponse({"models": [self._describe(m.name) for m in self.app.models()]})

    async def show(self, request: Request, identity: str) -> Response:
        body = await read_checked(request, "OllamaShow", self.app)
        model = resolve_model(self.app, body.get("model") or body.get("name"))
        stored, facts = self.app.model(model), self.app.facts(model)
        described = self._describe(model)
        templates = [t.sha3_256 for t in stored.manifest.chat_templates]
        return JSONResponse({"details": described["details"], "capabilities": described["capabilities"],
                             "model_info": {**facts.model_info(), "anticloud.manifest": stored.digest,
                                            "anticloud.files": [f.path for f in stored.manifest.files],
                                            "anticloud.chat_templates": templates},
                             "modified_at": stored.manifest.created, "parameters": "", "template": "",
                             "modelfile": "", "license": ""})

    async def ps(self, request: Request, identity: str) -> Response:
        """The loaded models; one removed from the store meanwhile is being unloaded, and not listed."""
        stored = {m.name for m in self.app.models()}
        return JSONResponse({"models": [{**self._describe(str(s["name"])), "expires_in": s["expires_in"]}
                                        for s in self.app.loaded() if s["name"] in stored]})

    def _describe(self, name: str) -> dict[str, Any]:
        """A model as /api/tags lists it; ``details`` and ``capabilities`` from its GGUF header."""
        stored = self.app.model(name)
        weights = stored.manifest.files[0]
        try:
            facts = self.app.facts(name)
            details, capabilities = facts.details(), facts.capabilities(self.app.engine.can_embed(facts.metadata))
        except ModelError:  # unreadable weights: listed, undescribed (a load would refuse it, recorded)
            details, capabilities = {"format": "gguf", "family": "", "families": [], "parameter_size": "",
                                     "quantization_level": ""}, []
        return {"name": f"{name}:latest", "model": f"{name}:latest", "modified_at": stored.manifest.created,
                "size": sum(f.size for f in stored.manifest.files), "digest": weights.sha3_256,
                "details": details, "capabilities": capabilities}


def params_from_options(options: dict[str, Any], n_ctx: int) -> Params:
    """Ollama's options; one left out keeps Params's own default. ``num_ctx`` is the window the
    request may fill, up to the context the model is loaded with (``n_ctx``); ``num_predict`` and
    ``repeat_last_n`` below 0 mean that whole window."""
    default = Params()
    stop = options.get("stop")
    window = min(as_int(options.get("num_ctx", n_ctx)), n_ctx)
    predict = as_int(options.get("num_predict", default.num_predict))
    last_n = as_int(options.get("repeat_last_n", default.repeat_last_n))
    return Params(temperature=float(options.get("temperature", default.temperature)),
                  top_p=float(options.get("top_p", default.top_p)), top_k=as_int(options.get("top_k", default.top_k)),
                  min_p=float(options.get("min_p", default.min_p)), seed=as_int(options.get("seed", default.seed)),
                  num_predict=window if predict < 0 else predict, num_ctx=window if "num_ctx" in options else 0,
                  stop=(stop,) if isinstance(stop, str) else tuple(stop or default.stop),
                  repeat_penalty=float(options.get("repeat_penalty", default.repeat_penalty)),
                  repeat_last_n=window if last_n < 0 else last_n,
                  presence_penalty=float(options.get("presence_penalty", default.presence_penalty)),
                  frequency_penalty=float(options.get("frequency_penalty", default.frequency_penalty)),
                  typical_p=float(options.get("typical_p", default.typical_p)),
                  deterministic=bool(options.get("deterministic", default.deterministic)))


def _output_format(value: str | dict[str, Any] | None) -> OutputFormat | None:
    """Ollama's ``format``: "json" (a JSON object), a JSON Schema, or nothing ("" or null).

    The prompt is left as the client wrote it: Ollama suggests the client also describe the format
    there, and neither Ollama nor llama.cpp's server adds it; the grammar enforces it either way,
    and the prompt recorded is the prompt the model was given."""
    if value == "json":
        return structured.any_json_object()
    if isinstance(value, dict):
        return structured.from_schema(value, "format")
    return None


def seconds(value: str | float | int | None, default: float) -> float:
    """Ollama's keep_alive: seconds, or a duration such as "5m" or "300ms" (the schema checked it)."""
    if value is None:
        return default
    return float(value) if isinstance(value, (int, float)) else durations.seconds(value)
