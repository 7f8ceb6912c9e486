"""The standard-library tool and the package agree on a corpus of good and tampered ledgers,
and on the edges of every rule (types, dates, depth, line length, duplicates, surrogates)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given

from anticloud.cli.verify import render_seals
from anticloud.sealing import read_secret, secret_document
from ledger import LedgerWriter, SignedCheckpoint, append_checkpoint, load_public_key, verify_file
from ledger.canonical import MAX_DEPTH, MAX_SAFE_INTEGER
from ledger.record import MAX_LINE_BYTES, parse_line, seal
from ledger.seal import NO_SEAL, tag
from ledger.sealstate import SealState
from tests.standalone import TOOL, verifier
from tests.test_canonical import json_values
from tests.test_seal import (  # the seal tests' helpers, and the fixtures behind `sealed` below
    INSIDER_ROWS,
    Appliance,
    appliance,  # noqa: F401 -- a fixture `enrolled` needs
    cut_after_epoch_1,
    enrolled,  # noqa: F401
    forge_after_cut,
    rewrite,
    with_checkpoint,
)

ROOT = Path(__file__).resolve().parent.parent
tool = verifier("verify_ledger_tool")

COMPARED = ("verdict", "exit_code", "records", "first_ts", "last_ts", "head", "ledger_id", "key_id",
            "checkpoints_in_ledger", "checkpoint", "torn_tail", "tree", "tree_head")
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


KEY = Ed25519PrivateKey.generate()
TS = "2026-01-02T03:04:05.678901Z"


def forge(blob: bytes, data: Any = None, *, raw_data: bytes | None = None, kind: str = "test.event", ts: Any = TS,
          v: Any = 1, seq: Any = None, edit: Callable[[bytes], bytes] = lambda line: line) -> bytes:
    """``blob`` plus one record after its last, sealed by hand so that even what the writer refuses
    can be written: the hash is right unless ``edit`` changes the line after sealing."""
    last = json.loads(blob.splitlines()[-1])
    body = {"data": data, "kind": kind, "prev": last["hash"], "seq": last["seq"] + 1 if seq is None else seq,
            "ts": ts, "v": v}
    raw = tool.canonical_bytes(body)
    if raw_data is not None:  # data as these very bytes, canonical or not
        raw = b'{"data":' + raw_data + raw[len(b'{"data":null'):]
    at = raw.rindex(b',"kind":')
    line = raw[:at] + b',"hash":"' + hashlib.sha3_256(raw).hexdigest().encode() + b'"' + raw[at:]
    return blob + edit(line) + b"\n"


def checkpoint_after(blob: bytes, *, message: Callable[[dict[str, Any]], dict[str, Any]] = lambda m: m,
                     written: Callable[[dict[str, Any]], dict[str, Any]] = lambda m: m,
                     signature: Callable[[str], str] = lambda s: s, raw: bool = False) -> bytes:
    """``blob`` plus a ledger.checkpoint record of its last record, signed with KEY over ``message(body)``
    and holding ``written(body)``: the two differ where a test makes the document lie about what was signed."""
    lines = blob.splitlines()
    genesis, last = json.loads(lines[0])["data"], json.loads(lines[-1])
    body = {"hash": last["hash"], "key_id": genesis["key_id"], "ledger_id": genesis["ledger_id"],
            "seq": last["seq"], "ts": TS, "type": "anticloud.ledger.checkpoint", "v": 1}
    sig = base64.b64encode(KEY.sign(tool.canonical_bytes(message(dict(body))))).decode()
    doc = {"checkpoint": written(dict(body)), "signature": signature(sig)}
    return forge(blob, doc, kind="ledger.checkpoint")


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def sized(blob: bytes, length: int) -> bytes:
    """``blob`` plus a record whose line, without its newline, is exactly ``length`` bytes."""
    base = forge(blob, {"s": ""})
    return forge(blob, {"s": "x" * (length - (len(base) - len(blob) - 1))})


def _bad_padding(sig: str) -> str:  # the same 64 bytes: the last character's unused bits set
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="


# name -> (how to extend the good ledger, the verdict, the reason): what both verifiers must say.
EDGES: dict[str, tuple[Callable[[bytes], bytes], str, str | None]] = {
    "checkpoint_control": (checkpoint_after, "intact", None),
    # v true == 1 in Python: the document must not say true whichever of the two was signed.
    "checkpoint_v_true_signed_as_1": (lambda b: checkpoint_after(b, written=lambda m: {**m, "v": True}),
                                      "broken", "invalid_record"),
    "checkpoint_v_true_signed_as_true": (
        lambda b: checkpoint_after(b, message=lambda m: {**m, "v": True}, written=lambda m: {**m, "v": True}),
        "broken", "invalid_record"),
    "checkpoint_seq_true": (lambda b: checkpoint_after(b, written=lambda m: {**m, "seq": True}),
                            "broken", "invalid_record"),
    "checkpoint_ts_arabic_digits": (lambda b: checkpoint_after(
        b, message=lambda m: {**m, "ts": "\u0662\u0660\u0662\u0666" + TS[4:]},
        written=lambda m: {**m, "ts": "\u0662\u0660\u0662\u0666" + TS[4:]}), "broken", "invalid_record"),
    "checkpoint_ts_february_30": (lambda b: checkpoint_after(
        b, message=lambda m: {**m, "ts": "2026-02-30" + TS[10:]},
        written=lambda m: {**m, "ts": "2026-02-30" + TS[10:]}), "broken", "invalid_record"),
    "checkpoint_signature_padding_bits": (lambda b: checkpoint_after(b, signature=_bad_padding),
                                          "broken", "invalid_record"),
    "record_ts_arabic_digits": (lambda b: forge(b, {}, ts="\u0662\u0660\u0662\u0666" + TS[4:]),
                                "broken", "invalid_record"),
    "record_ts_fullwidth_digits": (lambda b: forge(b, {}, ts=TS[:17] + "\uff10\uff15" + TS[19:]),
                                   "broken", "invalid_record"),
    "record_v_true": (lambda b: forge(b, {}, v=True), "broken", "invalid_record"),
    "record_seq_true": (lambda b: forge(b, {}, seq=True), "broken", "invalid_record"),
    "largest_integer": (lambda b: forge(b, {"n": MAX_SAFE_INTEGER, "m": -MAX_SAFE_INTEGER}), "intact", None),
    "integer_too_big": (lambda b: forge(b, raw_data=b'{"n":9007199254740992}'), "broken", "unparseable_line"),
    "integer_4400_digits": (lambda b: forge(b, raw_data=b'{"n":' + b"9" * 4400 + b"}"), "broken", "unparseable_line"),
    "negative_zero": (lambda b: forge(b, raw_data=b'{"n":-0}'), "broken", "non_canonical"),
    "duplicate_data_member": (lambda b: forge(b, raw_data=b'{"a":1,"a":1}'), "broken", "non_canonical"),
    "duplicate_record_member": (lambda b: forge(b, {}, edit=lambda ln: ln[:-1] + b',"v":1}'), "broken",
                                "non_canonical"),
    "lone_surrogate_escape": (lambda b: forge(b, raw_data=b'{"s":"\\ud800"}'), "broken", "unparseable_line"),
    "surrogate_pair_escape": (lambda b: forge(b, raw_data=b'{"s":"\\ud83d\\ude00"}'), "broken", "non_canonical"),
    "surrogate_as_utf8": (lambda b: forge(b, raw_data=b'{"s":"\xed\xa0\x80"}'), "broken", "unparseable_line"),
    "astral_member_names": (lambda b: forge(b, {"\U0001f600": 1, "\ue000": 2}), "intact", None),
    "trailing_space": (lambda b: forge(b, {}, edit=lambda ln: ln + b" "), "broken", "non_canonical"),
    "tab_between_tokens": (lambda b: forge(b, {}, edit=lambda ln: ln.replace(b":", b":\t", 1)), "broken",
                           "non_canonical"),
    "no_break_space": (lambda b: forge(b, {}, edit=lambda ln: ln.replace(b":", b":\xc2\xa0", 1)), "broken",
                       "unparseable_line"),
    "depth_at_bound": (lambda b: forge(b, {"x": nested(MAX_DEPTH - 2)}), "intact", None),
    "depth_over_bound": (lambda b: forge(b, {"x": nested(MAX_DEPTH - 1)}), "broken", "unparseable_line"),
    # Canonical bytes of a value the writer once accepted: too deep for json to encode from a test's stack.
    "depth_980": (lambda b: forge(b, raw_data=b'{"x":' + b"[" * 980 + b"0" + b"]" * 980 + b"}"), "broken",
                  "unparseable_line"),
    "brackets_inside_strings": (lambda b: forge(b, {"s": "[{" * MAX_DEPTH + '\\"['}), "intact", None),
    "line_at_bound": (lambda b: sized(b, MAX_LINE_BYTES), "intact", None),
    "line_over_bound": (lambda b: sized(b, MAX_LINE_BYTES + 1), "broken", "unparseable_line"),
    "torn_at_bound": (lambda b: sized(b, MAX_LINE_BYTES)[:-1], "torn", None),
    "torn_over_bound": (lambda b: sized(b, MAX_LINE_BYTES + 1)[:-1], "broken", "unparseable_line"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SignedCheckpoint, bytes]:
    from tests.conftest import genesis_for

    base = tmp_path_factory.mktemp("corpus")
    key = KEY
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
    theirs = tool.verify(str(path), cp, pubkey, tree_head=signed.tlog if signed else None)
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


def assert_same(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert {k: ours[k] for k in COMPARED} == {k: theirs[k] for k in COMPARED}
    assert (ours["fault"] is None) == (theirs["fault"] is None)
    if ours["fault"] is not None:
        assert {k: ours["fault"][k] for k in FAULT_COMPARED} == {k: theirs["fault"][k] for k in FAULT_COMPARED}


@pytest.mark.parametrize("name", sorted(EDGES))
@pytest.mark.parametrize("with_checkpoint", [False, True])
@pytest.mark.parametrize("jobs", [1, 3], ids=["serial", "parallel"])
def test_both_verifiers_draw_every_rule_at_the_same_place(corpus: Any, tmp_path: Path, name: str,
                                                           with_checkpoint: bool, jobs: int) -> None:
    good, signed, pubkey = corpus
    extend, verdict, reason = EDGES[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(extend(good.read_bytes()))
    ours, theirs = both(path, signed if with_checkpoint else None, pubkey if with_checkpoint else None, jobs)
    assert_same(ours, theirs)
    assert (ours["verdict"], ours["fault"] and ours["fault"]["reason"]) == (verdict, reason), ours["fault"]
    if reason is not None:
        assert ours["fault"]["seq"] == 7 and ours["fault"]["line"] == 8


def test_verdicts_do_not_depend_on_how_deep_the_caller_is(corpus: Any, tmp_path: Path) -> None:
    """The depth bound is checked before any recursive parse, so no stack is too shallow for it."""
    good, _, _ = corpus

    def from_depth(frames: int, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        return both(path, None, None) if frames == 0 else from_depth(frames - 1, path)

    for name in ("depth_at_bound", "depth_over_bound", "depth_980"):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(EDGES[name][0](good.read_bytes()))
        shallow, deep = from_depth(0, path), from_depth(sys.getrecursionlimit() - 150, path)
        assert shallow == deep
        assert_same(*deep)


HOSTILE_CHECKPOINT_DOCS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "v_true": lambda d: {**d, "checkpoint": {**d["checkpoint"], "v": True}},
    "seq_false": lambda d: {**d, "checkpoint": {**d["checkpoint"], "seq": False}},
    "ts_arabic_digits": lambda d: {**d, "checkpoint": {**d["checkpoint"], "ts": "\u0662\u0660\u0662\u0666"
                                                       + d["checkpoint"]["ts"][4:]}},
    "ts_not_a_date": lambda d: {**d, "checkpoint": {**d["checkpoint"], "ts": "2026-13-01" + TS[10:]}},
    "signature_padding_bits": lambda d: {**d, "signature": _bad_padding(d["signature"])},
    "signature_without_padding": lambda d: {**d, "signature": d["signature"].rstrip("=")},
    "extra_member": lambda d: {**d, "checkpoint": {**d["checkpoint"], "x": 1}},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CHECKPOINT_DOCS))
def test_both_refuse_the_same_checkpoint_documents(corpus: Any, name: str) -> None:
    _, signed, _ = corpus
    doc = HOSTILE_CHECKPOINT_DOCS[name](signed.to_json())
    with pytest.raises(ValueError):
        SignedCheckpoint.from_json(doc)
    with pytest.raises(ValueError):
        tool.parse_checkpoint(doc)
    assert tool.parse_checkpoint(signed.to_json()) == (signed.to_json()["checkpoint"], signed.signature)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_identical_verdicts_without_a_signature_checker(corpus: Any, tmp_path: Path, name: str) -> None:
    good, signed, pubkey = corpus
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(MUTATIONS[name](good.read_bytes()))
    for cp in (None, signed):
        ours = verify_file(path, checkpoint=cp, public_key=pubkey, check_signature=None, jobs=1).to_json()
        theirs = tool.verify(str(path), cp and (cp.to_json()["checkpoint"], cp.signature), pubkey, lambda: None,
                             tree_head=cp and cp.tlog)
        assert_same(ours, theirs)
        if cp is not None or ours["checkpoints_in_ledger"]:
            assert ours["verdict"] not in ("intact", "torn"), "a signature went unchecked: not a pass"
        if name == "intact":
            assert ours["verdict"] == "unchecked" and ours["exit_code"] == 5


# -I -S: no site-packages, so nothing but the standard library can be imported (cryptography included).
STDLIB_ONLY = [sys.executable, "-I", "-S"]
CRYPTOGRAPHY_DIR = str(Path(importlib.util.find_spec("cryptography").origin).parent.parent)  # type: ignore[arg-type,union-attr]
# The same isolated interpreter with only cryptography's directory added: the tool with Ed25519.
WITH_CRYPTOGRAPHY = [*STDLIB_ONLY, "-c", "import runpy, sys; sys.path.append(sys.argv.pop(1)); sys.argv.pop(0);"
                     " runpy.run_path(sys.argv[0], run_name='__main__')", CRYPTOGRAPHY_DIR]


def run_tool(*args: object, python: list[str] = STDLIB_ONLY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*python, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=60)


def forged_rewrite(good: Path, out: Path) -> Path:
    """An insider's rewrite: record 2 edited, every hash after it recomputed, and each checkpoint record
    re-made for the new hashes with a signature from a key that is not the appliance's."""
    impostor = Ed25519PrivateKey.generate()
    lines, prev, head, rewritten = good.read_bytes().splitlines(), "0" * 64, None, list[bytes]()
    for raw in lines:
        r = parse_line(raw)
        data = dict(r.data, edited=True) if r.seq == 2 else r.data
        if r.kind == "ledger.checkpoint" and head is not None:
            old = SignedCheckpoint.from_json(r.data).checkpoint
            body = {**old.to_json(), "seq": head.seq, "hash": head.hash}
            forged = impostor.sign(tool.canonical_bytes(body))
            data = {"checkpoint": body, "signature": base64.b64encode(forged).decode()}
        head, line = seal(r.seq, r.kind, data, prev, r.ts)
        prev, rewritten = head.hash, [*rewritten, line]
    out.write_bytes(b"".join(rewritten))
    return out


