"""The HTTP API on a real uvicorn server and unix socket, with the fake engine: identity, both wire
formats, bad input, refusals, and a client that goes away mid-stream."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from anticloud import journal, tokens
from anticloud.actor import local
from anticloud.airgap import Interface, NetworkState, Route
from anticloud.api.app import create_app
from anticloud.api.identity import PeerCredProtocol
from anticloud.config import set_value
from anticloud.home import Home
from anticloud.runtime import Appliance
from ledger import LedgerWriter, Record, load_checkpoint, verify_file
from tests.fake_engine import FakeModel  # registers the "fake" engine
from tests.waiting import join, poll

LO = Interface(1, "lo", True, True, ("127.0.0.1/8",))
ISOLATED = NetworkState((LO,), (Route(4, 255, "local", "127.0.0.0/8", "lo"),))
CONNECTED = NetworkState((LO, Interface(2, "eth0", True, False, ("192.0.2.2/24",))), ())


class Served:
    def __init__(self, home: Home, app: Appliance, sock: Path) -> None:
        self.home, self.app, self.sock = home, app, sock

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)), base_url="http://appliance",
                            headers=headers, timeout=30)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.home.ledger.read_bytes().splitlines()]

    def last(self, kind: str) -> dict[str, Any]:
        data: dict[str, Any] = next(r["data"] for r in reversed(self.records()) if r["kind"] == kind)
        return data


@contextlib.contextmanager
def in_thread(server: uvicorn.Server) -> Iterator[None]:
    """Run ``server`` in a thread until leaving; it then shuts down as on SIGTERM (lifespan included)."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the server's thread ended before it started serving"
        return server.started

    poll(started, 30, "the server to start")
    try:
        yield
    finally:
        server.should_exit = True
        join(thread, 10, "the server to stop")


@contextlib.contextmanager
def running(app: Appliance, sock: Path, rejection_interval: float = 60.0) -> Iterator[None]:
    """A real uvicorn server on a unix socket."""
    with in_thread(uvicorn.Server(uvicorn.Config(create_app(app, rejection_interval), uds=str(sock),
                                                 http=PeerCredProtocol, log_level="warning"))):
        yield


def fake_home(imported_home: Callable[..., Home]) -> Home:
    home = imported_home("tiny")
    FakeModel.loads, FakeModel.unloads, FakeModel.generations, FakeModel.gate = [], [], 0, None
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "engine.name", "fake")
        set_value(home, writer, "inference.default_model", "tiny")
        set_value(home, writer, "api.max_body_bytes", "4096")
    return home


@pytest.fixture
def served(imported_home: Callable[..., Home], tmp_path: Path) -> Iterator[Served]:
    home = fake_home(imported_home)
    with LedgerWriter.open(home.ledger) as writer:
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        sock = tmp_path / "api.sock"
        with running(app, sock):
            yield Served(home, app, sock)


GENERATE = {"model": "tiny", "prompt": "one two three", "stream": False}


def test_version_and_health_are_open_and_the_rest_needs_identity(served: Served) -> None:
    set_value(served.home, served.app.writer, "api.tokens_on_unix_socket", "true")  # in force from the next request
    with served.client() as c:
        assert c.get("/api/version").json()["version"]
        assert c.get("/api/health").json() == {"status": "ok"}
        contract = c.get("/openapi.json")
        reply = c.post("/api/generate", json=GENERATE)
    assert contract.status_code == 401, "the published contract is behind an identity, like every route but two"
    assert reply.status_code == 401 and "bearer token is required" in reply.json()["error"]
    assert "on this unix socket" in reply.json()["error"] and "anticloud tokens create NAME" in reply.json()["error"]
    # Refused, and recorded under the uid the kernel gives for the socket's peer.
    assert served.last("request.rejected") == {"identity": f"uid:{os.getuid()}", "path": "/api/generate",
                                               "status": 401, "reason": reply.json()["error"], "actor": local()}
    assert FakeModel.generations == 0


def test_the_unix_socket_peer_is_the_identity(served: Served) -> None:
    with served.client() as c:
        reply = c.post("/api/generate", json=GENERATE)
    assert reply.status_code == 200
    begin = served.last("inference.begin")
    assert begin["client"] == f"uid:{os.getuid()}"
    assert reply.headers["x-anticloud-inference"] == begin["id"] == served.last("inference.end")["id"]


