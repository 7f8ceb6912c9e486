"""The embedding routes on a real uvicorn server and unix socket, with the fake engine: each API's
wire format, normalisation, base64, dimensions, truncation and its refusal, the records, and each
refusal in its route family's shape."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from anticloud.actor import local
from anticloud.config import set_value
from anticloud.home import Home
from anticloud.runtime import Appliance
from ledger import LedgerWriter, sha3_tag
from tests.fake_engine import DIMENSIONS, FakeModel  # registers the "fake" engine
from tests.test_api import ISOLATED, Served, fake_home, running


@pytest.fixture
def served(imported_home: Callable[..., Home], tmp_path: Path) -> Iterator[Served]:
    home = fake_home(imported_home)
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "models.tiny.n_ctx", "8")
        FakeModel.embeddings, FakeModel.embeds = 0, True
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        with running(app, tmp_path / "api.sock"):
            yield Served(home, app, tmp_path / "api.sock")


def raw(text: str) -> list[float]:
    """The fake engine's own vector for ``text`` (tests/fake_engine.py), from a legacy request."""
    import hashlib

    vector = [1.0] * DIMENSIONS
    for word in text.split():
        vector[hashlib.sha3_256(word.encode()).digest()[0] % DIMENSIONS] += 1.0
    return vector


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector]


def packed(vectors: list[list[float]]) -> list[str]:
    return [sha3_tag(struct.pack(f"<{len(v)}f", *v)) for v in vectors]


def test_ollama_embed_returns_a_normalised_vector_per_input_recorded(served: Served) -> None:
    with served.client() as c:
        # as LangChain's OllamaEmbeddings sends them: every option it knows, null when unset
        options = {"temperature": 0.1, "top_k": None, "mirostat": None, "tfs_z": None, "num_gpu": None}
        reply = c.post("/api/embed", json={"model": "tiny:latest", "input": ["one two", "three four five"],
                                           "options": options, "keep_alive": "10m"})
        single = c.post("/api/embed", json={"input": "one two"}).json()  # the default model, a string
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    assert body["model"] == "tiny" and body["prompt_eval_count"] == 5 and body["total_duration"] > 0
    vectors = body["embeddings"]
    assert len(vectors) == 2 and all(len(v) == DIMENSIONS for v in vectors)
    for text, vector in zip(["one two", "three four five"], vectors, strict=True):
        assert vector == pytest.approx(unit(raw(text)), abs=1e-6)
    assert single["embeddings"] == [vectors[0]]
    begin, end = served.last("inference.begin"), served.last("inference.end")
    assert begin["kind"] == "embedding" and begin["inputs"] == 1 and begin["client"].startswith("uid:")
    assert end["output_sha3_256"] == packed([vectors[0]]), "the ledger hashes exactly what the client got"
    first = next(r["data"] for r in served.records() if r["kind"] == "inference.begin")
    assert first["request"] == {"ignored": ["options.temperature"]} and first["normalise"] is True
    expires_in = served.app.loaded()[0]["expires_in"]
    assert isinstance(expires_in, float) and expires_in > 300, "keep_alive applies as for a generation"


def test_ollama_legacy_embeddings_are_the_models_own_vectors(served: Served) -> None:
    with served.client() as c:
        body = c.post("/api/embeddings", json={"model": "tiny", "prompt": "one two two"}).json()
        too_long = c.post("/api/embeddings", json={"model": "tiny", "prompt": " ".join(["w"] * 9)})
    assert body == {"embedding": raw("one two two")}, "not normalised, as Ollama's legacy route answers"
    assert served.last("inference.begin")["normalise"] is False
    assert too_long.status_code == 400 and "context holds 8" in too_long.json()["error"], "it never truncates"


