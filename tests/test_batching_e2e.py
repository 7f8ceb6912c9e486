"""Several clients at once on the real server (`serve --isolate`, the real model, batching on): each
answer deterministic when asked, each generation with its own records saying how it was batched; a
client that goes away frees its place while the others go on; a kill -9 in the middle of a batch
leaves every open generation to be closed by inference.interrupted at the next start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from anticloud.home import Home
from ledger import verify_file
from tests.conftest import operator_imports_real_model
from tests.test_engine_e2e import anticloud, wait_until_answering
from tests.waiting import all_at_once, join

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["The capital of France is", "Three reasons a hospital keeps its language model offline:\n1.",
           "Once upon a time, in a small village,", "The best way to learn a new language is"]


@contextmanager
def serving(home: Home) -> Iterator[Path]:
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    sock = home.root / "anticloud.sock"
    try:
        wait_until_answering(sock)
        yield sock
    finally:
        if server.poll() is None:
            anticloud(home, "stop")
        try:
            server.wait(60)
        finally:
            server.kill()


def client(sock: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://appliance", timeout=300)


def generate(sock: Path, prompt: str, **options: Any) -> tuple[str, dict[str, Any]]:
    with client(sock) as c:
        reply = c.post("/api/generate", json={"prompt": prompt, "stream": False,
                                              "options": {"temperature": 0, "num_predict": 24, **options}})
    assert reply.status_code == 200, reply.text
    return reply.headers["x-anticloud-inference"], reply.json()


def together(sock: Path, **options: Any) -> list[tuple[str, dict[str, Any]]]:
    return all_at_once([lambda p=p: generate(sock, p, **options) for p in PROMPTS])  # type: ignore[misc]


def records(home: Home) -> list[dict[str, Any]]:
    return [json.loads(x) for x in home.ledger.read_bytes().splitlines()]


def by_id(home: Home, kind: str) -> dict[str, dict[str, Any]]:
    return {r["data"]["id"]: r for r in records(home) if r["kind"] == kind}


def test_four_clients_at_once_each_get_their_answer_and_their_records(gemma_path: Path, tmp_path: Path) -> None:
    home = operator_imports_real_model(tmp_path, gemma_path)
    with serving(home) as sock:
        alone = [generate(sock, p, deterministic=True) for p in PROMPTS]
        deterministic = together(sock, deterministic=True)
        batched = together(sock)
    assert [r["response"] for _, r in deterministic] == [r["response"] for _, r in alone]
    assert len({r["response"] for _, r in alone}) == len(PROMPTS)
    assert all(r["response"].strip() and (r["eval_count"] == 24 or r["done_reason"] == "stop") for _, r in batched)

    begins, ends = by_id(home, "inference.begin"), by_id(home, "inference.end")
    for ident, _ in alone + deterministic + batched:
        assert ident in begins and ident in ends, "every generation has its begin and its end"
        assert begins[ident]["seq"] < ends[ident]["seq"]
        assert begins[ident]["data"]["batch"]["parallel"] == 4
    for ident, _ in deterministic:
        assert begins[ident]["data"]["batch"]["deterministic"] is True
        assert ends[ident]["data"]["batch"] | {"steps": 0} == {"parallel": 4, "deterministic": True, "batched": False,
                                                               "steps": 0, "shared_steps": 0, "most_others": 0}
    shared = [ends[i]["data"]["batch"] for i, _ in batched]
    assert all(b["deterministic"] is False for b in shared)
    assert sum(b["batched"] for b in shared) >= 2 and max(b["most_others"] for b in shared) >= 1, shared
    assert max(begins[i]["data"]["batch"]["others"] for i, _ in batched) >= 1, "some began beside others"
    assert verify_file(home.ledger).status == "intact"


def test_a_client_that_goes_away_frees_its_place_while_the_others_go_on(gemma_path: Path, tmp_path: Path) -> None:
    home = operator_imports_real_model(tmp_path, gemma_path)
    assert anticloud(home, "config", "set", "compute.parallel", "2").returncode == 0
    long = {"temperature": 0, "num_predict": 1200}
    third: list[tuple[str, dict[str, Any]]] = []
    with serving(home) as sock, client(sock) as c, \
            c.stream("POST", "/api/generate", json={"prompt": PROMPTS[1], "options": long}) as staying:
        lines = staying.iter_lines()
        assert json.loads(next(lines))["done"] is False
        with c.stream("POST", "/api/generate", json={"prompt": PROMPTS[0], "options": long}) as leaving:
            assert json.loads(next(leaving.iter_lines()))["done"] is False
            left = leaving.headers["x-anticloud-inference"]
            waiter = threading.Thread(target=lambda: third.append(generate(sock, PROMPTS[2], num_predict=8)))
            waiter.start()
        join(waiter, 120, "the request waiting for a place")  # it got the place the leaver freed
        rest = [json.loads(line) for line in lines if line]
        stayed = staying.headers["x-anticloud-inference"]
    assert rest[-1]["done"] is True, "the one that stayed ran to its end"
    begins, ends = by_id(home, "inference.begin"), by_id(home, "inference.end")
    assert ends[left]["data"]["done_reason"] == "client_disconnected"
    waited = third[0][0]
    assert ends[left]["seq"] < begins[waited]["seq"] < ends[stayed]["seq"], "it ran while the other went on"
    assert begins[waited]["data"]["batch"]["others"] == 1


def test_kill_nine_mid_batch_leaves_every_open_generation_to_be_interrupted(gemma_path: Path,
                                                                            tmp_path: Path) -> None:
    home = operator_imports_real_model(tmp_path, gemma_path)
    body = {"options": {"temperature": 0, "num_predict": 1500}}
    opened: list[str] = []
    readers: list[Iterator[str]] = []  # kept: a reader dropped closes its stream, and the client is gone
    with serving(home) as sock:
        engine = int((home.root / "anticloud.pid").read_text())
        clients = [client(sock) for _ in PROMPTS]
        streams = [c.stream("POST", "/api/generate", json={**body, "prompt": p})
                   for c, p in zip(clients, PROMPTS, strict=True)]
        try:
            for stream in streams:
                reply = stream.__enter__()
                readers.append(reply.iter_lines())
                assert json.loads(next(readers[-1]))["done"] is False
                opened.append(reply.headers["x-anticloud-inference"])
            os.kill(engine, signal.SIGKILL)
        finally:
            for c in clients:
                c.close()
    with serving(home):
        pass  # the next start closes what the kill left open
    begins, ends = by_id(home, "inference.begin"), by_id(home, "inference.end")
    interrupted = by_id(home, "inference.interrupted")
    assert all(i in begins and i not in ends for i in opened), "the kill came before any of them ended"
    assert sorted(interrupted) == sorted(opened)
    assert all(interrupted[i]["data"]["begin_seq"] == begins[i]["seq"] for i in opened)
    assert verify_file(home.ledger).status == "intact"