def test_per_person_tokens_identify_and_revocation_locks_out(served: Served) -> None:
    _, secret = tokens.create(served.home, served.app.writer, "alice")
    with served.client(secret) as c:
        assert c.post("/api/generate", json=GENERATE).status_code == 200
        assert served.last("inference.begin")["client"] == "token:alice"
        tokens.revoke(served.home, served.app.writer, "alice")
        reply = c.post("/api/generate", json=GENERATE)
    # A token on the socket identifies alone: a wrong one is never taken for the peer's uid. The
    # answer says what to do, and the refusal is recorded under the peer's uid.
    assert reply.status_code == 401 and "unknown, revoked or expired" in reply.json()["error"]
    assert "send none: on this unix socket your uid identifies you" in reply.json()["error"]
    assert served.last("request.rejected")["identity"] == f"uid:{os.getuid()}"
    assert [r["kind"] for r in served.records() if r["kind"].startswith("token.")] == ["token.create", "token.revoke"]
    assert secret not in served.home.ledger.read_text() and secret not in (served.home.root / "tokens.json").read_text()


def test_ollama_generate_streams_ndjson_and_ends_with_statistics(served: Served) -> None:
    with served.client() as c, c.stream("POST", "/api/generate", json={**GENERATE, "stream": True}) as reply:
        assert reply.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert "".join(x["response"] for x in lines) == "one two three "
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["eval_count"] == 3
    for field in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[field], int), field


def test_ollama_chat_both_ways(served: Served) -> None:
    body = {"model": "tiny:latest", "messages": [{"role": "user", "content": "hello there"}]}
    with served.client() as c:
        whole = c.post("/api/chat", json={**body, "stream": False}).json()
        with c.stream("POST", "/api/chat", json=body) as reply:
            parts = [json.loads(line) for line in reply.iter_lines() if line]
    assert whole["message"] == {"role": "assistant", "content": "hello there "} and whole["done"] is True
    assert "".join(p["message"]["content"] for p in parts) == "hello there "


def test_openai_chat_and_completions(served: Served) -> None:
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 3}
    with served.client() as c:
        whole = c.post("/v1/chat/completions", json=chat).json()
        with c.stream("POST", "/v1/chat/completions",
                      json={**chat, "stream": True, "stream_options": {"include_usage": True}}) as reply:
            events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
        completion = c.post("/v1/completions", json={"model": "tiny", "prompt": "x y", "max_tokens": 5}).json()
        models = c.get("/v1/models").json()
    assert whole["choices"][0]["message"]["content"] == "a b c " and whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) == "a b c "
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert completion["object"] == "text_completion" and completion["choices"][0]["text"] == "x y "
    assert models["data"][0]["id"] == "tiny"


def test_listing_showing_and_operator_routes(served: Served, tmp_path: Path) -> None:
    with served.client() as c:
        c.post("/api/generate", json=GENERATE)
        tags = c.get("/api/tags").json()
        show = c.post("/api/show", json={"model": "tiny"}).json()
        ps = c.get("/api/ps").json()
        status = c.get("/api/status").json()
        head = c.get("/api/ledger/head").json()
    assert tags["models"][0]["name"] == "tiny:latest"
    assert show["model_info"]["anticloud.manifest"].startswith("sha3-256:")
    assert ps["models"][0]["name"] == "tiny:latest"
    # What clients filter and show models by comes from the weights' GGUF header (tests/gguf_builder:
    # architecture "test", one tensor of 8 x 4 elements, no file type), not from a name.
    for described in (tags["models"][0], show):
        assert described["details"]["family"] == "test" and described["details"]["parameter_size"] == "32"
        assert described["details"]["quantization_level"] == "unknown"
        assert described["capabilities"] == ["completion", "embedding"]
    assert show["model_info"]["general.parameter_count"] == 32
    assert status["airgap"] == "isolated" and status["loaded"][0]["name"] == "tiny"
    checkpoint = tmp_path / "cp.json"
    checkpoint.write_text(json.dumps(head["checkpoint"]))
    verdict = verify_file(served.home.ledger, checkpoint=load_checkpoint(checkpoint))
    assert verdict.status == "intact" and verdict.checkpoint is not None and verdict.checkpoint["seq"] == head["seq"]


