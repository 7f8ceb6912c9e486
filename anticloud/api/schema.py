"""The API's request contract: JSON Schemas that both validate requests and make /openapi.json.

One source for both, so the published contract and what is accepted cannot drift apart.
Unknown top-level fields and unknown options are refused: a setting the appliance would
silently ignore could change what the institution believes it ran.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from anticloud import __version__
from anticloud.durations import PATTERN as DURATION_PATTERN

UNSUPPORTED = "x-anticloud-unsupported"  # on a schema that admits only "asking for nothing": what is not offered


def _unsupported(what: str, schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, which admits only the form of a field that asks for nothing, labelled with what is not
    offered: a request that asks for it is told so in one line (`problems`)."""
    return {**schema, UNSUPPORTED: what}


_STOP = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 8}]}
_DURATION = {"anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "number"}]}
_TEXT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
              "properties": {"type": _unsupported("content parts other than text (images, audio, files) are",
                                                  {"const": "text"}), "text": {"type": "string"}}}
_MESSAGE = {"type": "object", "required": ["role", "content"], "additionalProperties": False,
            "properties": {"role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                           "content": {"anyOf": [{"type": "string"},
                                                 {"type": "array", "items": _TEXT_PART, "maxItems": 64}]},
                           "name": {"type": "string", "maxLength": 64},
                           "images": _unsupported("images are", {"type": "array", "maxItems": 0})}}
# anticloud's own: decoded alone, as a single stream would be, even when others share the engine.
_DETERMINISTIC = {"type": "boolean"}
OLLAMA_OPTIONS = {
    "type": "object", "additionalProperties": False,
    "properties": {"temperature": {"type": "number", "minimum": 0, "maximum": 2},
                   "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                   "top_k": {"type": "integer", "minimum": 0, "maximum": 1000},
                   "min_p": {"type": "number", "minimum": 0, "maximum": 1},
                   "seed": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
                   "num_predict": {"type": "integer", "minimum": -1, "maximum": 1 << 20},
                   "stop": _STOP, "num_ctx": {"type": "integer", "minimum": 1, "maximum": 1 << 20},
                   "repeat_penalty": {"type": "number", "minimum": 0, "maximum": 10},
                   "repeat_last_n": {"type": "integer", "minimum": -1, "maximum": 1 << 20},
                   "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
                   "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
                   "typical_p": {"type": "number", "minimum": 0, "maximum": 1},
                   "deterministic": _DETERMINISTIC,
                   # accepted, as SDKs send them, but not applied: recorded as ignored
                   "num_thread": {"type": "integer", "minimum": 0, "maximum": 1024}},
}
IGNORED_OPTIONS = ("num_thread",)  # llama.cpp's threads are the configured ones (compute.threads)
# Features the appliance does not offer are accepted only in the form that asks for nothing,
# which is what the Ollama SDK sends by default (an empty tools list, ...).
_NOTHING = {"tools": _unsupported("tools are", {"type": "array", "maxItems": 0}),
            "think": _unsupported("thinking is", {"enum": [False, None]}),
            "images": _unsupported("images are", {"type": "array", "maxItems": 0})}
# Structured output (anticloud.structured): what the schema itself may say is checked there, with
# a refusal naming any construct the grammar cannot enforce.
_FORMAT = {"description": 'Structured output: "json" (a JSON object), or a JSON Schema (2020-12) the output '
                          'must match, enforced by a grammar while generating; "" or null: free text',
           "anyOf": [{"enum": ["", None, "json"]}, {"type": "object"}]}
_RESPONSE_FORMAT = {
    "description": "Structured output: json_object (a JSON object), or json_schema (a JSON Schema, 2020-12, the "
                   "output must match, enforced by a grammar while generating; strict or not)",
    "type": "object", "required": ["type"], "additionalProperties": False,
    "properties": {"type": {"enum": ["text", "json_object", "json_schema"]},
                   "json_schema": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                                                  "description": {"type": "string"},  # recorded as ignored
                                                  "schema": {"type": "object"},
                                                  "strict": {"type": ["boolean", "null"]}}}},
    "if": {"properties": {"type": {"const": "json_schema"}}},
    "then": {"required": ["json_schema"]}, "else": {"not": {"required": ["json_schema"]}}}
_COMMON = {"model": {"type": "string", "minLength": 1, "maxLength": 128}, "stream": {"type": "boolean"},
           "options": OLLAMA_OPTIONS, "keep_alive": _DURATION, "format": _FORMAT, **_NOTHING}