def test_without_cryptography_a_forged_rewrite_is_never_a_pass(corpus: Any, tmp_path: Path) -> None:
    good, _, _ = corpus
    assert subprocess.run([*STDLIB_ONLY, "-c", "import cryptography"], capture_output=True).returncode == 1, \
        "this interpreter must not be able to import cryptography under -I -S"
    forged = forged_rewrite(good, tmp_path / "forged.jsonl")
    run = run_tool(forged)
    first = run.stdout.splitlines()[0]
    assert run.returncode == 5, run.stdout + run.stderr
    assert first.startswith("SIGNATURES NOT CHECKED: ") and "intact" in first and "1 signature(s)" in first
    assert not any(line.startswith("INTACT") for line in run.stdout.splitlines())
    verdict = json.loads(run_tool(forged, "--json").stdout)
    assert (verdict["verdict"], verdict["exit_code"], verdict["signatures_checked"]) == ("unchecked", 5, False)
    # The same tool, where cryptography can be imported, names the forgery.
    run = run_tool(forged, python=WITH_CRYPTOGRAPHY)
    assert run.returncode == 1 and "bad_signature" in run.stdout, run.stdout + run.stderr
    assert run_tool(good, python=WITH_CRYPTOGRAPHY).stdout.startswith("INTACT: ")