BAD: list[tuple[str, Any, int, str]] = [
    ("/api/generate", b"{not json", 400, "not valid JSON"),
    ("/api/generate", {"model": "tiny", "prompt": 3}, 400, "3 is not of type 'string'"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "images": ["a"]}, 400,
     "images: images are not supported by anticloud"),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x", "images": ["a"]}]}, 400,
     "messages/0/images: images are not supported by anticloud"),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     400, "tools: tools are not supported by anticloud"),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "think": True}, 400,
     "think: thinking is not supported by anticloud"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}, 400,
     "messages/0/content/0/type: content parts other than text (images, audio, files) are not supported"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
     "tools: tools are not supported by anticloud"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "seed": 1}, 400, "'seed' was unexpected"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"mirostat": 2}}, 400, "'mirostat' was unexpected"),
    ("/api/generate", {"model": "nonesuch", "prompt": "x"}, 404, "no model named"),
    ("/api/generate", {"model": "tiny", "prompt": "x" * 5000}, 413, "4096-byte limit"),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "is not one of"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [], "n": 2}, 400,
     "n: more than one choice (n) is not supported by anticloud"),
    ("/v1/completions", {"model": "tiny"}, 400, "'prompt' is a required property"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD)
def test_bad_input_is_refused_in_the_routes_own_shape_and_recorded(served: Served, path: str, body: Any,
                                                                   status: int, message: str) -> None:
    with served.client() as c:
        reply = c.post(path, content=body) if isinstance(body, bytes) else c.post(path, json=body)
    assert reply.status_code == status
    error = reply.json()["error"]
    text = error["message"] if path.startswith("/v1/") else error
    assert message in text and "\n" not in text
    if path.startswith("/v1/"):
        assert error["type"] == "invalid_request_error"
    assert served.last("request.rejected")["status"] == status
    assert FakeModel.generations == 0, "bad input must never reach the engine"


SECRET = "patient 4711 has a positive HIV test"
# What would show the secret leaked: words no hash or id in the ledger can contain, unlike "4711",
# which a hex digest holds by chance (one ledger in a dozen or so).
TELLTALE = "positive HIV"
CARRYING_TEXT: list[tuple[str, dict[str, Any]]] = [
    ("/api/generate", {"model": "tiny", "prompt": [SECRET]}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "system": [SECRET]}),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": [SECRET]}]}),
    ("/api/chat", {"model": "tiny", "messages": [{"role": SECRET, "content": "x"}]}),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text",
                                                                                          "text": [SECRET]}]}]}),
    ("/v1/completions", {"model": "tiny", "prompt": {"text": SECRET}}),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": [SECRET] * 9}),
    ("/api/embed", {"model": "tiny", "input": [SECRET, ""]}),
]


@pytest.mark.parametrize(("path", "body"), CARRYING_TEXT)
def test_a_malformed_request_leaves_its_text_out_of_the_ledger_and_the_journal(served: Served, path: str,
                                                                              body: dict[str, Any]) -> None:
    """Under record_content = "hash" a prompt is never recorded as text, even in a request refused for its shape:
    the refusal names where and what is wrong, never the value, which the ledger would keep for good."""
    with served.client() as c:
        reply = c.post(path, json=body)
    assert reply.status_code == 400, reply.text
    rejected = next(r for r in reversed(served.records()) if r["kind"] == "request.rejected")
    assert rejected["data"]["reason"].startswith("invalid request: ")
    assert TELLTALE not in served.home.ledger.read_text()
    assert TELLTALE not in (journal.line(Record(rejected["seq"], rejected["ts"], rejected["kind"], rejected["data"],
                                              rejected["prev"], rejected["hash"])) or "")


def test_integral_floats_are_taken_as_integers(served: Served) -> None:
    options = {"top_k": 1.0, "seed": 7.0, "num_predict": 2.0}
    with served.client() as c:
        reply = c.post("/api/generate", json={**GENERATE, "options": options})
    assert reply.status_code == 200, reply.text
    params = served.last("inference.begin")["params"]
    assert (params["top_k"], params["seed"], params["num_predict"]) == (1, 7, 2)


