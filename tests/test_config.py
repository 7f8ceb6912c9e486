"""The policy: defaults are exactly policies/default.toml; mistakes in config.toml fail loudly; and a
change recorded from the CLI is in force for a running server's next request (the real model)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.config import DEFAULTS, load_policy
from anticloud.errors import ConfigError
from anticloud.home import Home
from ledger import verify_file
from tests.conftest import operator_imports_real_model, wait_for_socket

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_shipped_default_policy() -> None:
    assert tomllib.loads((ROOT / "policies" / "default.toml").read_text()) == DEFAULTS


def test_every_setting_is_documented_in_one_table() -> None:
    """A blank line inside a Markdown table ends it: every setting must be a row of the one table."""
    lines = (ROOT / "policies" / "README.md").read_text().splitlines()
    start = lines.index("| setting | default | meaning |")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = {line.split("|")[1].strip().strip("`") for line in lines[start + 2:end]}
    for section, values in DEFAULTS.items():
        for key in values:
            assert f"{section}.{key}" in rows, f"{section}.{key} is not a row of the table in policies/README.md"


def test_overrides_apply(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config.write_text("[trust]\nmin_signatures = 3\n[gguf]\nmax_tensors = 10\n")
    policy = load_policy(home)
    assert policy.min_signatures == 3 and policy.gguf.max_tensors == 10 and policy.max_file_bytes == 64 << 30


@pytest.mark.parametrize(("text", "message"), [
    ("[trust]\nmin_signature = 2\n", "unknown setting trust.min_signature"),
    ("[trusts]\nmin_signatures = 2\n", "unknown section"),
    ('[trust]\nmin_signatures = "2"\n', "must be a int"),
    ("[trust]\nmin_signatures = 0\n", "at least 1"),
    ('[chat_templates]\npinned = ["abc"]\n', "sha3-256:<64 hex digits>"),
    ("[trust\n", "config.toml"),
])
def test_mistakes_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    home = Home(tmp_path)
    home.config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_policy(home)


# -- recorded changes reach a running engine (a real `serve --isolate`, changed from the CLI) -----


def _records(home: Home) -> list[dict[str, Any]]:
    return [json.loads(x) for x in home.ledger.read_bytes().splitlines()]


def _cli(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (args, run.stderr)
    return run


@contextlib.contextmanager
def _server(home: Home) -> Iterator[httpx.Client]:
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    sock = home.root / "anticloud.sock"
    try:
        wait_for_socket(sock)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://appliance",
                          timeout=120) as client:
            yield client
        _cli(home, "stop")
        assert server.wait(60) == 0
    finally:
        server.kill()


GENERATE = {"prompt": "Hello", "stream": False, "options": {"num_predict": 2, "temperature": 0}}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_config_set_from_the_cli_is_in_force_for_the_running_servers_next_request(
        gemma_path: Path, tmp_path: Path) -> None:
    home = operator_imports_real_model(tmp_path, gemma_path)
    _cli(home, "config", "set", "inference.record_content", "plaintext")
    with _server(home) as client:
        assert client.post("/api/generate", json=GENERATE).status_code == 200
        assert _records(home)[-1]["data"]["output"] and _records(home)[-2]["data"]["prompt"] == "Hello"

        _cli(home, "config", "set", "inference.record_content", "hash")
        assert client.post("/api/generate", json=GENERATE).status_code == 200
        begin, end = (r["data"] for r in _records(home)[-2:])
        assert "prompt" not in begin and "output" not in end and end["output_sha3_256"].startswith("sha3-256:")

        accepted = home.config.read_bytes()  # an edit around anticloud is drift: never taken over
        home.config.write_text(accepted.decode().replace('"hash"', '"plaintext"'))
        assert client.post("/api/generate", json=GENERATE).status_code == 200
        assert "output" not in _records(home)[-1]["data"]
        home.config.write_bytes(accepted)

        _cli(home, "config", "set", "api.tokens_on_unix_socket", "true")
        refused = client.post("/api/generate", json=GENERATE)
        assert refused.status_code == 401 and "bearer token is required" in refused.json()["error"]
        assert _records(home)[-1]["kind"] == "request.rejected"
        _cli(home, "config", "set", "api.tokens_on_unix_socket", "false")
        assert client.post("/api/generate", json=GENERATE).status_code == 200

        # A compute setting unloads the loaded model, which the next use loads under it; a chat whose
        # formatted prompt overflows that context, while its text alone fits, is a recorded 400.
        _cli(home, "config", "set", "models.gemma3-270m.n_ctx", "512")
        chat = {"messages": [{"role": "user", "content": "hi"}] * 100, "stream": False}
        too_long = client.post("/api/chat", json=chat)
        assert too_long.status_code == 400 and "the formatted chat is" in too_long.json()["error"]
        kinds = [r["kind"] for r in _records(home)]
        assert kinds[-5:] == ["model.unload", "model.load", "inference.begin", "inference.end", "request.rejected"]
        unload, load, _, end, _ = (r["data"] for r in _records(home)[-5:])
        assert unload["reason"] == "config.change" and load["n_ctx"] == 512 and end["done_reason"] == "error"
    assert verify_file(home.ledger).status == "intact"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_revoking_the_publisher_unloads_the_served_model_and_refuses_it(gemma_path: Path, tmp_path: Path) -> None:
    home = operator_imports_real_model(tmp_path, gemma_path)
    key_id = _cli(home, "keys", "list").stdout.split()[0]
    with _server(home) as client:
        assert client.post("/api/generate", json=GENERATE).status_code == 200
        _cli(home, "keys", "revoke", key_id, "--yes")
        refused = client.post("/api/generate", json=GENERATE)
        assert refused.status_code == 409 and "revoked" in refused.json()["error"]
        assert client.get("/api/ps").json()["models"] == []
        again = client.post("/api/generate", json=GENERATE)
        assert again.status_code == 409
    tail = [(r["kind"], r["data"]) for r in _records(home) if r["kind"] in (
        "trust.revoke", "model.unload", "model.load.refused", "request.rejected", "inference.begin")]
    after = tail[[k for k, _ in tail].index("trust.revoke"):]
    assert [k for k, _ in after][:4] == ["trust.revoke", "model.unload", "model.load.refused", "request.rejected"]
    assert after[1][1]["reason"] == "trust.revoke" and "inference.begin" not in [k for k, _ in after]


def test_config_set_takes_durations_and_negative_numbers_and_refuses_a_model_not_in_the_store(
        imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")

    def config(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--home", str(home.root), "config", *args])

    assert config("set", "engine.keep_alive", "5m").exit_code == 0
    assert config("set", "api.stall_timeout", "1m30s").exit_code == 0
    assert config("set", "engine.keep_alive", "-1").exit_code == 0, "negative: kept loaded, as in Ollama"
    doc = json.loads(config("show").output.rsplit("digest", 1)[0])
    assert (doc["engine"]["keep_alive"], doc["api"]["stall_timeout"]) == (-1, 90)
    for args, message in ((("engine.keep_alive", "1.5s"), "whole seconds"), (("engine.keep_alive", "soon"),
                                                                             "is not a duration"),
                          (("inference.default_model", "nonesuch"), "no model named 'nonesuch'")):
        before = home.ledger.read_bytes()
        refused = config("set", *args)
        assert refused.exit_code != 0 and message in refused.output and len(refused.output.splitlines()) == 1
        assert home.ledger.read_bytes() == before, "a refused change records nothing"
    assert config("set", "inference.default_model", "tiny").exit_code == 0


def test_config_accept_shows_and_records_what_it_accepts(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    home.config.write_text('[engine]\nqueue_size = 9\n\n[airgap]\nmode = "warn"\n')
    accepted = CliRunner().invoke(cli, ["--home", str(home.root), "config", "accept"])
    assert accepted.exit_code == 0
    assert "  airgap.mode: 'enforce' -> 'warn'" in accepted.output and "engine.queue_size: 4 -> 9" in accepted.output
    record = json.loads(home.ledger.read_bytes().splitlines()[-1])
    assert record["kind"] == "config.accept" and record["data"]["changes"] == [
        {"key": "airgap.mode", "old": "enforce", "new": "warn"}, {"key": "engine.queue_size", "old": 4, "new": 9}]