@pytest.mark.parametrize(
    ("make", "with_checkpoint", "code", "first"),
    [
        (lambda g: g.read_bytes(), False, 5, "SIGNATURES NOT CHECKED: "),  # holds a checkpoint record
        (lambda g: g.read_bytes(), True, 5, "SIGNATURES NOT CHECKED: "),
        (lambda g: g.read_bytes()[:-7], False, 5, "SIGNATURES NOT CHECKED: "),  # torn, and a signature unchecked
        (lambda g: b"".join(g.read_bytes().splitlines(keepends=True)[:3]), False, 0, "INTACT: "),  # nothing signed
        (lambda g: b"".join(g.read_bytes().splitlines(keepends=True)[:3])[:-7], False, 3, "TORN TAIL: "),
        (lambda g: b"".join(g.read_bytes().splitlines(keepends=True)[:3]), True, 1, "BROKEN: "),
        (lambda g: g.read_bytes().replace(b'"i":2', b'"i":3', 1), False, 1, "BROKEN: "),
    ],
    ids=["checkpointed", "auditor-checkpoint", "torn-checkpointed", "unsigned", "torn-unsigned", "truncated", "edited"],
)
def test_without_cryptography_exit_codes_and_first_lines(corpus: Any, tmp_path: Path, make: Callable[[Path], bytes],
                                                         with_checkpoint: bool, code: int, first: str) -> None:
    good, signed, _ = corpus
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(make(good))
    cp = tmp_path / "cp.json"
    cp.write_bytes(signed.to_bytes())
    run = run_tool(path, *(["--checkpoint", cp] if with_checkpoint else []))
    assert (run.returncode, run.stderr) == (code, "")
    assert run.stdout.startswith(first), run.stdout
    if code in (0, 3):
        assert "NOT checked" not in run.stdout  # nothing was there to check
    # A reader that closes the pipe at once (`| head`) changes neither the code nor stderr.
    for extra in ([], ["--json"]):
        read, write = os.pipe()
        os.close(read)
        closed = subprocess.run([*STDLIB_ONLY, str(TOOL), str(path), *extra,
                                 *(["--checkpoint", str(cp)] if with_checkpoint else [])],
                                stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
        os.close(write)
        assert (closed.returncode, closed.stderr) == (code, "")


def test_the_appliance_command_survives_a_closed_pipe_with_its_verdict(corpus: Any, tmp_path: Path) -> None:
    good, _, _ = corpus
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(good.read_bytes().replace(b'"i":2', b'"i":3', 1))
    for path, code in ((good, 0), (broken, 1)):
        read, write = os.pipe()
        os.close(read)
        command = [sys.executable, "-m", "anticloud", "--home", str(tmp_path), "verify", "ledger", str(path)]
        run = subprocess.run(command, cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
        os.close(write)
        assert (run.returncode, run.stderr) == (code, "")


def test_tool_help_documents_every_exit_code() -> None:
    run = run_tool("--help")
    assert run.returncode == 0
    codes = run.stdout[run.stdout.index("Exit codes:"):]
    for code, word in ((0, "intact"), (1, "broken"), (2, "cannot be read"), (3, "torn"), (5, "NOT checked"),
                       (6, "fewer than --quorum")):
        assert re.search(rf"^  {code}  .*{word}", codes, re.MULTILINE), (code, codes)


def test_tool_exit_codes_and_forged_checkpoint(corpus: Any, tmp_path: Path) -> None:
    good, signed, _ = corpus
    doc = signed.to_json()
    doc["checkpoint"]["ts"] = "2020-01-01T00:00:00.000000Z"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    run = run_tool(good, "--checkpoint", forged, python=WITH_CRYPTOGRAPHY)
    assert run.returncode == 1 and "bad_signature" in run.stdout
    run = run_tool(good, "--checkpoint", forged)  # no cryptography: the forgery is not seen, and not passed
    assert run.returncode == 5 and run.stdout.startswith("SIGNATURES NOT CHECKED: ") and "2 signature(s)" in run.stdout
    run = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "missing.jsonl")], capture_output=True, text=True)
    assert run.returncode == 2 and "error" in run.stderr
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(good.read_bytes()[:-3])
    assert subprocess.run([sys.executable, str(TOOL), str(torn)], capture_output=True).returncode == 3


