"""The official OpenAI and Ollama Python SDKs, and curl, against the real Gemma model served by
`anticloud serve --isolate` (in its own network namespace) over the unix socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from ledger import verify_file
from tests.conftest import operator_imports_real_model
from tests.waiting import poll, wait_for_socket

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(the unix socket, a per-person token for the SDKs that always send one)."""
    home = operator_imports_real_model(tmp_path_factory.mktemp("clients"), gemma_path)
    token = CliRunner().invoke(cli, ["--home", str(home.root), "tokens", "create", "alice"]).stdout.strip()
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    path = home.root / "anticloud.sock"
    try:
        wait_for_socket(path, 30, server)
        yield path, token
    finally:
        server.terminate()
        code = server.wait(60)
    assert code == 0, f"the server exited with {code} on SIGTERM"
    kinds = [json.loads(x)["kind"] for x in home.ledger.read_bytes().splitlines()]
    assert kinds.count("inference.begin") == kinds.count("inference.end") >= 8
    assert verify_file(home.ledger).status == "intact"


def transport(sock: Path) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(uds=str(sock))


def test_openai_sdk_chat_and_completions_streaming_and_not(served: tuple[Path, str]) -> None:
    from openai import OpenAI

    sock, token = served
    # The SDK's annotation names its own httpx fork; any httpx.Client works at run time.
    with httpx.Client(transport=transport(sock)) as http, OpenAI(base_url="http://appliance/v1", api_key=token,
                                                                http_client=http) as client:  # type: ignore[arg-type]
        _openai_calls(client)


def _openai_calls(client: Any) -> None:
    messages = [{"role": "user", "content": "The capital of France is"}]
    chat = client.chat.completions.create(model="gemma3-270m", messages=messages, max_tokens=8)
    assert chat.choices[0].message.content and chat.usage is not None and chat.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(model="gemma3-270m", messages=messages, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"
    completion = client.completions.create(model="gemma3-270m", prompt="The capital of France is", max_tokens=6,
                                           temperature=0)
    assert completion.choices[0].text.strip() and completion.usage is not None
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="gemma3-270m", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True))
    assert streamed == completion.choices[0].text, "greedy decoding must give the same text either way"
    assert [m.id for m in client.models.list()] == ["gemma3-270m"]


def test_ollama_sdk_generate_and_chat_streaming_and_not(served: tuple[Path, str]) -> None:
    from ollama import Client

    client = Client(host="http://appliance", transport=transport(served[0]))  # identified by its uid
    whole = client.generate(model="gemma3-270m", prompt="The capital of France is",
                            options={"num_predict": 6, "temperature": 0})
    assert (whole.response or "").strip() and whole.done and whole.eval_count == 6 and whole.done_reason == "length"
    assert whole.total_duration and whole.eval_duration and whole.prompt_eval_count
    parts = list(client.generate(model="gemma3-270m", prompt="The capital of France is", stream=True,
                                 options={"num_predict": 6, "temperature": 0}))
    assert "".join(p.response or "" for p in parts) == whole.response
    chat = client.chat(model="gemma3-270m", messages=[{"role": "user", "content": "Hello"}], options={"num_predict": 4})
    assert chat.message.role == "assistant" and chat.done
    streamed = list(client.chat(model="gemma3-270m", messages=[{"role": "user", "content": "Hello"}], stream=True,
                                options={"num_predict": 4}))
    assert streamed[-1].done and streamed[-1].eval_count == 4
    assert [m.model for m in client.list().models] == ["gemma3-270m:latest"]
    client._client.close()


def test_curl_over_the_unix_socket(served: tuple[Path, str]) -> None:
    sock = served[0]
    body = json.dumps({"model": "gemma3-270m", "prompt": "The capital of France is", "options": {"num_predict": 4}})
    run = subprocess.run(["curl", "--silent", "--fail", "--unix-socket", str(sock), "http://appliance/api/generate",
                          "-d", body], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 4


def test_a_disconnect_mid_stream_stops_the_real_model_and_is_recorded(served: tuple[Path, str]) -> None:
    sock = served[0]
    ledger = sock.parent / "ledger.jsonl"
    body = {"model": "gemma3-270m", "prompt": "Once upon a time", "options": {"num_predict": 400, "temperature": 0}}
    with httpx.Client(transport=transport(sock), timeout=120) as client, \
            client.stream("POST", "http://appliance/api/generate", json=body) as reply:
        lines = reply.iter_lines()
        assert json.loads(next(lines))["done"] is False
        next(lines)

    def last() -> dict[str, Any]:
        record: dict[str, Any] = json.loads(ledger.read_bytes().splitlines()[-1])
        return record

    poll(lambda: last()["kind"] == "inference.end", 30, "the inference.end of the generation whose client left")
    end = last()["data"]
    assert end["done_reason"] == "client_disconnected"
    assert end["output_chars"] < 200, "generation must stop soon after the client leaves, not run to 400 tokens"