REQUESTS: dict[str, dict[str, Any]] = {
    "OllamaGenerate": {"type": "object", "additionalProperties": False,  # no prompt: load or unload only
                       "properties": {**_COMMON, "prompt": {"type": "string"}, "system": {"type": "string"},
                                      "raw": {"type": "boolean"}, "suffix": {"const": ""}, "template": {"const": ""},
                                      "context": {"type": "array", "maxItems": 0}}},
    "OllamaChat": {"type": "object", "required": ["messages"], "additionalProperties": False,
                   "properties": {**_COMMON, "messages": {"type": "array", "items": _MESSAGE, "minItems": 1,
                                                          "maxItems": 256}}},
    "ConsoleSignIn": {"type": "object", "required": ["token"], "additionalProperties": False,
                      "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 256}}},
    "ConsoleSignOut": {"type": "object", "additionalProperties": False,
                       "properties": {"reason": {"enum": ["signed out", "locked"]}}},
    "OllamaShow": {"type": "object", "additionalProperties": False,
                   "properties": {"model": {"type": "string", "minLength": 1}, "name": {"type": "string"},
                                  "verbose": {"type": "boolean"}}},
    "OpenAIChat": {"type": "object", "required": ["model", "messages"], "additionalProperties": False,
                   "properties": {"model": {"type": "string", "minLength": 1, "maxLength": 128},
                                  "messages": {"type": "array", "items": _MESSAGE, "minItems": 1, "maxItems": 256},
                                  "stream": {"type": "boolean"}, "temperature": {"type": "number", "minimum": 0,
                                                                                  "maximum": 2},
                                  "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                                  "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1 << 20},
                                  "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 1 << 20},
                                  "stop": _STOP, "seed": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
                                  "n": _unsupported("more than one choice (n) is", {"const": 1}),
                                  "tools": _unsupported("tools are", {"type": "array", "maxItems": 0}),
                                  "tool_choice": _unsupported("tools are", {"const": "none"}),
                                  "user": {"type": "string"},
                                  "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
                                  "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
                                  "stream_options": {"type": "object", "additionalProperties": False,
                                                     "properties": {"include_usage": {"type": "boolean"}}},
                                  "response_format": _RESPONSE_FORMAT, "deterministic": _DETERMINISTIC}},
}
# Embeddings: OpenAI takes up to 2,048 inputs a request; the same bound holds for Ollama's routes.
# Of Ollama's options only num_ctx bears on an embedding (the window an input may fill); the others
# are accepted and recorded as ignored, or, null, ask for nothing. LangChain's OllamaEmbeddings
# sends every option it knows, null when unset, some of which Ollama dropped: those are accepted
# in that form only.
_EMBED_OPTIONS = {"type": "object", "additionalProperties": False, "properties": {
    **{k: {"anyOf": [v, {"type": "null"}]} for k, v in OLLAMA_OPTIONS["properties"].items()},  # type: ignore[attr-defined]
    **{k: {"type": "null"} for k in ("mirostat", "mirostat_eta", "mirostat_tau", "num_gpu", "tfs_z")}}}
_TEXTS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 2048}
_DIMENSIONS = {"type": "integer", "minimum": 1, "maximum": 1 << 16}
# Token ids would be read with this model's vocabulary, whatever tokenizer (tiktoken's, for
# OpenAI's clients) made them: they would embed some other text.
_TOKEN_IDS = {"type": "array", "minItems": 1,
              "items": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]}}
REQUESTS["OllamaEmbed"] = {  # no input (or an empty one): load or unload only
    "type": "object", "additionalProperties": False,
    "properties": {"model": _COMMON["model"], "input": {"anyOf": [{"type": "string"}, {**_TEXTS, "minItems": 0}]},
                   "truncate": {"type": "boolean"}, "dimensions": _DIMENSIONS, "keep_alive": _DURATION,
                   "options": _EMBED_OPTIONS}}
REQUESTS["OllamaEmbeddings"] = {  # the legacy route; no prompt (or an empty one): load or unload only
    "type": "object", "additionalProperties": False,
    "properties": {"model": _COMMON["model"], "prompt": {"type": "string"}, "keep_alive": _DURATION,
                   "options": _EMBED_OPTIONS}}
REQUESTS["OpenAIEmbeddings"] = {
    "type": "object", "required": ["model", "input"], "additionalProperties": False,
    "properties": {"model": _COMMON["model"],
                   "input": {"allOf": [_unsupported("token ids, which would be read with this model's vocabulary "
                                                    "whatever tokenizer made them, are", {"not": _TOKEN_IDS}),
                                       {"anyOf": [{"type": "string", "minLength": 1}, _TEXTS]}]},
                   "encoding_format": {"enum": ["float", "base64"]}, "dimensions": _DIMENSIONS,
                   "user": {"type": "string"}}}
