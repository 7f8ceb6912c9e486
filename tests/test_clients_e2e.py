"""The clients people use, unchanged, against the real models served by `anticloud serve --isolate
--port` (the engine in a network namespace of its own, its TCP socket on the host's loopback):
the OpenAI and Ollama SDKs, LangChain, LiteLLM and simonw's `llm`, each as its own person with
its own token, and each call recorded under that person. The unix socket, where the caller's
uid identifies it, with the Ollama SDK and curl.

Every third-party client here runs under a network guard (tests/netguard.py): a library that
tried to reach anything off loopback would fail the test instead of sending a packet."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.home import Home
from ledger import verify_file
from tests import netguard
from tests.conftest import operator_imports_real_model
from tests.waiting import poll, wait_for_socket

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent
CHAT, BASE = "smollm2-135m", "gemma3-270m"  # the instruct model converses; the base model continues text
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank")
QUESTION: list[Any] = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@dataclass
class Served:
    home: Home
    sock: Path
    url: str  # http://127.0.0.1:PORT, on the host's loopback
    tokens: dict[str, str]

    def began(self, since: int) -> list[dict[str, Any]]:
        """The inference.begin records after line ``since`` of the ledger."""
        lines = self.home.ledger.read_bytes().splitlines()[since:]
        return [r["data"] for r in map(json.loads, lines) if r["kind"] == "inference.begin"]

    def mark(self) -> int:
        return len(self.home.ledger.read_bytes().splitlines())


@pytest.fixture(scope="module")
def served(gemma_path: Path, smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("clients")
    operator_imports_real_model(base, gemma_path, BASE)
    home = operator_imports_real_model(base, smollm2_path, CHAT)
    runner = CliRunner()
    tokens = {name: runner.invoke(cli, ["--home", str(home.root), "tokens", "create", name]).stdout.strip()
              for name in PEOPLE}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate",
                               "--port", str(port)], cwd=ROOT, stderr=subprocess.DEVNULL)
    netguard.install()
    try:
        wait_for_socket(home.socket, 30, server)
        yield Served(home, home.socket, f"http://127.0.0.1:{port}", tokens)
    finally:
        server.terminate()
        code = server.wait(60)
    assert code == 0, f"the server exited with {code} on SIGTERM"
    kinds = [json.loads(x)["kind"] for x in home.ledger.read_bytes().splitlines()]
    assert kinds.count("inference.begin") == kinds.count("inference.end") >= 12
    assert verify_file(home.ledger).status == "intact"
    assert netguard.ATTEMPTS == [], "a client tried to leave loopback"


def transport(sock: Path) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(uds=str(sock))


def plausible_capital(text: str) -> bool:
    return "paris" in text.lower()


def test_openai_sdk_over_tcp(served: Served) -> None:
    from openai import OpenAI

    mark = served.mark()
    with OpenAI(base_url=f"{served.url}/v1", api_key=served.tokens["alice"]) as client:
        chat = client.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=16, temperature=0)
        assert chat.choices[0].message.content and chat.usage is not None and chat.usage.completion_tokens <= 16
        assert plausible_capital(chat.choices[0].message.content)
        chunks = list(client.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=8, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        completion = client.completions.create(model=BASE, prompt="The capital of France is", max_tokens=6,
                                               temperature=0)
        assert completion.choices[0].text.strip() and completion.usage is not None
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model=BASE, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True))
        assert streamed == completion.choices[0].text, "greedy decoding must give the same text either way"
        assert sorted(m.id for m in client.models.list()) == [BASE, CHAT]
    assert {b["client"] for b in served.began(mark)} == {"token:alice"} and len(served.began(mark)) == 4


def test_ollama_sdk_over_tcp(served: Served) -> None:
    from ollama import Client

    mark = served.mark()
    client = Client(host=served.url, headers={"Authorization": f"Bearer {served.tokens['bob']}"})
    whole = client.generate(model=BASE, prompt="The capital of France is", options={"num_predict": 6, "temperature": 0})
    assert (whole.response or "").strip() and whole.done and whole.eval_count == 6 and whole.done_reason == "length"
    assert whole.total_duration and whole.eval_duration and whole.prompt_eval_count
    parts = list(client.generate(model=BASE, prompt="The capital of France is", stream=True,
                                 options={"num_predict": 6, "temperature": 0}))
    assert "".join(p.response or "" for p in parts) == whole.response
    chat = client.chat(model=CHAT, messages=QUESTION, options={"num_predict": 16, "temperature": 0})
    assert chat.message.role == "assistant" and chat.done and plausible_capital(chat.message.content or "")
    streamed = list(client.chat(model=CHAT, messages=QUESTION, stream=True, options={"num_predict": 4}))
    assert streamed[-1].done and (streamed[-1].eval_count or 0) <= 4
    assert sorted(m.model or "" for m in client.list().models) == [f"{BASE}:latest", f"{CHAT}:latest"]
    shown = client.show(CHAT)
    assert shown.capabilities == ["completion", "embedding"]  # llm-ollama registers models by these
    assert shown.details is not None and shown.details.family == "llama"
    client._client.close()
    assert {b["client"] for b in served.began(mark)} == {"token:bob"} and len(served.began(mark)) == 4


def test_ollama_sdk_on_the_unix_socket_is_known_by_its_uid(served: Served) -> None:
    from ollama import Client

    mark = served.mark()
    client = Client(host="http://appliance", transport=transport(served.sock))
    chat = client.chat(model=CHAT, messages=QUESTION, options={"num_predict": 8})
    assert chat.done and chat.message.content
    client._client.close()
    assert [b["client"] for b in served.began(mark)] == [f"uid:{os.getuid()}"]


# LangChain's chat models keep pooled httpx connections they never close; the garbage collector does.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_langchain_chat_models_over_tcp(served: Served) -> None:
    from langchain_ollama import ChatOllama
    from langchain_openai import ChatOpenAI

    mark = served.mark()
    auth = {"Authorization": f"Bearer {served.tokens['carol']}"}
    ollama = ChatOllama(model=CHAT, base_url=served.url, temperature=0, num_predict=16, client_kwargs={"headers": auth})
    openai = ChatOpenAI(model=CHAT, base_url=f"{served.url}/v1", api_key=served.tokens["carol"],  # type: ignore[arg-type]
                        temperature=0, max_completion_tokens=16)
    for model in (ollama, openai):
        reply = model.invoke([("system", "You answer briefly."), ("human", QUESTION[0]["content"])])
        assert isinstance(reply.content, str) and plausible_capital(reply.content)
        assert "".join(str(chunk.content) for chunk in model.stream("Say hello."))
    began = served.began(mark)
    assert {b["client"] for b in began} == {"token:carol"} and len(began) == 4


# LiteLLM pools its connections in module-wide clients it never closes; the garbage collector does.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_litellm_over_tcp(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_OFFLINE_MODE", "true")  # its price list and tokenizers: the bundled copies
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    mark = served.mark()
    for model, base in ((f"ollama_chat/{CHAT}", served.url), (f"openai/{CHAT}", f"{served.url}/v1")):
        reply = litellm.completion(model=model, api_base=base, api_key=served.tokens["dave"], messages=QUESTION,
                                   max_tokens=16, temperature=0)
        assert plausible_capital(reply.choices[0].message.content or "")
    began = served.began(mark)
    assert {b["client"] for b in began} == {"token:dave"} and len(began) == 2


def test_llm_cli_with_llm_ollama_over_tcp(served: Served, tmp_path: Path) -> None:
    env = {**os.environ, "OLLAMA_HOST": served.url, "OLLAMA_API_KEY": served.tokens["erin"],
           "LLM_USER_PATH": str(tmp_path)}
    guarded = "from tests import netguard; netguard.install(); from llm.cli import cli; cli()"

    def llm(*args: str) -> str:
        run = subprocess.run([sys.executable, "-c", guarded, *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return run.stdout

    mark = served.mark()
    assert f"ollama/{CHAT}" in llm("models", "list")  # llm-ollama lists only models that say what they can do
    answer = llm("prompt", "--no-log", "-m", f"ollama/{CHAT}", "-o", "temperature", "0", "-o", "num_predict", "16",
                 QUESTION[0]["content"])
    assert plausible_capital(answer)
    assert {b["client"] for b in served.began(mark)} == {"token:erin"} and len(served.began(mark)) == 1


def test_an_unknown_token_over_tcp_is_refused_and_says_what_to_do(served: Served) -> None:
    mark = served.mark()
    reply = httpx.post(f"{served.url}/api/chat", json={"model": CHAT, "messages": QUESTION},
                       headers={"Authorization": "Bearer not-a-token"})
    assert reply.status_code == 401 and "anticloud tokens create NAME" in reply.json()["error"]
    records = [json.loads(x) for x in served.home.ledger.read_bytes().splitlines()[mark:]]
    assert [r["data"]["identity"] for r in records if r["kind"] == "request.rejected"] == ["anonymous"]
    assert served.began(mark) == []


def test_curl_over_the_unix_socket(served: Served) -> None:
    sock = served.sock
    body = json.dumps({"model": BASE, "prompt": "The capital of France is", "options": {"num_predict": 4}})
    run = subprocess.run(["curl", "--silent", "--fail", "--unix-socket", str(sock), "http://appliance/api/generate",
                          "-d", body], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 4


def test_a_disconnect_mid_stream_stops_the_real_model_and_is_recorded(served: Served) -> None:
    sock = served.sock
    ledger = sock.parent / "ledger.jsonl"
    body = {"model": BASE, "prompt": "Once upon a time", "options": {"num_predict": 400, "temperature": 0}}
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