def test_openai_embeddings_as_floats_and_as_base64_little_endian_float32(served: Served) -> None:
    request = {"model": "tiny", "input": ["alpha beta", "gamma"], "user": "ward-7"}
    with served.client() as c:
        floats = c.post("/v1/embeddings", json=request).json()
        encoded = c.post("/v1/embeddings", json={**request, "encoding_format": "base64"}).json()
        one = c.post("/v1/embeddings", json={"model": "tiny", "input": "gamma", "encoding_format": "float"}).json()
    assert floats["object"] == "list" and floats["model"] == "tiny"
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [(d["object"], d["index"]) for d in floats["data"]] == [("embedding", 0), ("embedding", 1)]
    decoded = [list(struct.unpack(f"<{DIMENSIONS}f", base64.b64decode(d["embedding"]))) for d in encoded["data"]]
    assert decoded == [d["embedding"] for d in floats["data"]], "base64 carries the very same float32 values"
    assert decoded[0] == pytest.approx(unit(raw("alpha beta")), abs=1e-6)
    assert one["data"][0]["embedding"] == floats["data"][1]["embedding"]
    begins = [r["data"] for r in served.records() if r["kind"] == "inference.begin"]
    assert begins[0]["request"] == {"user": "ward-7"} and "request" not in begins[2]


def test_dimensions_keep_the_first_ones_normalised_and_more_than_the_model_has_is_refused(served: Served) -> None:
    with served.client() as c:
        ollama = c.post("/api/embed", json={"input": "one two", "dimensions": 3}).json()
        openai = c.post("/v1/embeddings", json={"model": "tiny", "input": "one two", "dimensions": 3}).json()
        too_many = c.post("/api/embed", json={"input": "one two", "dimensions": DIMENSIONS + 1})
        too_many_openai = c.post("/v1/embeddings", json={"model": "tiny", "input": "x", "dimensions": 99})
    assert ollama["embeddings"][0] == pytest.approx(unit(raw("one two")[:3]), abs=1e-6)
    assert openai["data"][0]["embedding"] == ollama["embeddings"][0]
    assert too_many.status_code == 400 and "cannot be returned" in too_many.json()["error"]
    assert too_many_openai.status_code == 400
    assert too_many_openai.json()["error"]["type"] == "invalid_request_error"
    assert served.last("request.rejected")["path"] == "/v1/embeddings"


def test_num_ctx_is_the_window_an_input_may_fill_as_for_a_generation(served: Served) -> None:
    with served.client() as c:
        cut = c.post("/api/embed", json={"input": "a b c d e f", "options": {"num_ctx": 4}}).json()
        refused = c.post("/api/embed", json={"input": "a b c d e f", "truncate": False, "options": {"num_ctx": 4}})
        whole = c.post("/api/embed", json={"input": "a b c d e f", "options": {"num_ctx": 99}}).json()
    assert cut["prompt_eval_count"] == 4 and whole["prompt_eval_count"] == 6, "more than the context: the context"
    assert cut["embeddings"][0] == pytest.approx(unit(raw("a b c d")), abs=1e-6)
    assert refused.status_code == 400
    assert refused.json() == {"error": "an input is 6 tokens; the window asked for (num_ctx) holds 4"}
    begin = next(r["data"] for r in served.records() if r["kind"] == "inference.begin")
    assert begin["num_ctx"] == 4 and "request" not in begin, "num_ctx is applied, not ignored"


