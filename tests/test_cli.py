"""The command line as a user sees it: output, files, modes and exit codes."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.home import Home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    result = CliRunner().invoke(cli, ["--home", str(home.root), "init"])
    assert result.exit_code == 0, result.output
    assert "appliance key  sha3-256:" in result.output
    return home


def run(home: Home, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    return result.exit_code, result.output


def test_init_writes_a_0600_key_and_an_auditor_pubkey(home: Home) -> None:
    assert stat.S_IMODE(home.identity_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.identity_key.parent.stat().st_mode) == 0o700
    assert home.identity_pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    genesis, config, content = (json.loads(x) for x in home.ledger.read_bytes().splitlines())
    assert genesis["kind"] == "ledger.genesis"
    assert config["kind"] == "config.init" and config["data"]["config"]["airgap"]["mode"] == "enforce"
    assert config["data"]["config"]["inference"]["record_content"] == "sealed"  # a new home seals
    assert content["kind"] == "content.key" and content["data"]["fingerprint"].startswith("sha3-256:")
    assert stat.S_IMODE((home.keyring / "operator.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.keyring.stat().st_mode) == 0o700
    assert b"PRIVATE" not in home.ledger.read_bytes()


def test_init_twice_refuses_and_changes_nothing(home: Home) -> None:
    before = home.ledger.read_bytes(), home.identity_key.read_bytes()
    code, out = run(home, "init")
    assert code == 1 and "already initialised" in out
    assert (home.ledger.read_bytes(), home.identity_key.read_bytes()) == before


def test_home_from_environment(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init"], env={"ANTICLOUD_HOME": str(tmp_path / "env-home")})
    assert result.exit_code == 0
    assert (tmp_path / "env-home" / "ledger.jsonl").exists()


def test_verify_intact(home: Home) -> None:
    code, out = run(home, "verify", "ledger", "--pubkey", str(home.identity_pub))
    assert code == 0
    assert out.startswith("INTACT:") and "records           3" in out and "head              seq 2" in out


def test_verify_broken_names_the_record(home: Home) -> None:
    run(home, "ledger", "checkpoint")
    data = bytearray(home.ledger.read_bytes())
    data[data.index(b'"kind":"ledger.checkpoint"') - 5] ^= 1  # inside record 1's hash
    home.ledger.write_bytes(bytes(data))
    code, out = run(home, "verify", "ledger")
    assert code == 1
    # genesis, config.init, content.key, checkpoint
    assert "BROKEN" in out and "first bad record  seq 3 (line 4, byte" in out


def test_verify_torn_exits_3(home: Home) -> None:
    with open(home.ledger, "ab") as handle:
        handle.write(b'{"data":')
    code, out = run(home, "verify", "ledger")
    assert code == 3 and "TORN TAIL" in out


def test_verify_json_is_machine_readable(home: Home) -> None:
    code, out = run(home, "verify", "ledger", "--json")
    verdict = json.loads(out)
    assert code == 0 and verdict["verdict"] == "intact" and verdict["head"]["seq"] == 2


@pytest.mark.parametrize("args", [["verify", "ledger", "/nonexistent/ledger.jsonl"],
                                  ["verify", "ledger", "--checkpoint", "/nonexistent.json"],
                                  ["verify", "ledger", "--bogus-flag"]])
def test_unreadable_input_or_bad_usage_exits_2_in_one_line(home: Home, args: list[str]) -> None:
    code, out = run(home, *args)
    assert code == 2
    assert "Traceback" not in out


def test_malformed_checkpoint_file_exits_2(home: Home, tmp_path: Path) -> None:
    bad = tmp_path / "cp.json"
    bad.write_text('{"checkpoint": 1}')
    code, out = run(home, "verify", "ledger", "--checkpoint", str(bad))
    assert code == 2 and "not a checkpoint" in out and len(out.strip().splitlines()) == 1


def test_checkpoint_out_then_verify_against_it(home: Home, tmp_path: Path) -> None:
    cp = tmp_path / "cp.json"
    code, out = run(home, "ledger", "checkpoint", "--out", str(cp))
    assert code == 0 and "checkpoint of seq 2" in out
    code, out = run(home, "verify", "ledger", "--checkpoint", str(cp), "--pubkey", str(home.identity_pub))
    assert code == 0 and "your checkpoint   seq 2 matched" in out


def test_checkpoint_refuses_a_key_readable_by_others(home: Home) -> None:
    home.identity_key.chmod(0o644)
    code, out = run(home, "ledger", "checkpoint")
    assert code == 2 and "must be 0600" in out


def test_show_and_tail(home: Home) -> None:
    for _ in range(3):
        run(home, "ledger", "checkpoint")
    code, out = run(home, "ledger", "show", "--kind", "ledger.checkpoint")
    assert code == 0 and len(out.splitlines()) == 3
    code, out = run(home, "ledger", "tail", "-n", "2", "--json")
    assert [json.loads(x)["seq"] for x in out.splitlines()] == [4, 5]


HOSTILE_TEXT = {  # what a client, a bundle or a model file may put into a record's text
    "title\x1b]0;owned\x07": "clear\x1b[2J\x1b[H",
    "c1": "\x9b31mred\x9bm, \x85next line",
    "del and return": "abc\x7f\rxyz",
    "invisible": "safe\u202eexe.txt\u2028\U000e0041",
    "k\x1b[8m": ["\x00", {"nested\x1b": "\x1bP+q\x1b\\"}],
}


@pytest.mark.parametrize("args", [["show"], ["tail", "-n", "1"], ["show", "--json"], ["tail", "--json"]],
                         ids=" ".join)
def test_show_and_tail_escape_terminal_control_characters(home: Home, args: list[str]) -> None:
    from ledger import LedgerWriter

    with LedgerWriter.open(home.ledger) as writer:
        writer.append("request.rejected", HOSTILE_TEXT)
    code, out = run(home, "ledger", *args)
    assert code == 0
    raw = [c for c in out if c != "\n" and not c.isprintable()]
    assert not raw, f"control characters reached the terminal: {raw}"
    last = out.splitlines()[-1]
    if "--json" in args:  # still the same record, losslessly
        assert json.loads(last)["data"] == HOSTILE_TEXT
    else:
        assert "title\\x1b]0;owned\\x07=clear\\x1b[2J" in last and "\\x9b31m" in last and "\\u202e" in last


def test_commands_before_init_say_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "nothing"), "ledger", "checkpoint"])
    assert result.exit_code == 2 and "anticloud init" in result.output


def test_help_documents_exit_codes() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    assert "Exit codes" in out and "torn tail" in out


def test_init_that_cannot_write_its_ledger_leaves_nothing_and_can_be_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger import LedgerWriteError, LedgerWriter

    home = Home(tmp_path / "home")
    real = LedgerWriter.create

    def full_disk(path: Path, genesis: dict[str, str]) -> LedgerWriter:
        raise LedgerWriteError(path, "cannot create ledger: No space left on device")

    monkeypatch.setattr(LedgerWriter, "create", full_disk)
    code, out = run(home, "init")
    assert code == 1 and "No space left on device" in out and len(out.strip().splitlines()) == 1
    assert not home.identity_key.exists() and not home.identity_pub.exists() and not home.ledger.exists()
    monkeypatch.setattr(LedgerWriter, "create", real)
    assert run(home, "init")[0] == 0


def test_os_errors_become_one_line(home: Home, tmp_path: Path) -> None:
    assert run(home, "keys", "generate", "--out", str(tmp_path / "k"))[0] == 0
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"GGUF")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    key = str(tmp_path / "k" / "publisher.key")
    out_dir = str(blocker / "bundle")
    code, out = run(home, "bundle", "create", str(weights), "--name", "w", "--key", key, "--out", out_dir)
    assert code == 1
    assert out.strip() == f"anticloud: error: {blocker / 'bundle'}: Not a directory"


def test_config_show_set_accept(home: Home) -> None:
    code, out = run(home, "config", "show")
    assert code == 0 and '"mode": "enforce"' in out and "digest sha3-256:" in out
    code, out = run(home, "config", "set", "airgap.mode", "warn")
    assert code == 0 and "'enforce' -> 'warn'" in out
    code, out = run(home, "config", "set", "airgap.mode", "off")
    assert code == 2 and "must be one of enforce, warn" in out
    code, out = run(home, "config", "set", "compute.n_ctx", "lots")
    assert code == 2 and "must be a int" in out
    code, out = run(home, "config", "accept")
    assert code == 0 and "accepted config sha3-256:" in out
    kinds = [json.loads(x)["kind"] for x in home.ledger.read_bytes().splitlines()]
    assert kinds[-2:] == ["config.change", "config.accept"]


def test_run_refuses_more_than_a_model_and_a_prompt(home: Home) -> None:
    code, out = run(home, "run", "a", "b", "c")
    assert code == 2 and "at most a model and a prompt" in out


def test_serve_refuses_a_non_loopback_address(home: Home) -> None:
    code, out = run(home, "serve", "--host", "0.0.0.0")
    assert code == 2 and "not a loopback address" in out


def test_lifecycle_commands_say_what_they_affect_and_ask_first(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny", "other")
    runner = CliRunner()

    def anticloud(*args: str) -> Any:
        return runner.invoke(cli, ["--home", str(home.root), *args])

    listed = anticloud("models", "list").output
    assert listed.count("ready") == 2, listed
    blob = next((home.root / "models" / "blobs").iterdir())  # the two models' weights are the same bytes
    weights = blob.read_bytes()
    blob.write_bytes(weights + b"!")  # what a failing disk or an insider might leave
    assert anticloud("models", "list").output.count("CANNOT LOAD: its weights are") == 2
    blob.write_bytes(weights)

    key_id = next(iter(json.loads((home.root / "trust.json").read_text())["keys"]))
    before = home.ledger.read_bytes()
    unasked = anticloud("keys", "revoke", key_id)  # no terminal and no --yes: nothing is done
    assert unasked.exit_code == 2 and "not confirmed" in unasked.output and home.ledger.read_bytes() == before
    revoked = anticloud("keys", "revoke", key_id, "--yes")
    assert revoked.exit_code == 0 and "models that would no longer load: other, tiny" in revoked.output
    assert anticloud("models", "list").output.count("CANNOT LOAD: 0 valid signature(s) by trusted keys") == 2

    anticloud("config", "set", "inference.default_model", "other")
    assert anticloud("models", "remove", "other").exit_code == 2
    assert home.ledger.read_bytes().count(b"model.remove") == 0
    removed = anticloud("models", "remove", "other", "--yes")
    assert removed.exit_code == 0 and "is the default model" in removed.output
    assert json.loads(home.ledger.read_bytes().splitlines()[-1])["kind"] == "model.remove"


def test_init_refuses_a_content_key_it_could_not_write_before_making_anything(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    code, out = run(home, "init", "--content-key", str(tmp_path / "no-such-media" / "content.key"))
    assert code == 1 and "existing directory" in out and len(out.strip().splitlines()) == 1
    assert not home.ledger.exists() and not home.keyring.exists()
    media = tmp_path / "media"
    media.mkdir()
    code, out = run(home, "init", "--content-key", str(media / "content.key"))
    assert code == 0 and str(media / "content.key") in out
    assert stat.S_IMODE((media / "content.key").stat().st_mode) == 0o600
    assert not (home.keyring / "operator.key").exists()  # the private half lives on the media only


def test_init_keeps_the_content_key_under_a_passphrase(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    result = CliRunner().invoke(cli, ["--home", str(home.root), "init", "--content-passphrase"],
                                env={"ANTICLOUD_CONTENT_PASSPHRASE": "correct horse"})
    assert result.exit_code == 0, result.output
    assert b"ENCRYPTED" in (home.keyring / "operator.key").read_bytes()
    assert json.loads(home.ledger.read_bytes().splitlines()[2])["data"]["passphrase"] is True
    asked = CliRunner().invoke(cli, ["--home", str(home.root), "content", "show", "--person", "alice"],
                               input="correct horse\n")  # asked for, since the key is encrypted
    assert asked.exit_code == 0 and "no sealed content matches" in asked.output
    wrong = CliRunner().invoke(cli, ["--home", str(home.root), "content", "show", "--person", "alice"],
                               input="battery staple\n")
    assert wrong.exit_code == 1 and "wrong passphrase" in wrong.output
