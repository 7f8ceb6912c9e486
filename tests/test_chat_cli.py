"""`anticloud run`, `chat`, `ps` and Ollama's verbs as a user sees them, on the fake engine, in-process;
the chat loop with a scripted terminal; Ctrl-C and a closed pipe. The real model is in test_chat_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud.chatrepl import ModelInfo, Session
from anticloud.cli import cli
from anticloud.cli.backends import Finished, Prompt
from anticloud.cli.chat import converse
from anticloud.config import set_value
from anticloud.errors import Busy
from anticloud.home import Home
from ledger import LedgerWriter
from tests.fake_engine import FakeModel  # registers the "fake" engine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(imported_home: Callable[..., Home]) -> Iterator[Home]:
    """Models tiny (the default) and other, the fake engine, prompts recorded in plaintext, and the
    air-gap guard in warn mode: this test machine has a network, and these tests run no namespace."""
    home = imported_home("tiny", "other")
    with LedgerWriter.open(home.ledger) as writer:
        for key, value in (("engine.name", "fake"), ("inference.default_model", "tiny"),
                           ("inference.record_content", "plaintext"), ("airgap.mode", "warn")):
            set_value(home, writer, key, value)
    FakeModel.gate = None
    yield home
    FakeModel.gate = None


def anticloud(home: Home, *args: str, stdin: str = "") -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def records(home: Home, kind: str) -> list[dict[str, Any]]:
    return [r["data"] for r in map(json.loads, home.ledger.read_bytes().splitlines()) if r["kind"] == kind]


def test_a_single_word_that_names_no_model_is_a_prompt_for_the_default_model(home: Home) -> None:
    code, out, err = anticloud(home, "run", "hello")
    assert (code, out) == (0, "hello \n") and "tokens/s" in err
    begin = records(home, "inference.begin")[-1]
    assert (begin["model"], begin["kind"], begin["prompt"]) == ("tiny", "completion", "hello")
    assert begin["client"] == f"uid:{os.getuid()}"
    assert records(home, "engine.stop")[-1]["reason"] == "run finished"


def test_a_model_alone_takes_its_prompt_from_standard_input(home: Home) -> None:
    code, out, _ = anticloud(home, "run", "other", stdin="piped words\n")
    assert (code, out) == (0, "piped words \n")
    begin = records(home, "inference.begin")[-1]
    assert (begin["model"], begin["prompt"]) == ("other", "piped words")


def test_piped_text_comes_before_the_prompt(home: Home) -> None:
    code, out, _ = anticloud(home, "run", "other:latest", "Summarise.", stdin="A long text.\n")
    assert (code, out) == (0, "A long text. Summarise. \n")
    assert records(home, "inference.begin")[-1]["prompt"] == "A long text.\n\nSummarise."


def test_an_unknown_model_is_refused_before_anything_is_asked(home: Home) -> None:
    code, _, err = anticloud(home, "run", "nonesuch", "Hello")
    assert code == 1 and "no model named 'nonesuch'" in err
    code, _, err = anticloud(home, "chat", "nonesuch", stdin="Hello")
    assert code == 1 and "no model named 'nonesuch'" in err
    assert records(home, "inference.begin") == []


def test_nothing_to_ask_is_refused_before_an_engine_starts(home: Home) -> None:
    before = len(records(home, "engine.start"))
    code, _, err = anticloud(home, "run", "tiny")
    assert code == 2 and "no prompt: give one, or pipe one in" in err
    code, _, err = anticloud(home, "chat", "tiny", stdin="\n")
    assert code == 2 and "standard input is empty" in err
    assert len(records(home, "engine.start")) == before


def test_a_piped_chat_is_one_message_and_its_answer(home: Home) -> None:
    code, out, _ = anticloud(home, "chat", "other", stdin="Hello there\n")
    assert (code, out) == (0, "Hello there \n")
    begin = records(home, "inference.begin")[-1]
    assert begin["kind"] == "chat" and begin["messages"] == [{"role": "user", "content": "Hello there"}]
    assert records(home, "engine.stop")[-1]["reason"] == "chat finished"


def test_ctrl_c_in_run_exits_130_and_is_recorded_as_interrupted(home: Home) -> None:
    """The SIGINT arrives while the engine is in the middle of the answer (held at the fake's gate)."""
    FakeModel.gate = threading.Event()
    FakeModel.at_gate.clear()

    def press_ctrl_c() -> None:
        # once the engine holds at its gate, the first word has been printed
        assert FakeModel.at_gate.wait(10), "the inference never reached its second word"
        os.kill(os.getpid(), signal.SIGINT)  # the run's handler is in place from before the inference began
        assert FakeModel.gate is not None
        FakeModel.gate.set()

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    code, out, err = anticloud(home, "run", "one two three four")
    presser.join()
    assert code == 130 and out == "one \n" and "[interrupted]" in err
    end = records(home, "inference.end")[-1]
    assert end["done_reason"] == "interrupted" and end["output"] == "one "
    assert records(home, "engine.stop")[-1]["reason"] == "run finished"  # the engine stopped in good order


def test_ctrl_c_anywhere_else_exits_130(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("anticloud.models.ModelStore.list", interrupted)
    assert anticloud(home, "list")[0] == 130


def test_ollamas_verbs_are_the_model_commands(home: Home) -> None:
    assert anticloud(home, "list")[:2] == anticloud(home, "models", "list")[:2]
    assert anticloud(home, "show", "tiny")[:2] == anticloud(home, "models", "show", "tiny")[:2]
    code, out, _ = anticloud(home, "rm", "other", "--yes")
    assert (code, out) == (0, "removed other; a running server unloads it once idle\n")
    assert records(home, "model.remove")[-1]["name"] == "other"
    assert "other" not in anticloud(home, "list")[1]
    assert "(= `anticloud models list`)" in anticloud(home, "--help")[1]


def test_ps_says_when_no_server_runs(home: Home) -> None:
    assert anticloud(home, "ps")[:2] == (0, f"no server is running for {home.root}: no model is loaded\n")


def test_a_url_that_is_not_loopback_is_refused(home: Home) -> None:
    code, _, err = anticloud(home, "chat", "--url", "http://192.0.2.1:11434", stdin="hi")
    assert code == 1 and "192.0.2.1 is not a loopback address" in err


def test_a_closed_pipe_ends_a_command_quietly_as_unix_tools_do(home: Home) -> None:
    """`anticloud ledger show | head`: killed by SIGPIPE (the shell says 141), not a word on stderr."""
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line is written
    proc = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), "ledger", "show"], cwd=ROOT,
                          stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(writer)
    assert (proc.returncode, proc.stderr) == (-signal.SIGPIPE, "")


