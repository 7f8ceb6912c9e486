"""Sealed content on the real models, end to end: a fresh home seals by default; `serve --isolate`
streams as before while the ledger keeps no trace of what was asked or answered; the operator
reads it back with `anticloud content show`; a person's content is erased while the engine runs,
and afterwards the chain still verifies and the keys are nowhere under the home."""

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
from anticloud.home import Home
from anticloud.vault import Keyring, crypto
from ledger import verify_file
from tests.conftest import operator_imports_real_model
from tests.waiting import wait_for_socket

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write one sentence about the ward's night shift for patient Zebediah Quill."


@pytest.fixture(scope="module")
def served(gemma_path: Path, smollm2_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, dict[str, str]]]:
    """(the home, a token per person) of a server holding both packaged models, on a fresh home."""
    base = tmp_path_factory.mktemp("sealed")
    operator_imports_real_model(base, gemma_path)
    home = operator_imports_real_model(base, smollm2_path, "smollm2-135m")
    tokens = {name: CliRunner().invoke(cli, ["--home", str(home.root), "tokens", "create", name]).stdout.strip()
              for name in ("alice", "bob")}
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(home.socket, 30, server)
        yield home, tokens
    finally:
        server.terminate()
        code = server.wait(60)
    assert code == 0, f"the server exited with {code} on SIGTERM"


def post(home: Home, token: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(home.socket)), base_url="http://anticloud",
                      timeout=120) as client:
        response = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def anticloud(home: Home, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home.root), *args])


def records(home: Home, kind: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, home.ledger.read_bytes().splitlines()) if r["kind"] == kind]


def generate(home: Home, token: str, prompt: str) -> str:
    pieces = post(home, token, "/api/generate", {"model": "gemma3-270m", "prompt": prompt, "stream": True,
                                                  "options": {"num_predict": 24, "temperature": 0}})
    assert len(pieces) > 2 and pieces[-1]["done"]  # streamed, piece by piece
    return "".join(p["response"] for p in pieces)


def test_a_fresh_home_seals_and_the_operator_reads_back_exactly_what_was_said(
        served: tuple[Home, dict[str, str]]) -> None:
    home, tokens = served
    answer = generate(home, tokens["alice"], PROMPT)
    chat = post(home, tokens["bob"], "/api/chat", {"model": "smollm2-135m", "stream": False, "messages": [
        {"role": "user", "content": "Name a colour of the sky."}], "options": {"num_predict": 16}})[0]
    embedded = post(home, tokens["bob"], "/api/embed", {"model": "gemma3-270m", "input": ["ward 7 rota"]})[0]
    assert embedded["embeddings"] and chat["message"]["content"]
    ledger = home.ledger.read_bytes()
    assert b"Zebediah" not in ledger and b"ward 7 rota" not in ledger and answer.encode() not in ledger
    assert crypto.sha3(PROMPT.encode()).removeprefix("sha3-256:").encode() not in ledger
    begins = [r for r in records(home, "inference.begin")]
    assert all("sealed" in b["data"] and "prompt_sha3_256" not in b["data"] for b in begins)
    begin = next(b for b in begins if b["data"]["kind"] == "completion")
    end = next(r for r in records(home, "inference.end") if r["data"]["id"] == begin["data"]["id"])

    shown = anticloud(home, "content", "show", str(begin["seq"]), str(end["seq"]), "--json")
    assert shown.exit_code == 0, shown.output
    fields = [f for line in shown.output.splitlines() for f in json.loads(line)["fields"]]
    assert [(f["field"], f["state"], f["value"]) for f in fields] == [("prompt", "open", PROMPT),
                                                                     ("output", "open", answer)]
    by_person = anticloud(home, "content", "show", "--person", "bob", "--json")
    assert by_person.exit_code == 0, by_person.output
    opened = [f for line in by_person.output.splitlines() for f in json.loads(line)["fields"]]
    values = [f["value"] for f in opened]
    assert [{"role": "user", "content": "Name a colour of the sky."}] in values and ["ward 7 rota"] in values
    assert chat["message"]["content"] in values
    assert all(json.loads(line)["person"] == "bob" for line in by_person.output.splitlines())