def test_a_prompt_longer_than_the_context_is_refused_before_generation(served: Served) -> None:
    set_value(served.home, served.app.writer, "models.tiny.n_ctx", "8")
    with served.client() as c:
        reply = c.post("/api/generate", json={"model": "tiny", "prompt": "w " * 20})
    assert reply.status_code == 400 and reply.json()["error"] == "the prompt is 20 tokens; tiny's context holds 8"
    assert served.last("request.rejected")["reason"] == reply.json()["error"]
    assert FakeModel.generations == 0 and not any(r["kind"] == "inference.begin" for r in served.records())


def test_a_breach_refuses_with_503_and_records_it(served: Served) -> None:
    served.app.observe(CONNECTED)
    with served.client() as c:
        reply = c.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert reply.status_code == 503 and "eth0" in reply.json()["error"]["message"]
    assert reply.json()["error"]["type"] == "server_error"
    assert served.last("request.rejected")["status"] == 503


def test_a_client_that_disconnects_stops_generation_and_is_recorded(served: Served) -> None:
    FakeModel.gate = threading.Event()  # the fake engine holds after its first token
    words = " ".join(f"w{i}" for i in range(50))
    with served.client() as c, c.stream("POST", "/api/generate", json={"model": "tiny", "prompt": words}) as reply:
        first = next(reply.iter_lines())
        assert json.loads(first)["response"] == "w0 "
    FakeModel.gate.set()
    poll(lambda: any(r["kind"] == "inference.end" for r in served.records()), 10,
         "the inference.end of the generation whose client left")
    end = served.last("inference.end")
    assert end["done_reason"] == "client_disconnected"
    assert end["output_chars"] < len(words) // 2, "generation must stop soon after the client leaves"


def test_past_its_places_and_queue_a_request_gets_503_with_retry_after_and_is_recorded(served: Served) -> None:
    """The fake model decodes one generation at a time (parallel 1); with queue_size 1, one request
    generates, one waits, and the next is refused at once rather than queued without bound."""
    set_value(served.home, served.app.writer, "engine.queue_size", "1")
    FakeModel.gate = threading.Event()  # the first generation holds after its first token
    words = " ".join(f"w{i}" for i in range(8))
    results: list[int] = []
    with served.client() as c, c.stream("POST", "/api/generate", json={"model": "tiny", "prompt": words}) as first:
        assert first.status_code == 200 and next(first.iter_lines())

        def waits() -> None:
            with served.client() as other:
                results.append(other.post("/api/generate", json={**GENERATE, "stream": False}).status_code)

        waiter = threading.Thread(target=waits)
        waiter.start()
        poll(lambda: served.app.pool.status()[0]["waiting"] == 1, 10, "the second request to wait in the queue")
        refused = c.post("/api/generate", json=GENERATE)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "1 request(s) already waiting" in refused.json()["error"]
        FakeModel.gate.set()
    join(waiter, 10, "the queued request")
    assert results == [200], "the queued request is served once the model is free"
    rejected = served.last("request.rejected")
    assert rejected["status"] == 503 and "already waiting" in rejected["reason"]


def test_over_tcp_a_token_is_always_required(served: Served) -> None:
    config = uvicorn.Config(create_app(served.app), host="127.0.0.1", port=0, http=PeerCredProtocol,
                            log_level="warning")
    server = uvicorn.Server(config)
    with in_thread(server):
        port = server.servers[0].sockets[0].getsockname()[1]
        _, secret = tokens.create(served.home, served.app.writer, "bob")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.post("/api/generate", json=GENERATE).status_code == 401
            reply = c.post("/api/generate", json=GENERATE, headers={"authorization": f"Bearer {secret}"})
        assert reply.status_code == 200 and served.last("inference.begin")["client"] == "token:bob"


DEEP = b'{"model": "tiny", "prompt": "x", "options": {"stop": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
MALFORMED: list[tuple[str, bytes, str]] = [
    ("/api/generate", b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels deep"),
    ("/api/generate", DEEP, "nested more than 32 levels deep"),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "options": {"temperature": NaN}}', "NaN is not a JSON number"),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "options": {"top_p": Infinity}}', "Infinity is not"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "x", "temperature": -Infinity}', "-Infinity is not"),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [], "top_p": 1e999}', "1e999 is out of range"),
]


