"""`anticloud chat` and `anticloud run` for real: SmolLM2-135M-Instruct on llama.cpp, in a pseudo-terminal,
with an engine of their own in a fresh network namespace (--isolate) and as clients of a running
`anticloud serve --isolate`; every turn checked in the ledger (who, what was sent, why it ended)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.engines import Params
from anticloud.home import Home
from ledger import verify_file
from tests.conftest import operator_imports_real_model
from tests.waiting import poll, wait_for_socket

pexpect = pytest.importorskip("pexpect")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
BRIEF = "Answer in one short sentence."
STORYTELLER = "You are a storyteller who writes long stories."
STORY = "Tell me a long story about a dragon."
ME = f"uid:{os.getuid()}"


def chat_home(base: Path, smollm2_path: Path) -> Home:
    """The real chat model imported as an operator would, its default, prompts kept in plaintext (so
    the test can read what each turn sent)."""
    home = operator_imports_real_model(base, smollm2_path, MODEL)
    for key, value in (("inference.record_content", "plaintext"), ("inference.default_model", MODEL)):
        result = CliRunner().invoke(cli, ["--home", str(home.root), "config", "set", key, value])
        assert result.exit_code == 0, result.output
    return home


@pytest.fixture(scope="module")
def own_engine(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home where no server runs: each command starts an engine of its own."""
    return chat_home(tmp_path_factory.mktemp("chat-own"), smollm2_path)


