"""The whole round trip by sneakernet, through the real command line in separate processes: the
appliance checkpoints, hands out a receipt and a witness request; the auditor's witness cosigns;
the appliance records the cosignature; a verifier holding only keys and files checks it all; and
a rewrite by root with every key on the appliance is caught by the witness and by the verifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.home import Home
from anticloud.identity import read_private_key
from ledger import parse_vkey
from tests.test_tree_heads import resign

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def run(*args: str, home: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "anticloud", *(["--home", str(home)] if home else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120, check=False)
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


@pytest.fixture
def sites(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The appliance's home, the auditor's witness directory, and the removable medium between them."""
    home, witness, medium = tmp_path / "home", tmp_path / "auditor" / "witness", tmp_path / "usb"
    medium.mkdir()
    run("init", home=home)
    return home, witness, medium


def test_a_receipt_and_a_witnessed_checkpoint_by_sneakernet(sites: tuple[Path, Path, Path]) -> None:
    home, wdir, usb = sites
    log_vkey = run("keys", "show", "--vkey", home=home).stdout.strip()
    assert parse_vkey(log_vkey).name.startswith("anticloud/")
    made = run("witness", "init", "--dir", str(wdir), "--name", "audit.example/w1").stdout
    witness_vkey = next(line.split()[2] for line in made.splitlines() if "verifier key" in line)
    run("witness", "add-log", "--dir", str(wdir), log_vkey)

    run("ledger", "checkpoint", "--note", str(usb / "cp1.note"), home=home)
    run("ledger", "prove", "1", "--out", str(usb / "r0.tlog-proof"), home=home)
    run("ledger", "witness-request", "--for", witness_vkey, "--out", str(usb / "req1"), home=home)
    run("witness", "cosign", "--dir", str(wdir), str(usb / "req1"), "--out", str(usb / "cos1"),
        "--checkpoint", str(usb / "cosigned1.note"))
    run("ledger", "add-cosignature", str(usb / "cos1"), "--witness", witness_vkey, home=home)
    run("ledger", "prove", "1", "--out", str(usb / "r1.tlog-proof"), home=home)  # now with the cosignature

    # the auditor, with files and keys only
    receipt = run("verify", "proof", str(usb / "r1.tlog-proof"), "--vkey", log_vkey, "--witness", witness_vkey,
                  "--quorum", "1", home=home)
    assert receipt.stdout.startswith("VALID: record 1 (config.init")
    assert "cosigned by audit.example/w1" in receipt.stdout
    early = run("verify", "proof", str(usb / "r0.tlog-proof"), "--vkey", log_vkey, "--witness", witness_vkey,
                home=home, ok=False)  # made before the witness cosigned: --witness alone asks for all of them
    assert early.returncode == 1 and early.stdout.startswith("NOT VALID: unwitnessed")
    verdict = run("verify", "ledger", "--checkpoint", str(usb / "cosigned1.note"), "--witness", witness_vkey,
                  "--json", home=home)
    doc = json.loads(verdict.stdout)
    # the tree of genesis, config.init and content.key
    assert doc["tree_head"]["matched"] and doc["witnesses"]["met"] and doc["witnesses"]["witnessed_size"] == 3
    kinds = [json.loads(line)["kind"] for line in (home / "ledger.jsonl").read_text().splitlines()]
    assert kinds.count("ledger.proof") == 3 and kinds[-2:] == ["ledger.cosigned", "ledger.proof"]

    # a second witness the auditor also requires has not cosigned: intact, but not witnessed enough
    other = run("witness", "init", "--dir", str(wdir.parent / "w2"), "--name", "audit.example/w2").stdout
    other_vkey = next(line.split()[2] for line in other.splitlines() if "verifier key" in line)
    short = run("verify", "ledger", "--witness", witness_vkey, "--witness", other_vkey, home=home, ok=False)
    assert short.returncode == 6 and "NOT WITNESSED" in short.stdout

    # the log grows; the next request starts where the witness left off
    run("ledger", "checkpoint", home=home)
    run("ledger", "witness-request", "--for", witness_vkey, "--out", str(usb / "req2"), home=home)
    assert (usb / "req2").read_text().startswith("old 3\n")
    run("witness", "cosign", "--dir", str(wdir), str(usb / "req2"), "--out", str(usb / "cos2"))

    # root rewrites the ledger below the cosigned checkpoint, re-signing everything with the appliance key
    key = _appliance_key(home)
    resign(home / "ledger.jsonl", key, lambda seq, data: {**data, "rewritten": True} if seq == 1 else data)
    (home / "ledger.jsonl.tree").unlink()
    assert run("verify", "ledger", home=home).returncode == 0  # alone, it looks sound
    caught = run("verify", "ledger", "--checkpoint", str(usb / "cosigned1.note"), home=home, ok=False)
    assert caught.returncode == 1 and "tree_mismatch" in caught.stdout and "rewritten below it" in caught.stdout
    run("ledger", "checkpoint", home=home)
    refused = run("ledger", "witness-request", "--for", witness_vkey, "--out", str(usb / "req3"), home=home,
                  ok=False)
    assert refused.returncode != 0 and "does not extend" in refused.stderr and len(refused.stderr.splitlines()) == 1
    stale = run("verify", "proof", str(usb / "r1.tlog-proof"), "--vkey", log_vkey, home=home)
    assert stale.stdout.startswith("VALID")  # the receipt stands: it was made before the rewrite


def _appliance_key(home: Path) -> Ed25519PrivateKey:
    return read_private_key(Home(home).identity_key)