@pytest.mark.parametrize(("path", "body", "message"), MALFORMED)
def test_deep_nesting_and_non_finite_numbers_are_recorded_400s(served: Served, path: str, body: bytes,
                                                              message: str) -> None:
    served.app.config.doc["api"]["max_body_bytes"] = 1 << 20  # room for the deep bodies
    with served.client() as c:
        reply = c.post(path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    text = error["message"] if path.startswith("/v1/") else error
    assert message in text and "\n" not in text
    assert served.last("request.rejected") == {"identity": f"uid:{os.getuid()}", "path": path, "status": 400,
                                               "reason": text, "actor": local()}
    assert FakeModel.generations == 0


def test_unknown_routes_and_wrong_methods_are_recorded_errors_in_the_familys_shape(served: Served) -> None:
    with served.client() as c:
        missing = c.get("/api/nonesuch")
        missing_v1 = c.post("/v1/images/generations", json={})
        wrong = c.get("/api/generate")
        wrong_v1 = c.delete("/v1/models")
    assert (missing.status_code, missing.json()) == (404, {"error": "no such route"})
    assert missing_v1.status_code == 404 and missing_v1.json()["error"]["message"] == "no such route"
    assert wrong.status_code == 405 and wrong.json() == {"error": "GET is not allowed on /api/generate"}
    assert wrong_v1.status_code == 405 and wrong_v1.json()["error"]["type"] == "invalid_request_error"
    rejected = [r["data"] for r in served.records() if r["kind"] == "request.rejected"]
    assert [(r["path"], r["status"], r["identity"]) for r in rejected] == [
        ("/api/nonesuch", 404, f"uid:{os.getuid()}"), ("/v1/images/generations", 404, f"uid:{os.getuid()}"),
        ("/api/generate", 405, f"uid:{os.getuid()}"), ("/v1/models", 405, f"uid:{os.getuid()}")]


def test_an_engine_failure_is_a_recorded_503_and_ends_its_inference_as_an_error(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from anticloud.errors import EngineError

    def fail(self: FakeModel, *args: object) -> Iterator[str]:
        raise EngineError("llama.cpp could not decode the prompt (llama_decode returned -1)")
        yield ""

    monkeypatch.setattr(FakeModel, "generate", fail)
    with served.client() as c:
        reply = c.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert reply.status_code == 503 and reply.json()["error"]["type"] == "server_error"
    assert "llama_decode returned -1" in reply.json()["error"]["message"]
    end = served.last("inference.end")
    assert end["done_reason"] == "error" and "llama_decode returned -1" in end["error"]
    assert served.last("request.rejected")["status"] == 503


def test_any_other_failure_in_a_route_is_one_recorded_line_not_a_traceback(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise KeyError("loaded")

    monkeypatch.setattr(served.app, "status", broken)
    with served.client() as c:
        reply = c.get("/api/status")
    assert reply.status_code == 500 and reply.json() == {"error": "internal error: KeyError: 'loaded'"}
    assert served.last("request.rejected")["reason"] == "internal error: KeyError: 'loaded'"


def test_a_flood_of_rejections_is_recorded_compactly_and_every_one_is_counted(
        imported_home: Callable[..., Home], tmp_path: Path) -> None:
    home = fake_home(imported_home)
    sent = 0
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "api.tokens_on_unix_socket", "true")
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        before = len(home.ledger.read_bytes().splitlines())
        with running(app, tmp_path / "api.sock"), httpx.Client(
                transport=httpx.HTTPTransport(uds=str(tmp_path / "api.sock")), base_url="http://appliance") as c:
            for i in range(120):
                path = "/api/generate" if i % 3 else "/v1/models"
                assert c.post(path, json=GENERATE).status_code in (401, 405)
                sent += 1
            for i in range(300):  # a new path each time: folded into one kind once there are too many
                assert c.get(f"/api/x{i}").status_code == 404
                sent += 1
        app.stop()
    records = [json.loads(x) for x in home.ledger.read_bytes().splitlines()[before:]]
    rejected = [r["data"] for r in records if r["kind"] == "request.rejected"]
    assert sum(r.get("count", 1) for r in rejected) == sent, "every rejected request is counted, shutdown included"
    assert len(rejected) < 64 + 10, "repeats are counted, not recorded one by one"
    counted = [r for r in rejected if "count" in r]
    assert {(r["path"], r["status"]) for r in counted} >= {("/api/generate", 401), ("/v1/models", 405), ("*", 404)}
    assert all(r["from"] <= r["until"] for r in counted)
    assert [r["kind"] for r in records][-1] == "engine.stop"
    assert verify_file(home.ledger).status == "intact"


def test_repeats_are_flushed_per_interval_and_a_failed_flush_keeps_its_count() -> None:
    from anticloud.api.rejections import RejectionLog
    from ledger.errors import LedgerWriteError

    now, written, failing = [0.0], [], [False]

    def append(data: dict[str, Any]) -> None:
        if failing[0]:
            raise LedgerWriteError(Path("ledger"), "cannot append: No space left on device")
        written.append(data)

    log = RejectionLog(append, interval=10, clock=lambda: now[0])
    for _ in range(5):
        log.record("anonymous", "/api/chat", 401, "a bearer token is required", {})
    assert [w.get("count") for w in written] == [None], "the first in full, the repeats only counted"
    now[0] = 11
    failing[0] = True
    with pytest.raises(LedgerWriteError):
        log.flush()
    failing[0] = False
    log.record("anonymous", "/api/chat", 401, "a bearer token is required", {})  # a new interval: in full again
    log.flush(force=True)
    assert [w.get("count", 1) for w in written] == [1, 1, 4], "the failed count is written with the next flush"


def test_a_body_that_arrives_too_slowly_is_cut_off_and_recorded(served: Served) -> None:
    set_value(served.home, served.app.writer, "api.stall_timeout", "1")
    head = (b"POST /api/generate HTTP/1.1\r\nhost: appliance\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(str(served.sock))
        slow.sendall(head + b'{"model": "tiny", ')  # then nothing: a slow loris holding its request open
        slow.settimeout(10)
        reply = slow.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    rejected = served.last("request.rejected")
    assert rejected["status"] == 408 and "the body did not arrive within 1 s" in rejected["reason"]


def test_the_root_answers_as_ollamas_does_and_one_model_is_found_by_id(served: Served) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(served.sock)), base_url="http://appliance") as anonymous:
        assert anonymous.get("/").text == "Ollama is running"
        assert anonymous.head("/").status_code == 200
        assert anonymous.get("/v1/models/tiny").status_code == 200  # the peer's uid identifies it on the socket
    with served.client() as c:
        assert c.get("/v1/models/tiny").json() == {"id": "tiny", "object": "model", "created": 0,
                                                   "owned_by": "anticloud"}
        missing = c.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert served.last("request.rejected")["path"] == "/v1/models/nope"


def test_the_message_forms_sdks_send_are_taken_and_what_is_not_applied_is_recorded(served: Served) -> None:
    set_value(served.home, served.app.writer, "inference.record_content", "plaintext")
    body = {"model": "tiny", "user": "ward-7-terminal", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "name": "alice",
         "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]},
    ]}
    with served.client() as c:
        reply = c.post("/v1/chat/completions", json=body)
        ollama = c.post("/api/chat", json={"model": "tiny", "stream": False, "messages": [
            {"role": "user", "content": "three four"}]})
    assert reply.status_code == 200 and ollama.status_code == 200
    begins = [r["data"] for r in served.records() if r["kind"] == "inference.begin"]
    assert begins[-2]["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two"}]
    assert begins[-2]["request"] == {"user": "ward-7-terminal", "ignored": ["messages[].name"]}
    assert "request" not in begins[-1], "nothing said beside the parameters: nothing recorded"


