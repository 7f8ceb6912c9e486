"""Structured output end to end: the real Gemma (completions) and SmolLM2 (chats) behind `anticloud serve
--isolate`, over the unix socket, asked for JSON Schemas by raw HTTP and by LangChain's
``with_structured_output`` on ChatOllama and ChatOpenAI. Every answer must parse and validate.
The clients run under the network guard (tests/netguard.py), as in tests/test_clients_e2e.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from anticloud.cli import cli
from anticloud.structured import schema_hash
from ledger import verify_file
from tests import netguard
from tests.conftest import operator_imports_real_model
from tests.waiting import wait_for_socket

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent
# An object with required string, integer, enum and array fields; strings are bounded so that even a
# model that rambles inside one completes the object well within the token budget.
PATIENT = {"type": "object", "required": ["name", "age", "ward", "allergies"], "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
    "ward": {"enum": ["surgery", "oncology", "maternity"]},
    "allergies": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3}}}
NOTE = "Maria Lopez, 54, admitted to oncology; allergic to penicillin."


class Patient(BaseModel):
    """What a LangChain user writes; pydantic turns it into a schema like PATIENT."""

    name: str = Field(max_length=40, description="the patient's full name")
    age: int
    ward: Literal["surgery", "oncology", "maternity"]
    allergies: list[Annotated[str, Field(max_length=24)]] = Field(max_length=3)


@pytest.fixture(scope="module")
def served(gemma_path: Path, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Path, str]]:
    """(the unix socket, a per-person token) of a server holding both models."""
    base = tmp_path_factory.mktemp("structured")
    operator_imports_real_model(base, gemma_path)
    home = operator_imports_real_model(base, smollm2_path, "smollm2-135m")
    token = CliRunner().invoke(cli, ["--home", str(home.root), "tokens", "create", "alice"]).stdout.strip()
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    netguard.install()  # LangChain, the SDKs and httpx reach nothing off loopback, or the test fails
    try:
        wait_for_socket(home.socket, 30, server)
        yield home.socket, token
    finally:
        server.terminate()
        code = server.wait(60)
    assert code == 0, f"the server exited with {code} on SIGTERM"
    assert netguard.ATTEMPTS == [], "a client tried to leave loopback"
    records = [json.loads(x) for x in home.ledger.read_bytes().splitlines()]
    begins = {r["data"]["id"]: r["data"] for r in records if r["kind"] == "inference.begin"}
    ends = {r["data"]["id"]: r["data"] for r in records if r["kind"] == "inference.end"}
    constrained = [i for i, b in begins.items() if "format" in b.get("request", {})]
    assert constrained and set(ends) == set(begins)
    for ident in constrained:
        assert begins[ident]["params"]["grammar_sha3_256"].startswith("sha3-256:")
        assert ends[ident]["format"] == {"valid": True}, ends[ident]
    assert verify_file(home.ledger).status == "intact"


def post(sock: Path, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=300) as client:
        reply = client.post(f"http://appliance{path}", json=body)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def valid(text: str, schema: dict[str, Any] = PATIENT) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    Draft202012Validator(schema).validate(value)
    return value


@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 0.9, "seed": 11}], ids=["greedy", "sampled"])
def test_gemma_completions_under_a_schema_parse_and_validate(served: tuple[Path, str],
                                                             options: dict[str, Any]) -> None:
    reply = post(served[0], "/api/generate", {
        "model": "gemma3-270m", "stream": False, "format": PATIENT, "options": {**options, "num_predict": 200},
        "prompt": f"{NOTE}\nThe same patient as a JSON record:\n"})
    assert reply["done_reason"] == "stop"
    valid(reply["response"])
    ledger = served[0].parent / "ledger.jsonl"
    begin = next(r["data"] for r in map(json.loads, reversed(ledger.read_bytes().splitlines()))
                 if r["kind"] == "inference.begin")
    assert begin["request"]["format"] == {"kind": "json_schema", "schema_sha3_256": schema_hash(PATIENT)}


def test_smollm2_chats_under_a_schema_on_both_families(served: tuple[Path, str]) -> None:
    messages = [{"role": "user", "content": f"Record this patient as JSON: {NOTE}"}]
    ollama = post(served[0], "/api/chat", {"model": "smollm2-135m", "messages": messages, "stream": False,
                                           "format": PATIENT, "options": {"temperature": 0.7, "num_predict": 200}})
    assert ollama["done_reason"] == "stop"
    valid(ollama["message"]["content"])
    sock = served[0]
    response_format = {"type": "json_schema", "json_schema": {"name": "patient", "strict": True, "schema": PATIENT}}
    body = {"model": "smollm2-135m", "messages": messages, "temperature": 1.0, "seed": 3, "max_tokens": 200,
            "stream": True, "response_format": response_format}
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=300) as client, \
            client.stream("POST", "http://appliance/v1/chat/completions", json=body) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    valid("".join(e["choices"][0]["delta"].get("content") or "" for e in events))


def test_langchain_chat_ollama_with_structured_output(served: tuple[Path, str]) -> None:
    from langchain_ollama import ChatOllama

    sock = str(served[0])
    with httpx.HTTPTransport(uds=sock) as transport:  # closed on the way out, with its connections
        llm = ChatOllama(model="smollm2-135m", base_url="http://appliance", temperature=0.8, num_predict=200,
                         sync_client_kwargs={"transport": transport},
                         async_client_kwargs={"transport": httpx.AsyncHTTPTransport(uds=sock)})
        patient = llm.with_structured_output(Patient).invoke(f"Record this patient: {NOTE}")
    assert isinstance(patient, Patient), "LangChain parsed and validated the reply into the model"
    assert patient.ward in ("surgery", "oncology", "maternity") and len(patient.allergies) <= 3


def test_langchain_chat_openai_with_structured_output_and_a_refused_schema(served: tuple[Path, str]) -> None:
    import openai
    from langchain_openai import ChatOpenAI

    sock, token = served
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=300) as http:
        llm = ChatOpenAI(model="smollm2-135m", base_url="http://appliance/v1", api_key=token,  # type: ignore[arg-type]
                         http_client=http, temperature=0.8, max_completion_tokens=200, max_retries=0)
        patient = llm.with_structured_output(Patient).invoke(f"Record this patient: {NOTE}")
        assert isinstance(patient, Patient) and len(patient.name) <= 40

        class Adult(BaseModel):
            age: int = Field(ge=18)  # "minimum": the grammar cannot enforce it, so it is refused, not dropped

        with pytest.raises(openai.BadRequestError, match='"minimum" at /properties/age cannot be enforced'):
            llm.with_structured_output(Adult).invoke("How old is the patient?")