def test_erasing_a_person_while_the_engine_runs_leaves_the_chain_intact_and_no_key_under_the_home(
        served: tuple[Home, dict[str, str]]) -> None:
    home, tokens = served
    generate(home, tokens["alice"], "A second note about patient Zebediah Quill.")
    keyring = Keyring(home.keyring)
    private = keyring.private_key(None, None)
    ledger_id = json.loads(home.ledger.read_bytes().splitlines()[0])["data"]["ledger_id"]
    secrets_before = []
    for group in (g for g in keyring.all_groups() if g.person == "alice"):
        group_key = crypto.unwrap_group_key(private, ledger_id, group.group, group.person, group.month, group.sealed)
        secrets_before += [group_key, group.sealed.encode()]
        for entry in keyring.entries(group.group):
            secrets_before += [entry.wrapped.encode(),
                               crypto.unwrap_data_key(group_key, ledger_id, group.group, entry.inference,
                                                      entry.wrapped)]
    assert secrets_before
    alice = [r for r in records(home, "inference.begin") if r["data"]["actor"].get("token") == "alice"]

    held = anticloud(home, "content", "hold", "--person", "alice", "--reason", "complaint 3 under review")
    assert held.exit_code == 0, held.output
    refused = anticloud(home, "content", "erase", "--person", "alice", "--request", "letter 2026-118", "--yes")
    assert refused.exit_code == 1 and "legal hold" in refused.output
    assert records(home, "content.refused") and not records(home, "content.erased")
    hold_id = held.output.split()[1]
    assert anticloud(home, "content", "release", hold_id, "--reason", "closed").exit_code == 0

    erased = anticloud(home, "content", "erase", "--person", "alice", "--request", "letter 2026-118", "--yes",
                       "--delete-ciphertext")
    assert erased.exit_code == 0, erased.output
    [record] = records(home, "content.erased")
    assert record["data"]["scope"] == {"person": "alice"} and record["data"]["request"] == "letter 2026-118"
    one = anticloud(home, "content", "show", str(alice[0]["seq"]))
    assert one.exit_code == 0 and len(one.output.splitlines()) == 1 and "erased" in one.output
    everything = b"".join(p.read_bytes() for p in home.root.rglob("*") if p.is_file() and not p.is_socket())
    assert not [s for s in secrets_before if s in everything]
    assert verify_file(home.ledger).status == "intact"
    verdict = anticloud(home, "verify", "ledger", "--json")  # the home's content store, by default
    twin = subprocess.run([sys.executable, str(ROOT / "tools" / "verify_ledger.py"), str(home.ledger),
                           "--content", str(home.content), "--json"], capture_output=True, text=True)
    for code, out in ((verdict.exit_code, verdict.output), (twin.returncode, twin.stdout)):
        content = json.loads(out)["content"]
        assert code == 0 and json.loads(out)["verdict"] == "intact", out
        assert content["erased"] >= 2 * len(alice) and content["missing_count"] == content["mismatched_count"] == 0
        assert content["checked"] == content["sealed"] - content["erased"] > 0
    bob = anticloud(home, "content", "show", "--person", "bob", "--json")
    assert bob.exit_code == 0 and all(f["state"] == "open" for line in bob.output.splitlines()
                                      for f in json.loads(line)["fields"])

    later = generate(home, tokens["alice"], "A third note, after the erasure.")  # the engine seals anew
    last = records(home, "inference.begin")[-1]
    again = anticloud(home, "content", "show", str(last["seq"]), "--json")
    assert again.exit_code == 0 and json.loads(again.output)["fields"][0]["value"] == \
        "A third note, after the erasure." and later
