"""`anticloud audit hash`: the content hashes' rules on known answers, and the command checked
against the hashes a real server wrote for known prompts and outputs (fake engine; real Gemma too)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.content import completion_prompt, engine_messages, hash_candidate, prompt_hash, text_hash
from anticloud.errors import ContentError
from tests.test_api import Served
from tests.test_api import served as served  # the fixture: a real server on a unix socket, fake engine

ROOT = Path(__file__).resolve().parent.parent


def sha3(data: bytes) -> str:
    return "sha3-256:" + hashlib.sha3_256(data).hexdigest()


def audit_hash(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["audit", "hash", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


# -- the rules, on known answers ------------------------------------------------------------------------


def test_known_answers() -> None:
    # Independent of the code under test: hashlib over bytes written out by hand.
    assert text_hash("hello") == "sha3-256:3338be694f50c5f338814986cdf0686453a888b84f424d792af4b9202398f392"
    assert text_hash("café ☕") == sha3("café ☕".encode())
    assert prompt_hash([{"role": "user", "content": "hi é"}]) == sha3('[{"content":"hi é","role":"user"}]'.encode())
    assert completion_prompt("go", "be brief") == "be brief\n\ngo" and completion_prompt("go", "") == "go"


def test_messages_are_hashed_as_the_engine_was_given_them() -> None:
    sent: list[dict[str, Any]] = [{"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}], "name": "x"}]
    messages, ignored = engine_messages(sent)
    assert messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b"}]
    assert ignored == ["messages[].name"]
    expected = sha3(b'[{"content":"be brief","role":"system"},{"content":"a b","role":"user"}]')
    for form in (sent, {"model": "m", "messages": sent}):  # the messages, or the request body they came in
        assert hash_candidate(json.dumps(form).encode(), "prompt", messages=True).sha3_256 == expected


@pytest.mark.parametrize(("raw", "options", "message"), [
    (b"\xff\xfe", {}, "not UTF-8 (byte 0)"),
    (b"[1]", {"messages": True}, "message 0 needs a string \"role\""),
    (b"{}", {"messages": True}, "non-empty \"messages\" list"),
    (b"[{", {"messages": True}, "not JSON"),
    (b'[{"role": "user", "content": [{"type": "image"}]}]', {"messages": True}, "list of text parts"),
    (b"x", {"kind": "output", "system": "s"}, "not of an output"),
    (b"[]", {"messages": True, "system": "s"}, "one of its messages"),
])
def test_what_cannot_be_hashed_is_refused_in_one_line(raw: bytes, options: dict[str, Any], message: str) -> None:
    kind = options.pop("kind", "prompt")
    with pytest.raises(ContentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hash_candidate(raw, kind, **options)


def test_the_command_reads_an_argument_a_file_or_standard_input_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_bytes(b"once upon a time\n")
    assert audit_hash("once upon a time") == (0, sha3(b"once upon a time") + "\n", "")
    assert audit_hash("--file", str(tmp_path / "p.txt"))[1] == sha3(b"once upon a time\n") + "\n", "the newline too"
    assert audit_hash(stdin=b"once upon a time")[1] == sha3(b"once upon a time") + "\n"
    code, out, err = audit_hash("x", "--expect", sha3(b"y"))
    assert code == 1 and out == sha3(b"x") + "\n" and f"does NOT match {sha3(b'y')}" in err
    code, out, _ = audit_hash("x", "--expect", sha3(b"x").upper().replace("SHA3-256", "sha3-256"), "--json")
    assert code == 0 and json.loads(out)["matches"] is True


@pytest.mark.parametrize(("args", "message"), [
    (["x", "--file", "f"], "not both"),
    (["--messages", "[{"], "the messages are not JSON"),
    (["--kind", "output", "--messages", "[]"], "not of an output"),
    (["--file", "missing"], "cannot read missing: No such file or directory"),
])
def test_bad_input_to_the_command_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, out, err = audit_hash(*[str(tmp_path / a) if a == "f" else a for a in args])
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


# -- against what the appliance recorded ---------------------------------------------------------------------


def begin_and_end(served: Served, ident: str) -> tuple[dict[str, Any], dict[str, Any]]:
    records = served.records()
    begin = next(r["data"] for r in records if r["kind"] == "inference.begin" and r["data"]["id"] == ident)
    end = next(r["data"] for r in records if r["kind"] == "inference.end" and r["data"]["id"] == ident)
    return begin, end


def test_an_ollama_prompt_with_its_system_text_and_its_output_match_the_records(served: Served) -> None:
    with served.client() as c:
        reply = c.post("/api/generate", json={"model": "tiny", "prompt": "one two three", "system": "be brief",
                                              "stream": False})
    assert reply.status_code == 200
    begin, end = begin_and_end(served, reply.headers["x-anticloud-inference"])
    assert "prompt" not in begin, "content is not kept: only its hash can tell"
    assert audit_hash("one two three", "--system", "be brief", "--expect", begin["prompt_sha3_256"])[0] == 0
    assert audit_hash("one two three", "--expect", begin["prompt_sha3_256"])[0] == 1, "without the system text"
    answer = reply.json()["response"]
    assert audit_hash("--kind", "output", "--expect", end["output_sha3_256"], stdin=answer.encode())[0] == 0
    assert audit_hash("--kind", "output", "--expect", end["output_sha3_256"], answer + "!")[0] == 1


def test_an_openai_chat_request_body_and_the_streamed_answer_match_the_records(served: Served, tmp_path: Path) -> None:
    body = {"model": "tiny", "stream": True, "messages": [
        {"role": "developer", "content": "four"},
        {"role": "user", "content": [{"type": "text", "text": "five "}, {"type": "text", "text": "six"}],
         "name": "ann"}]}
    (tmp_path / "request.json").write_text(json.dumps(body))
    with served.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        ident = reply.headers["x-anticloud-inference"]
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    begin, end = begin_and_end(served, ident)
    assert begin["kind"] == "chat"
    code, out, _ = audit_hash("--messages", "--file", str(tmp_path / "request.json"), "--expect",
                              begin["prompt_sha3_256"])
    assert code == 0 and out.startswith(begin["prompt_sha3_256"])
    assert audit_hash("--kind", "output", streamed, "--expect", end["output_sha3_256"])[0] == 0


def test_each_embedding_input_matches_its_recorded_hash(served: Served) -> None:
    with served.client() as c:
        reply = c.post("/api/embed", json={"model": "tiny", "input": ["alpha beta", "gamma"]})
    assert reply.status_code == 200
    begin = next(r["data"] for r in reversed(served.records()) if r["kind"] == "inference.begin")
    for text, recorded in zip(["alpha beta", "gamma"], begin["input_sha3_256"], strict=True):
        assert audit_hash("--kind", "input", text, "--expect", recorded)[0] == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_a_real_models_prompt_and_answer_match_the_records(gemma_path: Path, tmp_path: Path) -> None:
    from tests.conftest import operator_imports_real_model

    home = operator_imports_real_model(tmp_path, gemma_path)
    from click.testing import CliRunner

    from anticloud.cli import cli
    switched = CliRunner().invoke(cli, ["--home", str(home.root), "config", "set", "inference.record_content", "hash"])
    assert switched.exit_code == 0, switched.output  # a new home seals; this policy keeps hashes
    prompt = "The capital of France is"
    run = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), "run", "--isolate",
                          "--temperature", "0", "--num-predict", "12", prompt], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    answer = run.stdout.removesuffix("\n")  # `run` ends the answer with one newline of its own
    assert answer.strip(), "the model answered nothing"
    records = [json.loads(x) for x in home.ledger.read_bytes().splitlines()]
    begin = next(r["data"] for r in records if r["kind"] == "inference.begin")
    end = next(r["data"] for r in records if r["kind"] == "inference.end")
    # A model with a chat template gets the prompt as one user message.
    given = ["--messages", json.dumps([{"role": "user", "content": prompt}])] if begin["kind"] == "chat" else [prompt]
    assert audit_hash(*given, "--expect", begin["prompt_sha3_256"])[0] == 0
    assert audit_hash("--kind", "output", answer, "--expect", end["output_sha3_256"])[0] == 0
    assert begin["actor"] == end["actor"] and "uid" in begin["actor"]
