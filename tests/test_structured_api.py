"""Structured output through the HTTP API, with the fake engine: what each route family accepts, what
reaches the engine, what the ledger records, and the named, recorded refusals.

The fake engine echoes its prompt word by word and applies no grammar, so a test picks an output
that does or does not fit the format by what it asks for."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from anticloud.actor import local
from anticloud.config import set_value
from anticloud.home import Home
from anticloud.runtime import Appliance
from anticloud.structured import schema_hash
from ledger import LedgerWriter, sha3_tag
from tests.fake_engine import FakeModel
from tests.test_api import ISOLATED, Served, fake_home, running

PERSON = {"type": "object", "required": ["name", "age", "role", "tags"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "role": {"enum": ["doctor", "nurse", "patient"]},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}}
FITS = '{"name": "Ann", "age": 34, "role": "nurse", "tags": ["night"]}'  # what the fake echoes back


@pytest.fixture
def served(imported_home: Callable[..., Home], tmp_path: Path) -> Iterator[Served]:
    home = fake_home(imported_home)
    with LedgerWriter.open(home.ledger) as writer:
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        with running(app, tmp_path / "api.sock"):
            yield Served(home, app, tmp_path / "api.sock")


def test_an_ollama_schema_constrains_the_engine_and_the_ledger_records_kind_hash_and_verdict(served: Served) -> None:
    with served.client() as c:
        reply = c.post("/api/generate", json={"model": "tiny", "prompt": FITS, "format": PERSON, "stream": False})
    assert reply.status_code == 200, reply.text
    assert json.loads(reply.json()["response"]) == json.loads(FITS)
    grammar = FakeModel.params[-1].grammar
    assert grammar is not None and 'root ::= "{" space name-kv' in grammar, "the schema's grammar reaches the engine"
    begin, end = served.last("inference.begin"), served.last("inference.end")
    assert begin["request"] == {"format": {"kind": "json_schema", "schema_sha3_256": schema_hash(PERSON)}}
    assert begin["params"]["grammar_sha3_256"] == sha3_tag(grammar.encode())
    assert end["format"] == {"valid": True} and end["done_reason"] == "stop"


def test_an_output_that_does_not_fit_is_delivered_as_generated_and_recorded_as_such(served: Served) -> None:
    with served.client() as c:
        cut = c.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": FITS}],
                                        "format": PERSON, "stream": False, "options": {"num_predict": 3}})
        assert cut.status_code == 200 and cut.json()["done_reason"] == "length"
        assert cut.json()["message"]["content"] == '{"name": "Ann", "age": '  # partial, as generated
        assert served.last("inference.end")["format"] == {"valid": False, "failed": "json"}
        wrong = FITS.replace("nurse", "janitor")
        c.post("/api/generate", json={"model": "tiny", "prompt": wrong, "format": PERSON, "stream": False})
        assert served.last("inference.end")["format"] == {"valid": False, "failed": "enum"}, \
            "without content kept, the verdict names the keyword and quotes nothing"
        set_value(served.home, served.app.writer, "inference.record_content", "plaintext")
        c.post("/api/generate", json={"model": "tiny", "prompt": wrong, "format": PERSON, "stream": False})
    end = served.last("inference.end")
    assert end["format"]["failed"] == "enum" and "janitor" in end["format"]["detail"] and "janitor" in end["output"]


def test_json_mode_on_both_families_and_text_which_asks_for_nothing(served: Served) -> None:
    with served.client() as c:
        ollama = c.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": '{"a": 1}'}],
                                           "format": "json", "stream": False})
        assert ollama.status_code == 200 and served.last("inference.begin")["request"] == {"format": {"kind": "json"}}
        assert served.last("inference.end")["format"] == {"valid": True}
        assert FakeModel.params[-1].grammar is not None and "root   ::= object" in FakeModel.params[-1].grammar
        openai = c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                      "response_format": {"type": "json_object"}})
        assert openai.status_code == 200 and served.last("inference.begin")["request"]["format"] == {"kind": "json"}
        assert served.last("inference.end")["format"] == {"valid": False, "failed": "json"}
        text = c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                    "response_format": {"type": "text"}})
        nothing = c.post("/api/generate", json={"model": "tiny", "prompt": "x", "format": "", "stream": False})
    assert text.status_code == 200 and nothing.status_code == 200
    assert FakeModel.params[-1].grammar is None and FakeModel.params[-2].grammar is None
    begins = [r["data"] for r in served.records() if r["kind"] == "inference.begin"]
    assert "request" not in begins[-1] and "request" not in begins[-2]
    assert "grammar_sha3_256" not in begins[-1]["params"]
    assert "format" not in served.last("inference.end")


def test_openai_json_schema_records_its_name_and_strict_and_its_description_as_ignored(served: Served) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON,
                                                              "description": "a person on the ward"}}
    with served.client() as c:
        chat = c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": FITS}],
                                                    "response_format": response_format})
        assert chat.status_code == 200 and json.loads(chat.json()["choices"][0]["message"]["content"])["age"] == 34
        assert served.last("inference.begin")["request"] == {
            "format": {"kind": "json_schema", "schema_sha3_256": schema_hash(PERSON), "name": "person",
                       "strict": True},
            "ignored": ["response_format.json_schema.description"]}
        assert served.last("inference.end")["format"] == {"valid": True}
        # /v1/completions takes it too, as llama.cpp's server and vLLM do (OpenAI's own has no such field)
        completion = c.post("/v1/completions", json={"model": "tiny", "prompt": FITS, "max_tokens": 40,
                                                     "response_format": response_format})
    assert completion.status_code == 200 and completion.json()["choices"][0]["finish_reason"] == "stop"
    assert served.last("inference.end")["format"] == {"valid": True}
    assert FakeModel.params[-1].grammar is not None


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("/api/generate", {"prompt": "x", "format": {"type": "integer", "minimum": 0}},
     'format: "minimum" at / cannot be enforced while generating'),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}],
                   "format": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}}},
     'format: "pattern" (regular expressions are not translated reliably) at /properties/code'),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "n", "schema": {"oneOf": [{"type": "string"}]}}}},
     'response_format.json_schema.schema: "oneOf"'),
    ("/v1/completions", {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}}},
     'response_format.json_schema.schema: "uniqueItems" at /'),
    ("/api/generate", {"prompt": "x", "format": "yaml"}, "format: the text is not valid under any"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema"}}, "'json_schema' is a required property"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}}, "does not match"),
]


@pytest.mark.parametrize(("path", "body", "message"), REFUSALS)
def test_a_format_that_cannot_be_enforced_is_a_named_recorded_400_before_anything_runs(
        served: Served, path: str, body: dict[str, Any], message: str) -> None:
    with served.client() as c:
        reply = c.post(path, json={"model": "tiny", **body})
    assert reply.status_code == 400
    error = reply.json()["error"]
    text = error["message"] if path.startswith("/v1/") else error
    assert message in text, text
    if path.startswith("/v1/"):
        assert error["type"] == "invalid_request_error"
    assert served.last("request.rejected") == {"identity": f"uid:{os.getuid()}", "path": path, "status": 400,
                                               "reason": text, "actor": local()}
    assert FakeModel.generations == 0 and not FakeModel.loads, "refused before a model is loaded"
    assert not any(r["kind"] == "inference.begin" for r in served.records())


def test_the_published_contract_describes_both_forms(served: Served) -> None:
    with served.client() as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
    assert "JSON Schema" in schemas["OllamaGenerate"]["properties"]["format"]["description"]
    assert schemas["OpenAIChat"]["properties"]["response_format"]["properties"]["type"]["enum"] == [
        "text", "json_object", "json_schema"]
    assert "response_format" in schemas["OpenAICompletion"]["properties"]