def test_an_input_too_long_is_truncated_unless_asked_not_to(served: Served) -> None:
    long = " ".join(f"w{i}" for i in range(12))  # the context holds 8
    with served.client() as c:
        cut = c.post("/api/embed", json={"input": [long]}).json()
        embedded = FakeModel.embeddings
        refused = c.post("/api/embed", json={"input": ["short", long], "truncate": False})
        refused_openai = c.post("/v1/embeddings", json={"model": "tiny", "input": long})
    assert cut["prompt_eval_count"] == 8 and served.last("inference.end")["truncated"] == [0]
    assert cut["embeddings"][0] == pytest.approx(unit(raw(" ".join(long.split()[:8]))), abs=1e-6)
    assert refused.status_code == 400 and refused.json() == {"error": "an input is 12 tokens; tiny's context holds 8"}
    assert refused_openai.status_code == 400 and "context holds 8" in refused_openai.json()["error"]["message"]
    assert FakeModel.embeddings == embedded, "nothing is embedded for a request that is refused"
    rejected = [r["data"] for r in served.records() if r["kind"] == "request.rejected"]
    assert [(r["path"], r["status"]) for r in rejected] == [("/api/embed", 400), ("/v1/embeddings", 400)]


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/embeddings", {"model": "tiny", "input": [15339, 1917]}, "input: token ids, which would be read with this "
     "model's vocabulary whatever tokenizer made them, are not supported by anticloud"),
    ("/v1/embeddings", {"model": "tiny", "input": [[15339, 1917]]}, "token ids, which would be read"),
    ("/v1/embeddings", {"model": "tiny", "input": ""}, "input: the text is not valid under any of the given schemas"),
    ("/v1/embeddings", {"model": "tiny", "input": "x", "encoding_format": "int8"},
     "encoding_format: the text is not one of"),
    ("/v1/embeddings", {"input": "x"}, "'model' is a required property"),
    ("/api/embed", {"input": ["a", ""]}, "input: the array is not valid under any of the given schemas"),
    ("/api/embed", {"input": "x", "normalize": False}, "'normalize' was unexpected"),
    ("/api/embed", {"input": "x", "options": {"mirostat": 1}}, "options/mirostat: 1 is not of type 'null'"),
    ("/api/embed", {"input": "x", "options": {"mirostat_v2": None}}, "'mirostat_v2' was unexpected"),
    ("/api/embeddings", {"prompt": "x", "truncate": True}, "'truncate' was unexpected"),
    ("/api/embed", {"model": "nonesuch", "input": "x"}, "no model named"),
]


@pytest.mark.parametrize(("path", "body", "reason"), BAD)
def test_bad_requests_are_refused_in_the_route_familys_shape_and_recorded(served: Served, path: str,
                                                                         body: dict[str, Any], reason: str) -> None:
    with served.client() as c:
        reply = c.post(path, json=body)
    assert 400 <= reply.status_code < 500
    message = reply.json()["error"]["message"] if path.startswith("/v1/") else reply.json()["error"]
    assert reason in message
    assert served.last("request.rejected") == {"identity": served.last("request.rejected")["identity"],
                                               "path": path, "status": reply.status_code, "reason": message,
                                               "actor": local()}
    assert FakeModel.embeddings == 0 and "inference.begin" not in [r["kind"] for r in served.records()]


def test_an_empty_input_loads_the_model_and_keep_alive_zero_unloads_it(served: Served) -> None:
    with served.client() as c:
        loaded = c.post("/api/embed", json={"model": "tiny", "input": []}).json()
        legacy = c.post("/api/embeddings", json={"model": "tiny", "keep_alive": 0}).json()
    assert loaded == {"model": "tiny", "embeddings": []} and legacy == {"embedding": []}
    kinds = [r["kind"] for r in served.records()]
    assert kinds[-2:] == ["model.load", "model.unload"] and "inference.begin" not in kinds


def test_a_model_that_makes_no_embeddings_is_told_so(served: Served) -> None:
    FakeModel.embeds = False
    with served.client() as c:
        ollama = c.post("/api/embed", json={"input": "x"})
        openai = c.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
    assert ollama.status_code == 400 and ollama.json() == {"error": "tiny makes no embeddings"}
    assert openai.status_code == 400 and openai.json()["error"]["message"] == "tiny makes no embeddings"


def test_the_published_contract_names_the_embedding_routes(served: Served) -> None:
    with served.client() as c:
        contract = c.get("/openapi.json").json()
    assert {"/api/embed", "/api/embeddings", "/v1/embeddings"} <= set(contract["paths"])
    refused = contract["components"]["schemas"]["OpenAIEmbeddings"]["properties"]["input"]["allOf"][0]
    assert refused["x-anticloud-unsupported"].startswith("token ids")
