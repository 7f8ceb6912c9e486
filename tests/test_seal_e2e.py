"""Sealing on the real appliance: a server and the command line appending together, then the auditor's verdict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import operator_imports_real_model
from tests.waiting import poll, wait_for_socket

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent


def anticloud(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def kinds(home: Path) -> list[str]:
    return [json.loads(line)["kind"] for line in (home / "ledger.jsonl").read_bytes().splitlines()]


def test_a_server_and_the_cli_seal_one_chain_that_the_auditor_verifies(gemma_path: Path, tmp_path: Path) -> None:
    home = operator_imports_real_model(tmp_path, gemma_path).root
    assert anticloud(home, "config", "set", "ledger.seal_interval", "1").returncode == 0
    media = tmp_path / "media"
    media.mkdir()
    enrolled = anticloud(home, "audit", "enroll", "--auditor", "ann", "--out", str(media / "seal.json"))
    assert enrolled.returncode == 0, enrolled.stderr
    secret = json.loads((media / "seal.json").read_text())["secret"]
    assert (media / "seal.json").stat().st_mode & 0o777 == 0o600
    assert all(secret not in p.read_text(errors="replace") for p in home.rglob("*") if p.is_file())

    inside = anticloud(home, "audit", "enroll", "--auditor", "eve", "--out", str(home / "mine.json"))
    assert inside.returncode != 0 and "inside the appliance home" in inside.stderr

    sock = home / "anticloud.sock"
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(sock, 60, server)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as client:
            reply = client.post("http://appliance/api/generate",
                                json={"prompt": "The sea is", "stream": False, "options": {"num_predict": 4}})
            assert reply.status_code == 200
            assert anticloud(home, "tokens", "create", "bob").returncode == 0  # the CLI appends meanwhile
            seals = kinds(home).count("ledger.seal")
            poll(lambda: kinds(home).count("ledger.seal") >= seals + 2, 30, "an idle server's heartbeat seals")
        server.terminate()
        assert server.wait(60) == 0
    finally:
        server.kill()

    recorded = kinds(home)
    assert recorded[-2:] == ["engine.stop", "ledger.seal"], "a clean stop seals what is left"
    assert recorded[recorded.index("token.create") + 1] == "ledger.seal", "a security event is sealed at once"
    verdict = anticloud(home, "verify", "ledger", "--seal-key", str(media / "seal.json"), "--now", "--json")
    assert verdict.returncode == 0, verdict.stdout
    seals = json.loads(verdict.stdout)["seals"]
    assert seals["tags_checked"] and seals["unsealed"]["records"] == 0
    assert seals["sealed_through"]["seq"] == len(recorded) - 1 and seals["stale_seconds"] < 60
    text = anticloud(home, "verify", "ledger", "--seal-key", str(media / "seal.json")).stdout
    assert "tags verified" in text and f"seq <= {len(recorded) - 1}" in text
    unkeyed = anticloud(home, "verify", "ledger").stdout
    assert "tags NOT checked" in unkeyed


def test_the_secret_cannot_be_written_into_the_home_through_a_link_or_dots(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from anticloud.cli import cli

    runner = CliRunner()
    home = tmp_path / "home"
    assert runner.invoke(cli, ["--home", str(home), "init"]).exit_code == 0
    media = tmp_path / "media"
    media.mkdir()
    (media / "link").symlink_to(home)
    for out in (media / "link" / "seal.json", media / ".." / "home" / "seal.json"):
        result = runner.invoke(cli, ["--home", str(home), "audit", "enroll", "--auditor", "eve", "--out", str(out)])
        assert result.exit_code != 0 and "inside the appliance home" in result.output
    assert not list(home.rglob("seal.json"))


def test_an_enrollment_whose_first_seal_fails_keeps_the_secret_it_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from anticloud.cli import cli
    from anticloud.home import Home
    from anticloud.sealing import SealError, enroll, sealer_for
    from ledger import LedgerWriteError, LedgerWriter
    from ledger.sealstate import SealState

    home = Home(tmp_path / "home")
    assert CliRunner().invoke(cli, ["--home", str(home.root), "init"]).exit_code == 0
    out = tmp_path / "seal.json"

    def full(self: SealState, epoch: object) -> object:
        raise LedgerWriteError(home.ledger, "cannot write the next sealing state: No space left on device")

    monkeypatch.setattr(SealState, "advance", full)
    with LedgerWriter.open(home.ledger, sealer_for(home, always=True)) as writer, \
            pytest.raises(SealError, match="is enrolled \\(keep"):
        enroll(home, writer, "ann", out)
    assert out.exists(), "the only secret that can verify the recorded enrollment was kept"