def test_sampling_fields_clients_send_are_applied_or_recorded_as_ignored(served: Served) -> None:
    options = {"presence_penalty": 0.5, "frequency_penalty": 0.25, "repeat_last_n": -1, "typical_p": 0.9,
               "num_ctx": 1 << 20, "num_thread": 4}
    with served.client() as c:
        ollama = c.post("/api/generate", json={**GENERATE, "options": options})
        openai = c.post("/v1/completions", json={"model": "tiny", "prompt": "one two", "presence_penalty": 1.0,
                                                  "frequency_penalty": -0.5})
    assert ollama.status_code == 200 and openai.status_code == 200
    begins = [r["data"] for r in served.records() if r["kind"] == "inference.begin"]
    applied = begins[-2]["params"]
    assert (applied["presence_penalty"], applied["frequency_penalty"], applied["typical_p"]) == ("0.5", "0.25", "0.9")
    loaded = served.app.context_size("tiny")
    assert applied["repeat_last_n"] == applied["num_ctx"] == loaded, "-1 means the whole window, here the context"
    assert begins[-2]["request"] == {"ignored": ["options.num_thread"],
                                     "num_ctx": {"asked": 1 << 20, "applied": loaded}}
    assert (begins[-1]["params"]["presence_penalty"], begins[-1]["params"]["frequency_penalty"]) == ("1.0", "-0.5")


