"""Embeddings from the real models, served by `anticloud serve --isolate` over the unix socket, through
the clients people use: the Ollama SDK (``embed``, legacy ``embeddings``), the OpenAI SDK (floats and
base64) and LangChain's embedding classes. Answers are judged by their shape and plausibility (a
paraphrase nearer than an unrelated text), never by exact values."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from ledger import verify_file
from tests.conftest import operator_imports_real_model
from tests.waiting import wait_for_socket

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent
CAT, KITTEN, RATES = ("The cat slept on the warm rug.", "A kitten dozed on the carpet.",
                      "Interest rates rose again in May.")


@pytest.fixture(scope="module")
def served(gemma_path: Path, smollm2_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(the unix socket, a per-person token) of a server holding both packaged models."""
    base = tmp_path_factory.mktemp("embeddings")
    operator_imports_real_model(base, gemma_path)
    home = operator_imports_real_model(base, smollm2_path, "smollm2-135m")
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
    begins = [r["data"] for r in records(path) if r["kind"] == "inference.begin"]
    assert len(begins) == sum(r["kind"] == "inference.end" for r in records(path)) > 0
    assert {b["kind"] for b in begins} == {"embedding"} and CAT not in home.ledger.read_text()
    assert verify_file(home.ledger).status == "intact"


def records(sock: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (sock.parent / "ledger.jsonl").read_bytes().splitlines()]


def transport(sock: Path) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(uds=str(sock))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


def norm(vector: Sequence[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


def test_ollama_sdk_embed_and_legacy_embeddings(served: tuple[Path, str]) -> None:
    from ollama import Client, ResponseError

    client = Client(host="http://appliance", transport=transport(served[0]))  # identified by its uid
    reply = client.embed(model="gemma3-270m", input=[CAT, KITTEN, RATES])
    cat, kitten, rates = reply.embeddings
    assert [len(v) for v in reply.embeddings] == [640] * 3
    assert all(norm(v) == pytest.approx(1.0, abs=1e-5) for v in reply.embeddings)
    assert cosine(cat, kitten) > cosine(cat, rates), "a paraphrase must be nearer than an unrelated text"
    assert reply.prompt_eval_count and reply.total_duration and reply.total_duration >= (reply.load_duration or 0)
    cut = client.embed(model="gemma3-270m", input=CAT, dimensions=256, truncate=False)
    assert len(cut.embeddings[0]) == 256 and cut.embeddings[0] == pytest.approx(
        [x / norm(cat[:256]) for x in cat[:256]], abs=1e-5), "the first 256, normalised again"
    legacy = client.embeddings(model="gemma3-270m", prompt=CAT).embedding
    assert abs(norm(legacy) - 1.0) > 0.1 and cosine(legacy, cat) == pytest.approx(1.0, abs=1e-5), \
        "the legacy route gives the model's own vector: the same direction, not normalised"
    small = client.embed(model="smollm2-135m", input=[CAT, KITTEN])
    assert [len(v) for v in small.embeddings] == [576, 576]
    loads = [r["data"]["name"] for r in records(served[0]) if r["kind"] == "model.load"]
    assert loads[-2:] == ["gemma3-270m", "smollm2-135m"], "one model at a time: the other one was loaded"
    with pytest.raises(ResponseError) as refused:
        client.embed(model="gemma3-270m", input="word " * 3000, truncate=False)
    assert refused.value.status_code == 400 and "context holds" in refused.value.error
    client._client.close()


def test_openai_sdk_embeddings_as_floats_and_as_base64(served: tuple[Path, str]) -> None:
    import base64
    import struct

    from openai import BadRequestError, OpenAI

    sock, token = served
    with httpx.Client(transport=transport(sock)) as http, OpenAI(base_url="http://appliance/v1", api_key=token,
                                                                http_client=http) as client:  # type: ignore[arg-type]
        floats = client.embeddings.create(model="gemma3-270m", input=[CAT, RATES], encoding_format="float")
        default = client.embeddings.create(model="gemma3-270m", input=[CAT, RATES])  # the SDK asks for base64
        raw = client.embeddings.with_raw_response.create(model="gemma3-270m", input=CAT, encoding_format="base64",
                                                         user="ward-7").http_response.json()
        with pytest.raises(BadRequestError) as token_ids:
            client.embeddings.create(model="gemma3-270m", input=[[791, 8415, 47442]])
    assert floats.object == "list" and floats.model == "gemma3-270m" and [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data], "base64 decodes to the same"
    decoded = struct.unpack("<640f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == floats.data[0].embedding
    assert "token ids, which would be read with this model's vocabulary" in str(token_ids.value)
    begin = [r["data"] for r in records(sock) if r["kind"] == "inference.begin"][-1]
    assert begin["client"] == "token:alice" and begin["request"] == {"user": "ward-7"} and begin["inputs"] == 1


def test_langchain_embedding_classes(served: tuple[Path, str]) -> None:
    from langchain_ollama import OllamaEmbeddings
    from langchain_openai import OpenAIEmbeddings

    sock, token = served
    ollama = OllamaEmbeddings(model="gemma3-270m", base_url="http://appliance",
                              sync_client_kwargs={"transport": transport(sock)})
    documents = ollama.embed_documents([KITTEN, RATES])
    query = ollama.embed_query(CAT)
    assert ollama._client is not None
    ollama._client._client.close()  # its httpx client, which LangChain leaves open
    assert cosine(query, documents[0]) > cosine(query, documents[1])
    with httpx.Client(transport=transport(sock)) as http:
        # Without check_embedding_ctx_length=False it would send tiktoken's token ids, which are refused.
        openai = OpenAIEmbeddings(model="gemma3-270m", base_url="http://appliance/v1", api_key=token,  # type: ignore[arg-type]
                                  http_client=http, check_embedding_ctx_length=False)
        for got, expected in zip(openai.embed_documents([KITTEN, RATES]), documents, strict=True):
            assert got == pytest.approx(expected, abs=1e-6)
        assert openai.embed_query(CAT) == pytest.approx(query, abs=1e-6)