# -- the chat loop, with a scripted terminal and a backend that records what it is asked ------------------


class ScriptedBackend:
    where, who, stops_at_token = "a script", "uid:1", False

    def __init__(self, answers: list[Any]) -> None:
        self.answers, self.asked = answers, []  # type: list[Any], list[tuple[Prompt, dict[str, Any]]]

    def model(self, name: str) -> ModelInfo:
        return ModelInfo(name, "sha3-256:00", 1000, ())

    def names(self) -> set[str]:
        return {"m"}

    def generate(self, model: str, prompt: Prompt, options: dict[str, Any],
                 stop: threading.Event) -> Generator[str | Finished, None, None]:
        self.asked.append((prompt, dict(options)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        for word in answer:
            if word is KeyboardInterrupt:
                raise KeyboardInterrupt  # Ctrl-C while the answer streams
            yield word
        yield Finished("stop", 1, len(answer), 1_000_000, "id")


def script(*lines: Any) -> Callable[[str], str]:
    todo = list(lines)

    def read(prompt: str) -> str:
        line = todo.pop(0)
        if isinstance(line, type) and issubclass(line, BaseException):
            raise line
        return str(line)

    return read


def test_the_chat_loop_keeps_the_conversation_and_survives_ctrl_c_and_refusals(
        capsys: pytest.CaptureFixture[str]) -> None:
    backend = ScriptedBackend([["Hi", " there"], ["Once", KeyboardInterrupt, "never"], Busy("the model is busy"),
                               ["Fine"]])
    converse(Session("m"), backend, script("/set parameter seed 3", "Hello", "Tell a story", "Are you busy?",
                                           KeyboardInterrupt, '"""', "How", 'are you?"""', "/show info", EOFError))
    out, err = capsys.readouterr()
    assert "Hi there\n\n" in out and "Once\n" in out and "error: the model is busy" in err
    assert "Use Ctrl + d or /bye to exit." in out and "sha3-256:00" in out
    assert "No history file is written" in err
    assert all(options == {"seed": 3} for _, options in backend.asked)
    assert backend.asked[-1][0] == [{"role": "user", "content": "Hello"},
                                    {"role": "assistant", "content": "Hi there"},
                                    {"role": "user", "content": "Tell a story"},
                                    {"role": "assistant", "content": "Once"},  # as far as it was shown
                                    {"role": "user", "content": "How\nare you?"}]  # the refused question is gone


def test_the_chat_loop_ends_at_bye(capsys: pytest.CaptureFixture[str]) -> None:
    backend = ScriptedBackend([])
    converse(Session("m"), backend, script("/bye", "never read"))
    assert backend.asked == []