@pytest.fixture(scope="module")
def served(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """A home served by `anticloud serve --isolate` on HOME/anticloud.sock."""
    home = chat_home(tmp_path_factory.mktemp("chat-served"), smollm2_path)
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(home.socket, 30, server)
        yield home
    finally:
        server.terminate()
        code = server.wait(60)
    assert code == 0, f"the server exited with {code} on SIGTERM"
    assert verify_file(home.ledger).status == "intact"


def records(home: Home) -> list[dict[str, Any]]:
    return [json.loads(line) for line in home.ledger.read_bytes().splitlines()]


def since(home: Home, start: int, kind: str) -> list[dict[str, Any]]:
    return [r["data"] for r in records(home)[start:] if r["kind"] == kind]


def spawn(home: Home, *args: str, person: Path | None = None) -> Any:
    """The CLI in a pseudo-terminal; ``person``: the HOME of whoever types. It starts with SIGINT
    ignored, as everything a job in a non-interactive shell's background starts does (a CI runner,
    `nohup ... &`): Ctrl-C must still stop an answer, since the chat puts its own handler in place."""
    env = {**os.environ, "TERM": "dumb", **({"HOME": str(person)} if person else {})}
    return pexpect.spawn(sys.executable, ["-m", "anticloud", "--home", str(home.root), *args], cwd=str(ROOT),
                         encoding="utf-8", timeout=180, dimensions=(40, 250), env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def ask(child: Any, *lines: str) -> str:
    """Type ``lines`` (one message, or one command); return what was printed before the next prompt."""
    for line in lines:
        child.sendline(line)
    child.expect_exact(">>> ")
    return str(child.before).split(lines[-1], 1)[-1].replace("\r\n", "\n").strip()


def plausible(answer: str) -> None:
    """An answer in words within the default budget: not empty, no more words than the tokens a
    request may generate (each word takes one at least), mostly letters."""
    words = answer.split()
    assert 2 <= len(words) <= Params().num_predict, answer
    assert sum(c.isalpha() for c in answer) > len(answer) / 2, answer


def converse(child: Any) -> dict[str, str]:
    """The conversation both chat tests hold, as a person would type it. Returns what was shown."""
    child.expect_exact(">>> ")
    assert "Set parameter 'temperature' to '0'" in ask(child, "/set parameter temperature 0")
    assert "Set parameter 'seed' to '7'" in ask(child, "/set parameter seed 7")
    assert "Set system message." in ask(child, f"/set system {BRIEF}")
    shown = {"france": ask(child, "What is the capital of France?"),
             "germany": ask(child, '"""', "And what is the capital", 'of Germany?"""')}
    ask(child, f"/set system {STORYTELLER}")
    ask(child, "/set parameter num_predict 2000")
    child.sendline(STORY)
    child.expect_exact(STORY + "\r\n")
    child.expect(r"\w+\W+\w+\W+\w+")  # the story has begun
    begun = str(child.before) + str(child.after)
    child.sendintr()
    child.expect_exact(">>> ")  # the answer stopped; the chat goes on
    shown["story"] = (begun + str(child.before)).replace("\r\n", "\n").replace("^C", "").strip()
    assert "num_predict          2000" in ask(child, "/show parameters")
    ask(child, "/set parameter num_predict 8")
    shown["hello"] = ask(child, "Say hello.")
    child.sendeof()  # Ctrl-D leaves
    child.expect(pexpect.EOF)
    child.close()
    assert (child.exitstatus, child.signalstatus) == (0, None)
    return shown


def check_recorded(home: Home, start: int, shown: dict[str, str], stopped_as: str) -> None:
    """Each turn recorded under the person's uid, with the conversation it sent and why it ended."""
    begins, ends = since(home, start, "inference.begin"), since(home, start, "inference.end")
    assert len(begins) == len(ends) == 4
    assert all(b["client"] == ME and b["kind"] == "chat" and b["model"] == MODEL for b in begins)
    assert all(b["params"]["temperature"] == "0.0" and b["params"]["seed"] == 7 for b in begins)
    france, germany, story, hello = ends
    assert begins[0]["messages"] == [{"role": "system", "content": BRIEF},
                                     {"role": "user", "content": "What is the capital of France?"}]
    assert begins[1]["messages"] == [*begins[0]["messages"], {"role": "assistant", "content": france["output"]},
                                     {"role": "user", "content": "And what is the capital\nof Germany?"}]
    for end, said, city in ((france, shown["france"], "Paris"), (germany, shown["germany"], "Berlin")):
        assert end["done_reason"] == "stop" and end["output"].strip() == said  # it ended by itself, as shown
        plausible(said)
        assert city in said, said  # a sensible answer, whatever its wording
    assert begins[2]["messages"][0] == {"role": "system", "content": STORYTELLER}
    assert begins[2]["params"]["num_predict"] == 2000 and story["done_reason"] == stopped_as
    kept = begins[3]["messages"][-2]
    assert kept["role"] == "assistant" and kept["content"].strip() == shown["story"]  # as far as it was shown
    assert story["output"].startswith(kept["content"]) and len(story["output"].split()) < 2000
    assert begins[3]["messages"][-1] == {"role": "user", "content": "Say hello."}
    assert hello["completion_tokens"] >= 1 and shown["hello"]
    assert verify_file(home.ledger).status == "intact"


def test_a_chat_with_an_engine_of_its_own_in_a_fresh_namespace(own_engine: Home, tmp_path: Path) -> None:
    start = len(records(own_engine))
    shown = converse(spawn(own_engine, "chat", "--isolate", MODEL, person=tmp_path))
    check_recorded(own_engine, start, shown, "interrupted")
    assert list(tmp_path.iterdir()) == []  # no history file: the prompts are where the content policy says
    started, stopped = since(own_engine, start, "engine.start"), since(own_engine, start, "engine.stop")
    assert len(started) == 1 and started[0]["namespace"] is True and started[0]["airgap"] == "isolated"
    assert [s["reason"] for s in stopped] == ["chat finished"]


def test_a_chat_through_the_running_server(served: Home, tmp_path: Path) -> None:
    start = len(records(served))
    shown = converse(spawn(served, "chat", MODEL, person=tmp_path))
    check_recorded(served, start, shown, "client_disconnected")  # all a server can know of a Ctrl-C
    assert since(served, start, "engine.start") == []  # the server's engine answered
    assert list(tmp_path.iterdir()) == []


def test_piped_chat_and_run_a_closed_pipe_and_ps_through_the_server(served: Home) -> None:
    def anticloud(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "anticloud", "--home", str(served.root), *args], cwd=ROOT,
                              input=stdin, capture_output=True, text=True, timeout=180, env={**os.environ, **env})

    token = CliRunner().invoke(cli, ["--home", str(served.root), "tokens", "create", "alice"]).stdout.strip()
    start = len(records(served))
    piped = anticloud("chat", MODEL, stdin="What is the capital of France?\n", ANTICLOUD_TOKEN=token)
    assert piped.returncode == 0, piped.stderr
    plausible(piped.stdout)
    run = anticloud("run", MODEL, "--temperature", "0", stdin="What is the capital of Germany?\n")
    assert run.returncode == 0 and "tokens/s" in run.stderr, run.stderr
    plausible(run.stdout)
    begins, ends = since(served, start, "inference.begin"), since(served, start, "inference.end")
    assert [b["messages"] for b in begins] == [[{"role": "user", "content": "What is the capital of France?"}],
                                               [{"role": "user", "content": "What is the capital of Germany?"}]]
    # Greedy, through the chat template, the answer ends by itself; the piped chat samples, and a
    # sampled answer may also run to its length: a model's choice, not the appliance's.
    assert ends[0]["done_reason"] in ("stop", "length") and ends[1]["done_reason"] == "stop"
    assert [b["client"] for b in begins] == ["token:alice", ME]  # a token, when given, names the caller

    head = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(served.root), "run", MODEL, STORY,
                             "--num-predict", "300"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert head.stdout is not None and head.stderr is not None
    assert len(head.stdout.read(10)) == 10
    head.stdout.close()  # what `| head -c 10` does
    assert head.wait(120) == -signal.SIGPIPE and head.stderr.read() == b""  # quiet, as a Unix tool ends
    head.stderr.close()
    poll(lambda: len(since(served, start, "inference.end")) == 3, 30, "the cut-off answer's end record")
    assert since(served, start, "inference.end")[-1]["done_reason"] == "client_disconnected"

    ps = anticloud("ps")
    assert ps.returncode == 0 and re.search(rf"^{MODEL}:latest\s+[0-9a-f]{{12}}\s+\d+\.\d MB", ps.stdout, re.M)


def test_ctrl_c_in_a_one_shot_run_exits_130_and_is_recorded_as_interrupted(own_engine: Home) -> None:
    start = len(records(own_engine))
    child = spawn(own_engine, "run", "--isolate", "--num-predict", "300", MODEL, STORY)
    child.expect(r"\w+\W+\w+\W+\w+")  # the answer has begun
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    end = since(own_engine, start, "inference.end")[-1]
    assert end["done_reason"] == "interrupted" and 0 < len(end["output"].split()) < 300
    assert since(own_engine, start, "inference.begin")[-1]["kind"] == "chat"  # a chat model gets a chat message
    assert [s["reason"] for s in since(own_engine, start, "engine.stop")] == ["run finished"]


def test_run_with_a_model_and_no_prompt_opens_the_chat(own_engine: Home) -> None:
    start = len(records(own_engine))
    child = spawn(own_engine, "run", "--isolate", MODEL)
    child.expect_exact(">>> ")
    assert "Set parameter 'top_k' to '5'" in ask(child, "/set parameter top_k 5")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert [r["kind"] for r in records(own_engine)[start:]] == ["engine.start", "engine.stop"]