def test_num_ctx_is_the_window_a_request_may_fill(served: Served) -> None:
    with served.client() as c:
        small = c.post("/api/generate", json={**GENERATE, "options": {"num_ctx": 5, "num_predict": 10}})
        too_small = c.post("/api/generate", json={**GENERATE, "options": {"num_ctx": 3}})
    # three words of prompt in a window of five: two of reply, cut at the window ("length")
    assert small.json()["response"] == "one two " and small.json()["done_reason"] == "length"
    assert too_small.status_code == 400 and "the window asked for (num_ctx) holds 3" in too_small.json()["error"]
    assert [r["data"]["params"]["num_ctx"] for r in served.records() if r["kind"] == "inference.begin"] == [5]


def test_a_model_removed_while_loaded_is_unloaded_and_ps_keeps_answering(served: Served) -> None:
    from anticloud.models import ModelStore

    with served.client() as c:
        assert c.post("/api/generate", json=GENERATE).status_code == 200
        with LedgerWriter.open(served.home.ledger) as other:  # `anticloud models remove`, in its own process
            ModelStore(served.home).remove("tiny", other)
        ps = c.get("/api/ps")
        refused = c.post("/api/generate", json=GENERATE)
        status = c.get("/api/status").json()
    assert ps.status_code == 200 and ps.json()["models"] == []
    assert refused.status_code == 404 and "no model named 'tiny'" in refused.json()["error"]
    assert status["loaded"] == [] and FakeModel.unloads == ["tiny"]
    assert served.last("model.unload")["reason"] == "model.remove"


def test_an_empty_prompt_loads_the_model_and_keep_alive_zero_unloads_it(served: Served) -> None:
    with served.client() as c:
        loaded = c.post("/api/generate", json={"model": "tiny"})
        assert loaded.status_code == 200 and loaded.json()["done_reason"] == "load"
        assert [m["name"] for m in c.get("/api/ps").json()["models"]] == ["tiny:latest"]
        unloaded = c.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
        assert unloaded.status_code == 200 and unloaded.json()["done_reason"] == "unload"
        assert c.get("/api/ps").json()["models"] == []
        missing = c.post("/api/generate", json={"model": "nope"})
    assert missing.status_code == 404
    kinds = [r["kind"] for r in served.records()]
    assert kinds[-3:-1] == ["model.load", "model.unload"] and kinds[-1] == "request.rejected"
    assert "inference.begin" not in kinds, "loading ahead of use is not an inference"


def test_operations_refused_for_want_of_a_record_are_recorded_as_an_outage_once_it_ends(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    writer = served.app.writer

    def no_space(fd: int, blob: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with served.client() as c:
        assert c.post("/api/generate", json=GENERATE).status_code == 200
        before = len(served.records())
        monkeypatch.setattr(writer, "write_bytes", no_space)
        refused = [c.post("/api/generate", json=GENERATE) for _ in range(3)]
        assert [r.status_code for r in refused] == [503] * 3
        assert all("No space left on device" in r.json()["error"] for r in refused)
        assert len(served.records()) == before, "nothing reached the file"
        monkeypatch.undo()
        assert c.post("/api/generate", json=GENERATE).status_code == 200
    records = served.records()[before:]
    assert records[0]["kind"] == "ledger.outage", "the outage is the first record once the ledger takes records"
    outage = records[0]["data"]
    assert outage["refused"] == 3 and "No space left on device" in outage["error"]
    assert outage["from"] <= outage["until"] <= records[0]["ts"]
    assert [r["kind"] for r in records[1:3]] == ["inference.begin", "inference.end"]
    assert verify_file(served.home.ledger).status == "intact"
