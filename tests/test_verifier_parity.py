"""The standard-library tool and the package agree on a corpus of good and tampered ledgers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given

from ledger import LedgerWriter, SignedCheckpoint, append_checkpoint, load_public_key, verify_file
from ledger.record import parse_line, seal
from tests.test_canonical import json_values

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "verify_ledger.py"
spec = importlib.util.spec_from_file_location("verify_ledger_tool", TOOL)
assert spec and spec.loader
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

COMPARED = ("verdict", "exit_code", "records", "first_ts", "last_ts", "head", "ledger_id", "key_id",
            "checkpoints_in_ledger", "checkpoint", "torn_tail")
FAULT_COMPARED = ("reason", "seq", "line", "offset")


def _flip(at: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    def mutate(blob: bytes) -> bytes:
        i = at(blob)
        return blob[:i] + bytes([blob[i] ^ 0x20]) + blob[i + 1:]
    return mutate


def _lines(edit: Callable[[list[bytes]], list[bytes]]) -> Callable[[bytes], bytes]:
    return lambda blob: b"".join(edit(blob.splitlines(keepends=True)))


def _resealed(blob: bytes) -> bytes:
    lines, prev, out = blob.splitlines(), "0" * 64, list[bytes]()
    for raw in lines:
        r = parse_line(raw)
        sealed, line = seal(r.seq, r.kind, dict(r.data, x=1) if r.seq == 2 else r.data, prev, r.ts)
        prev, out = sealed.hash, [*out, line]
    return b"".join(out)


MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    "intact": lambda b: b,
    "flip_in_data": _flip(lambda b: b.index(b'"i":2') + 4),
    "flip_in_hash": _flip(lambda b: b.index(b'"hash":"', 400) + 10),
    "flip_in_kind": _flip(lambda b: b.index(b'"kind":"test', 400) + 9),
    "flip_in_ts": _flip(lambda b: b.rindex(b'"ts":"') + 8),
    "flip_newline": _flip(lambda b: b.index(b"\n", 500)),
    "delete": _lines(lambda ls: ls[:2] + ls[3:]),
    "swap": _lines(lambda ls: [ls[0], ls[2], ls[1], *ls[3:]]),
    "duplicate": _lines(lambda ls: [*ls[:3], ls[2], *ls[3:]]),
    "truncate_torn": lambda b: b[:-7],
    "truncate_clean": _lines(lambda ls: ls[:3]),
    "space": lambda b: b.replace(b'{"data":{"flag"', b'{ "data":{"flag"', 1),
    "float": lambda b: b.replace(b'"i":3', b'"i":3.0', 1),
    "crlf": lambda b: b.replace(b"\n", b"\r\n", 1),
    "bad_utf8": lambda b: b.replace("é".encode(), b"\xff", 1),
    "resealed": _resealed,
    "empty": lambda b: b"",
    "garbage": lambda b: b"\x00" * 40 + b"\n",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SignedCheckpoint, bytes]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.conftest import genesis_for

    base = tmp_path_factory.mktemp("corpus")
    key = Ed25519PrivateKey.generate()
    path = base / "good.jsonl"
    with LedgerWriter.create(path, genesis_for(key)) as writer:
        for i in range(4):
            writer.append("test.event", {"flag": True, "i": i, "text": "é"})
        signed = append_checkpoint(writer, key)
        writer.append("test.event", {"i": 99})
    pub = base / "appliance.pub"
    from anticloud.identity import public_pem

    pub.write_bytes(public_pem(key))
    return path, signed, load_public_key(pub)


def both(path: Path, signed: SignedCheckpoint | None, pubkey: bytes | None,
         jobs: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = verify_file(path, checkpoint=signed, public_key=pubkey, jobs=jobs).to_json()
    cp = (signed.to_json()["checkpoint"], signed.signature) if signed else None
    theirs = tool.verify(str(path), cp, pubkey)
    return ours, theirs


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("with_checkpoint", [False, True])
@pytest.mark.parametrize("jobs", [1, 3], ids=["serial", "parallel"])
def test_identical_verdicts(corpus: Any, tmp_path: Path, name: str, with_checkpoint: bool, jobs: int) -> None:
    good, signed, pubkey = corpus
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(MUTATIONS[name](good.read_bytes()))
    ours, theirs = both(path, signed if with_checkpoint else None, pubkey if with_checkpoint else None, jobs)
    assert {k: ours[k] for k in COMPARED} == {k: theirs[k] for k in COMPARED}
    if ours["fault"] is None:
        assert theirs["fault"] is None
    else:
        assert {k: ours["fault"][k] for k in FAULT_COMPARED} == {k: theirs["fault"][k] for k in FAULT_COMPARED}
    if name != "intact":
        assert ours["verdict"] != "intact" or (name == "truncate_clean" and not with_checkpoint)


def test_tool_runs_on_the_standard_library_alone(corpus: Any) -> None:
    good, _, _ = corpus
    # -I -S: no site-packages, so nothing but the standard library can be imported.
    run = subprocess.run([sys.executable, "-I", "-S", str(TOOL), str(good), "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    verdict = json.loads(run.stdout)
    assert verdict["verdict"] == "intact" and verdict["signatures_checked"] is False


def test_tool_exit_codes_and_forged_checkpoint(corpus: Any, tmp_path: Path) -> None:
    good, signed, _ = corpus
    doc = signed.to_json()
    doc["checkpoint"]["ts"] = "2020-01-01T00:00:00.000000Z"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    run = subprocess.run([sys.executable, str(TOOL), str(good), "--checkpoint", str(forged)], capture_output=True,
                         text=True)
    assert run.returncode == 1 and "bad_signature" in run.stdout
    run = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "missing.jsonl")], capture_output=True, text=True)
    assert run.returncode == 2 and "error" in run.stderr
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(good.read_bytes()[:-3])
    assert subprocess.run([sys.executable, str(TOOL), str(torn)], capture_output=True).returncode == 3


@given(json_values)
def test_tool_canonical_form_agrees_with_independent_rfc8785(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except Exception:  # lone surrogates: neither may produce bytes
        with pytest.raises(tool.Bad):
            tool.canonical_bytes(value)
        return
    assert tool.canonical_bytes(value) == expected
