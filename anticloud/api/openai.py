"""OpenAI's routes: /v1/chat/completions, /v1/completions and /v1/models.

Replies follow OpenAI's wire format, its errors included (``{"error": {"message", "type",
...}}``) and its server-sent events when streaming, so OpenAI's clients work unchanged.
``response_format`` constrains the output (`anticloud.structured`); a schema the grammar cannot
enforce is refused before anything runs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from anticloud import structured
from anticloud.api.body import read_checked
from anticloud.api.generation import as_int, collect, conversation, lines, resolve_model, start
from anticloud.engines import Done, Message, Params
from anticloud.runtime import Appliance
from anticloud.structured import OutputFormat


def error(status: int, message: str) -> Response:
    """An error in OpenAI's shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    kind = "authentication_error" if status == 401 else kind
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


class OpenAIRoutes:
    def __init__(self, appliance: Appliance) -> None:
        self.app = appliance

    async def chat(self, request: Request, identity: str) -> Response:
        body = await read_checked(request, "OpenAIChat", self.app)
        messages, ignored = conversation(body["messages"])
        return await self._generate(body, identity, messages, chat=True, ignored=ignored)

    async def completion(self, request: Request, identity: str) -> Response:
        body = await read_checked(request, "OpenAICompletion", self.app)
        return await self._generate(body, identity, body["prompt"], chat=False)

    async def _generate(self, body: dict[str, Any], identity: str, prompt: str | list[Message],
                        chat: bool, ignored: list[str] | None = None) -> Response:
        model = resolve_model(self.app, body["model"])
        ignored = list(ignored or [])
        # refused here if it cannot be enforced; off the event loop, as building a grammar takes CPU
        output = await asyncio.to_thread(_output_format, body.get("response_format"), ignored)
        stop = body.get("stop")
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or (512 if chat else 16)
        params = Params(temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                        seed=as_int(body.get("seed")), stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
                        num_predict=as_int(limit), repeat_penalty=1.0, top_k=0, min_p=0.0,
                        presence_penalty=float(body.get("presence_penalty", 0.0)),
                        frequency_penalty=float(body.get("frequency_penalty", 0.0)),
                        deterministic=bool(body.get("deterministic", False)))
        said = {"user": body["user"]} if "user" in body else {}  # the client's own label, beside the identity
        if ignored:
            said["ignored"] = ignored
        stream, first, headers = await start(self.app, identity, model, prompt, params, None, said or None, output)
        ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}", int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(text: str | None, finish: str | None, first_chunk: bool = False) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": text or ""} if first_chunk else (
                    {"content": text} if text is not None else {})
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        if body.get("stream"):
            include_usage = (body.get("stream_options") or {}).get("include_usage", False)
            sent = {"first": True}

            def event(piece: str | Done) -> str:
                base = {"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": created, "model": model}
                if isinstance(piece, Done):
                    chunks = [{**base, "choices": [choice(None, piece.done_reason)]}]
                    if include_usage:
                        chunks.append({**base, "choices": [], "usage": _usage(piece)})
                    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
                chunk = {**base, "choices": [choice(piece, None, sent["first"])]}
                sent["first"] = False
                return f"data: {json.dumps(chunk)}\n\n"

            return StreamingResponse(lines(stream, first, event), media_type="text/event-stream", headers=headers)
        pieces = await collect(stream, first)
        done = pieces[-1] if isinstance(pieces[-1], Done) else Done("stop", 0, 0, 0, 0)
        text = "".join(p for p in pieces if isinstance(p, str))
        reply = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": done.done_reason} \
            if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": done.done_reason}
        return JSONResponse({"id": ident, "object": kind, "created": created, "model": model, "choices": [reply],
                             "usage": _usage(done)}, headers=headers)

    async def models(self, request: Request, identity: str) -> Response:
        return JSONResponse({"object": "list", "data": [_model(m.name) for m in self.app.models()]})

    async def model(self, request: Request, identity: str) -> Response:
        """One model by id (ModelError, a 404 in OpenAI's shape, if there is none)."""
        return JSONResponse(_model(self.app.model(request.path_params["model"]).name))


def _output_format(value: dict[str, Any] | None, ignored: list[str]) -> OutputFormat | None:
    """OpenAI's ``response_format`` (also taken on /v1/completions, as llama.cpp's server and vLLM
    take it): ``text``, ``json_object`` or ``json_schema``.

    Output is always constrained, ``strict`` or not. A ``description`` is what OpenAI shows the
    model; the prompt is left as the client wrote it here, so it is recorded as ignored."""
    kind = (value or {}).get("type", "text")
    if kind == "json_object":
        return structured.any_json_object()
    if kind != "json_schema" or value is None:
        return None
    spec = value["json_schema"]
    if "description" in spec:
        ignored.append("response_format.json_schema.description")
    return structured.from_schema(spec.get("schema", {}), "response_format.json_schema.schema", spec["name"],
                                  spec.get("strict"))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "anticloud"}


def _usage(done: Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}