REQUESTS["OpenAICompletion"] = {
    **REQUESTS["OpenAIChat"], "required": ["model", "prompt"],
    "properties": {**{k: v for k, v in REQUESTS["OpenAIChat"]["properties"].items()
                      if k not in ("messages", "max_completion_tokens", "tools", "tool_choice")},
                   "prompt": {"type": "string"}, "echo": {"const": False}},
}
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in REQUESTS.items()}


def problems(schema: str, body: Any) -> str | None:
    """The first problem with ``body`` as one line, or None when it fits the schema. A feature the
    appliance does not offer is named as such, before any other problem."""
    errors = sorted(_VALIDATORS[schema].iter_errors(body), key=lambda e: list(e.path))
    if not errors:
        return None
    refused = next((found for e in errors if (found := _asks_for_the_unsupported(e)) is not None), None)
    error = refused or errors[0]
    where = "/".join(str(p) for p in error.absolute_path)[:100]
    if refused is not None and isinstance(refused.schema, dict):
        return f"{where}: {refused.schema[UNSUPPORTED]} not supported by anticloud"
    message = _valueless(error)
    message = message if len(message) <= 300 else message[:300] + "..."
    return f"{where}: {message}" if where else message


def _valueless(error: ValidationError) -> str:
    """``error``'s message without the value it quotes, if that is text or a container: the message becomes
    the refusal's recorded reason, and a prompt sent in the wrong shape must not reach the ledger as text
    (under ``record_content = "hash"``) nor the journal. jsonschema starts such messages with the value's repr;
    a number, a bool or null is kept, since it helps the client and cannot hold text."""
    value = error.instance
    if value is None or isinstance(value, bool | int | float):
        return error.message
    quoted = repr(value)
    if error.message.startswith(quoted):
        return f"the {_shape(value)}" + error.message[len(quoted):]
    return error.message.replace(quoted, f"the {_shape(value)}")


def _shape(value: Any) -> str:
    return "text" if isinstance(value, str) else "array" if isinstance(value, list) else "object"


def _asks_for_the_unsupported(error: ValidationError) -> ValidationError | None:
    """``error``, or the first of the errors under it (anyOf's), raised by a schema labelled `UNSUPPORTED`."""
    if isinstance(error.schema, dict) and UNSUPPORTED in error.schema:
        return error
    return next((found for e in error.context or () if (found := _asks_for_the_unsupported(e)) is not None), None)


def _operation(summary: str, schema: str | None = None, streaming: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {streaming or "application/json": {}}},
        "400": {"description": "invalid request"}, "401": {"description": "no identity"},
        "404": {"description": "unknown model"}, "413": {"description": "body too large"},
        "503": {"description": "air gap breached, or model busy"}}}
    if schema:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{schema}"}}}}
    return op


def openapi() -> dict[str, Any]:
    paths = {
        "/": {"get": {"summary": "What Ollama answers here (open)", "responses": {"200": {"description": "OK"}}}},
        "/api/version": {"get": {"summary": "Server version (open)", "responses": {"200": {"description": "OK"}}}},
        "/api/health": {"get": {"summary": "Liveness (open)", "responses": {"200": {"description": "OK"}}}},
        "/api/generate": {"post": _operation("Ollama: generate a completion", "OllamaGenerate",
                                             "application/x-ndjson")},
        "/api/chat": {"post": _operation("Ollama: chat", "OllamaChat", "application/x-ndjson")},
        "/api/show": {"post": _operation("Ollama: show a model", "OllamaShow")},
        "/api/embed": {"post": _operation("Ollama: embeddings (L2-normalised)", "OllamaEmbed")},
        "/api/embeddings": {"post": _operation("Ollama (legacy): one raw embedding", "OllamaEmbeddings")},
        "/api/tags": {"get": _operation("Ollama: list models")},
        "/api/ps": {"get": _operation("Ollama: loaded models")},
        "/api/status": {"get": _operation("Air gap, loaded models, queue depth")},
        "/api/ledger/head": {"get": _operation("Ledger head with a freshly signed checkpoint")},
        "/v1/chat/completions": {"post": _operation("OpenAI: chat completion", "OpenAIChat", "text/event-stream")},
        "/v1/completions": {"post": _operation("OpenAI: completion", "OpenAICompletion", "text/event-stream")},
        "/v1/embeddings": {"post": _operation("OpenAI: embeddings", "OpenAIEmbeddings")},
        "/v1/models": {"get": _operation("OpenAI: list models")},
        "/v1/models/{model}": {"get": {**_operation("OpenAI: one model"), "parameters": [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]}},
    }
    return {"openapi": "3.1.0", "info": {"title": "anticloud", "version": __version__}, "paths": paths,
            "components": {"schemas": REQUESTS, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}, {}]}