@given(json_values)
def test_tool_canonical_form_agrees_with_independent_rfc8785(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except Exception:  # noqa: BLE001 -- lone surrogates: neither may produce bytes
        with pytest.raises(tool.Bad):
            tool.canonical_bytes(value)
        return
    assert tool.canonical_bytes(value) == expected


# -- seals: the tool and ledger.verify agree on sealed ledgers and on every forgery of the insider --------

WRONG = secrets.token_bytes(32)  # an auditor's secret for no enrollment of these ledgers
LATER = secrets.token_bytes(32)  # the secret of a second enrollment, where a case makes one
Case = Callable[[Appliance], object]


@pytest.fixture
def sealed(enrolled: Appliance) -> Appliance:  # noqa: F811 -- the imported fixture, by its name
    """An enrollment, triggers, seals and a clean stop, exactly as tests/test_seal.py makes them."""
    return enrolled


def _records(app: Appliance, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Change the records and re-hash and re-link every one, claims of the seals included as
    ``change`` left them (`rewrite` of tests/test_seal.py makes each seal's coverage consistent)."""
    lines, prev = list[bytes](), "0" * 64
    for seq, r in enumerate(change(app.records())):
        record, line = seal(seq, r["kind"], r["data"], prev, r["ts"])
        prev, lines = record.hash, [*lines, line]
    app.ledger.write_bytes(b"".join(lines))


def _seal_edit(n: int, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Case:
    """The ``n``-th ledger.seal's data edited, the chain re-linked around it."""
    def change(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seals = [i for i, r in enumerate(records) if r["kind"] == "ledger.seal"]
        return [{**r, "data": edit(r["data"])} if i == seals[n] else r for i, r in enumerate(records)]
    return lambda app: _records(app, change)


def _insider(row: str) -> Case:
    def case(app: Appliance) -> None:
        with_checkpoint(app)
        rewrite(app, INSIDER_ROWS[row])
    return case


def _remade_with_the_current_key(app: Appliance) -> None:
    """The insider's key at T (the open epoch's) remakes every seal: as tests/test_seal.py does."""
    state = SealState(app.state).read()
    assert state is not None
    out, prev_tag = list[dict[str, Any]](), NO_SEAL
    for r in app.records():
        if r["kind"] == "ledger.seal":
            content = {**{k: v for k, v in r["data"].items() if k != "tag"}, "epoch": len(
                [o for o in out if o["kind"] == "ledger.seal"]), "prev_seal": prev_tag}
            r = {**r, "data": {**content, "tag": tag(state.key, content)}}
            prev_tag = r["data"]["tag"]
        out.append(r)
    rewrite(app, lambda _: out)


def _stripped_over_the_interval(app: Appliance) -> None:
    late = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rewrite(app, lambda rs: [*[r for i, r in enumerate(rs) if r["kind"] != "ledger.seal" or i < 4],
                             {"kind": "note", "data": {"much": "later"}, "ts": late}])


def _appended_unsealed(app: Appliance) -> None:
    with LedgerWriter.open(app.ledger) as w:  # a writer without the sealer: its records stay unsealed
        w.append("note", {"unsealed": 1})
        w.append("note", {"unsealed": 2})


def _re_enrolled(app: Appliance) -> None:
    with app.writer() as w:
        w.enroll(LATER, {"auditor": "bob"})
        w.append("config.change", {"key": "z"})
        w.append("note", {"open": "tail"})
    _appended_unsealed(app)


def _second_enrollment_while_open(app: Appliance) -> None:
    from ledger.seal import fingerprint
    enroll = {"kind": "seal.enroll", "data": {"auditor": "bob", "fingerprint": fingerprint(LATER), "interval": 60},
              "ts": app.records()[-1]["ts"]}
    _records(app, lambda rs: [*rs[:-1], enroll, rs[-1]])


def _enrollment_without_seals(app: Appliance, interval: bool = True) -> None:
    def change(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [r for r in rs if r["kind"] != "ledger.seal"]
        return kept if interval else [{**r, "data": {k: v for k, v in r["data"].items() if k != "interval"}}
                                      if r["kind"] == "seal.enroll" else r for r in kept]
    _records(app, change)


def _abandoned(app: Appliance) -> None:
    """The state lost, then a new enrollment that abandons the open chain: no key needed."""
    from ledger import Sealer
    app.state.unlink()
    with LedgerWriter.open(app.ledger, Sealer(app.state, 60, {"config.change"}, abandon=True)) as writer:
        writer.enroll(LATER, {"auditor": "bob"})


def _torn(app: Appliance) -> None:
    """The last seal cut mid-line, as a crash leaves it: the note before it is then unsealed."""
    app.ledger.write_bytes(app.ledger.read_bytes()[:-7])


def _without(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {k: v for k, v in d.items() if k != name}


# name -> (how the sealed ledger of tests/test_seal.py is changed, the reason with the right secret,
# the reason without one): what both verifiers must say, and the same JSON besides.
SEALED: dict[str, tuple[Case, str | None, str | None]] = {
    "clean": (lambda app: None, None, None),
    "torn_last_seal": (_torn, None, None),
    "checkpoint_after_the_last_seal": (with_checkpoint, None, None),
    "appended_without_sealing": (_appended_unsealed, None, None),
    "re_enrolled": (_re_enrolled, None, None),
    **{f"insider_{row}": (_insider(row), "seal_bad_tag", None) for row in sorted(INSIDER_ROWS)},
    "insider_remade_with_the_current_key": (_remade_with_the_current_key, "seal_bad_tag", None),
    "insider_stripped_over_the_interval": (_stripped_over_the_interval, "seal_overdue", "seal_overdue"),
    "insider_cut_at_an_epoch_then_forged": (forge_after_cut, "seal_bad_tag", None),
    "insider_cut_at_an_epoch": (cut_after_epoch_1, None, None),
    "seal_epoch_claimed": (_seal_edit(1, lambda d: {**d, "epoch": 5}), "seal_epoch", "seal_epoch"),
    "seal_epoch_true": (_seal_edit(1, lambda d: {**d, "epoch": True}), "seal_malformed", "seal_malformed"),
    "seal_prev_seal": (_seal_edit(1, lambda d: {**d, "prev_seal": "kmac256:" + "1" * 64}), "seal_chain",
                       "seal_chain"),
    "seal_first_seq": (_seal_edit(1, lambda d: {**d, "first_seq": d["first_seq"] + 1}), "seal_gap", "seal_gap"),
    "seal_last_hash": (_seal_edit(1, lambda d: {**d, "last_hash": "0" * 64}), "seal_gap", "seal_gap"),
    "seal_extra_member": (_seal_edit(1, lambda d: {**d, "x": 1}), "seal_malformed", "seal_malformed"),
    "seal_final_false": (_seal_edit(1, lambda d: {**d, "final": False}), "seal_malformed", "seal_malformed"),
    "seal_without_tag": (_seal_edit(1, _without("tag")), "seal_malformed", "seal_malformed"),
    "seal_final_then_another": (_seal_edit(1, lambda d: {**d, "final": True}), "seal_bad_tag", "seal_unenrolled"),
    "seal_other_enrollment": (_seal_edit(1, lambda d: {**d, "enrollment": "kmac256:" + "2" * 64}),
                              "seal_unenrolled", "seal_unenrolled"),
    "seal_without_enrollment": (_seal_edit(1, _without("enrollment")), "seal_unenrolled", "seal_unenrolled"),
    "enrollment_while_one_is_open": (_second_enrollment_while_open, "seal_unenrolled", "seal_unenrolled"),
    "chain_abandoned": (_abandoned, "seal_abandoned", None),
    "enrollment_bad_fingerprint": (lambda app: _records(app, lambda rs: [
        {**r, "data": {**r["data"], "fingerprint": "kmac256:xyz"}} if r["kind"] == "seal.enroll" else r
        for r in rs]), "seal_malformed", "seal_malformed"),
    "enrollment_without_seals": (_enrollment_without_seals, None, None),
    "enrollment_without_seals_or_interval": (lambda app: _enrollment_without_seals(app, interval=False),
                                             "seal_malformed", "seal_malformed"),
}


def both_sealed(path: Path, secret: bytes | None, now: datetime | None,
                jobs: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = verify_file(path, seal_secret=secret, now=now, jobs=jobs).to_json()
    return ours, tool.verify(str(path), None, None, seal_secret=secret, now=now)


@pytest.mark.parametrize("name", sorted(SEALED))
def test_identical_verdicts_on_sealed_ledgers_and_the_insiders_forgeries(sealed: Appliance, name: str) -> None:
    change, with_secret, without_secret = SEALED[name]
    change(sealed)
    later = datetime.now(UTC) + timedelta(hours=1)
    for label, secret in (("none", None), ("right", sealed.secret), ("wrong", WRONG), ("later", LATER)):
        for now in (None, later):
            ours, theirs = both_sealed(sealed.ledger, secret, now)
            assert ours == theirs, (label, now)
            reason = ours["fault"] and ours["fault"]["reason"]
            if label == "right":
                assert reason == with_secret, ours["fault"]
            elif label == "none":
                assert reason == without_secret, ours["fault"]
                assert ours["seals"] is None or not ours["seals"]["tags_checked"]
            elif label == "wrong" or name != "re_enrolled":
                assert reason in ("seal_enrollment_missing", without_secret), ours["fault"]
    ours, theirs = both_sealed(sealed.ledger, sealed.secret, later, jobs=3)
    assert ours == theirs
    # Without a signature checker (the tool without cryptography) the seals are checked all the same.
    ours = verify_file(sealed.ledger, check_signature=None, seal_secret=sealed.secret, now=later, jobs=1).to_json()
    assert ours == tool.verify(str(sealed.ledger), None, None, lambda: None, seal_secret=sealed.secret, now=later)


def test_the_verdict_names_what_is_sealed_and_what_is_not(sealed: Appliance) -> None:
    _re_enrolled(sealed)
    now = datetime.now(UTC) + timedelta(hours=1)
    old, new = (tool.verify(str(sealed.ledger), None, None, seal_secret=s, now=now) for s in (sealed.secret,
                                                                                              LATER))
    assert old["seals"]["closed_by_reenrollment"] and old["seals"]["unsealed"]["records"] == 0
    assert old["seals"]["stale_seconds"] is None, "a closed chain does not go stale"
    assert new["seals"]["unsealed"]["records"] == 2 and new["seals"]["stale_seconds"] > 2 * 60
    assert new["seals"]["tags_checked"] and new["seals"]["enrollments"] == 2


def test_the_tool_reads_both_forms_of_the_auditors_secret_file(tmp_path: Path) -> None:
    secret = secrets.token_bytes(32)
    document = tmp_path / "secret.json"
    document.write_bytes(secret_document(secret, "0" * 32, "ann"))
    written = tmp_path / "secret.txt"
    written.write_text(json.loads(document.read_text())["written"].lower() + "\n")
    for path in (document, written):
        assert tool.read_secret(str(path)) == read_secret(path) == secret
    for text in ('{"type": "something.else", "secret": "00"}', "not base32!", "AAAA", '{"type": 1'):
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(ValueError, match=r"sealing secret|not 32"):
            tool.read_secret(str(bad))


def test_the_tool_prints_the_seal_lines_of_anticloud_verify(sealed: Appliance, tmp_path: Path) -> None:
    """--seal-key and --now, on a standard-library Python: the same verdict and the same words."""
    _appended_unsealed(sealed)
    key = tmp_path / "secret.json"
    key.write_bytes(secret_document(sealed.secret, "0" * 32, "ann"))
    run = run_tool(sealed.ledger, "--seal-key", key, "--now")
    assert (run.returncode, run.stderr) == (0, ""), run.stdout  # nothing signed: no cryptography needed
    verdict = verify_file(sealed.ledger, seal_secret=sealed.secret, now=datetime.now(UTC))
    assert verdict.seals is not None
    expected = render_seals(verdict.seals)
    printed = run.stdout.splitlines()[-len(expected):]
    assert printed[:-1] == expected[:-1] and printed[-1].startswith("  last seal         ")
    run = run_tool(sealed.ledger, "--seal-key", key, "--json")
    assert json.loads(run.stdout)["seals"] == verify_file(sealed.ledger, seal_secret=sealed.secret).to_json()[
        "seals"]
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(json.loads(secret_document(WRONG, "0" * 32, "ann"))["written"])
    run = run_tool(sealed.ledger, "--seal-key", wrong)
    assert run.returncode == 1 and "seal_enrollment_missing" in run.stdout
    assert run_tool(sealed.ledger, "--seal-key", tmp_path / "missing").returncode == 2


def _re_enrolled_then_stripped(app: Appliance) -> None:
    """A second auditor enrolls; the insider then strips the new chain's seals over ten minutes."""
    with app.writer() as w:
        w.enroll(LATER, {"auditor": "bob"})
        for i in range(3):
            w.append("config.change", {"key": i})
    newest = max(i for i, r in enumerate(app.records()) if r["kind"] == "seal.enroll")
    late = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rewrite(app, lambda rs: [*[r for i, r in enumerate(rs) if r["kind"] != "ledger.seal" or i <= newest + 1],
                             {"kind": "note", "data": {"much": "later"}, "ts": late}])


def test_identical_verdicts_when_the_newer_chain_was_stripped(sealed: Appliance) -> None:
    _re_enrolled_then_stripped(sealed)
    for secret in (None, sealed.secret, LATER, WRONG):
        ours, theirs = both_sealed(sealed.ledger, secret, None)
        assert ours == theirs


def test_an_older_auditors_secret_does_not_hide_a_stripped_tail(sealed: Appliance) -> None:
    _re_enrolled_then_stripped(sealed)
    without = verify_file(sealed.ledger)
    assert without.fault is not None and without.fault.reason == "seal_overdue"
    older = verify_file(sealed.ledger, seal_secret=sealed.secret)
    assert older.fault is not None and older.fault.reason == "seal_overdue"


def test_a_fingerprint_that_is_not_text_is_reported_alike(sealed: Appliance) -> None:
    _records(sealed, lambda rs: [{**r, "data": {**r["data"], "fingerprint": 5}} if r["kind"] == "seal.enroll"
                                   else r for r in rs])
    ours, theirs = both_sealed(sealed.ledger, None, None)
    assert ours == theirs
