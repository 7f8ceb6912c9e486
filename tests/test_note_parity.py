"""tools/verify_ledger.py's signed-note, checkpoint and tlog-proof functions agree with ledger.note and
ledger.tlog_text on every published vector and every malformed case of their tests, verdict, reason
and message alike; without `cryptography` the twin reports the signatures as not checked."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from ledger import (
    NoteError,
    TlogProof,
    Vkey,
    add_signature_lines,
    cosign,
    ed25519_vkey,
    open_note,
    parse_checkpoint_text,
    parse_tlog_proof,
    parse_vkey,
    sign_note,
)
from tests.standalone import TOOL, verifier
from tests.test_note import (
    BAD_NOTES,
    BAD_VKEYS,
    C2SP,
    COLLIDE_NAME,
    COLLIDE_SEEDS,
    GO,
    TEXT,
    VA,
    VB,
    VW,
    A,
    B,
    W,
    note_of,
    vkey_manglings,
)
from tests.test_tlog_text import BAD_CHECKPOINTS, BAD_PROOFS, CHECKPOINT, ROOT32

tool = verifier("verify_ledger_tool_note")
CHECK = tool.signature_checker()


def both_open(note: Any, known: list[Vkey], now: int | None = None) -> dict[str, Any]:
    ours = open_note(note, known, now=now)
    theirs = tool.open_note(note, [tool.parse_vkey(k.encode()) for k in known], now, CHECK)
    assert (ours.ok, ours.reason, ours.detail, ours.text) == (theirs["ok"], theirs["reason"], theirs["detail"],
                                                              theirs["text"])
    assert [(s.name, s.key_id.hex(), s.sig_type, s.timestamp) for s in ours.verified] == [
        (s["name"], s["key_id"], s["type"], s["timestamp"]) for s in theirs["verified"]]
    assert [(s.name, s.key_id.hex()) for s in ours.unknown] == [(s["name"], s["key_id"]) for s in theirs["unknown"]]
    assert theirs["not_checked"] == []
    return dict(theirs)


def same_error(ours: Any, theirs: Any, arg: Any) -> tuple[Any, Any]:
    """Both parsers accept ``arg`` (returning both results) or both refuse it with the same message."""
    got: list[Any] = []
    for parse, error in ((ours, NoteError), (theirs, ValueError)):
        try:
            got.append(parse(arg))
        except error as exc:
            got.append(str(exc))
    assert isinstance(got[0], str) == isinstance(got[1], str), got
    if isinstance(got[0], str):
        assert got[0] == got[1]
    return got[0], got[1]


# -- notes ---------------------------------------------------------------------------------------------------

A_NOTE = sign_note(TEXT, *A)
COSIGNED = add_signature_lines(A_NOTE, cosign(TEXT, *W, 1_700_000_000))
SCENARIOS: dict[str, tuple[Any, list[Vkey], int | None]] = {
    "vkey example": (C2SP["vkey_example"]["note"], [parse_vkey(C2SP["vkey_example"]["vkey"])], None),
    "quasimodo": (C2SP["quasimodo"]["note"], [], None),
    "checkpoint example": (C2SP["checkpoint"]["note"], [VA], None),
    "cosignature example": (C2SP["cosignature"]["note"], [], None),
    "signed": (A_NOTE, [VA], None),
    "signed, another key known": (A_NOTE, [VB], None),
    "two signers, one known": (add_signature_lines(A_NOTE, sign_note(TEXT, *B)[len(TEXT) + 1:]), [VB], None),
    "cosigned": (COSIGNED, [VA, VW], None),
    "cosigned, only the witness known": (COSIGNED, [VW], None),
    "cosigned in the future": (COSIGNED, [VA, VW], 1_699_999_999),
    "cosigned, now": (COSIGNED, [VA, VW], 1_700_000_000),
    "wrong signature": (TEXT + "\n" + sign_note(TEXT + "x\n", *A)[len(TEXT) + 3:], [VA], None),
}
for _case in GO["open"]:
    SCENARIOS["go: " + _case["name"]] = (note_of(_case), [parse_vkey(v) for v in _case["known"]], None)
for _name, (_note, _) in BAD_NOTES.items():
    SCENARIOS["malformed: " + _name] = (_note, [VA], None)


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_twin_opens_every_note_alike(name: str) -> None:
    note, known, now = SCENARIOS[name]
    both_open(note, known, now)


def test_the_twin_agrees_on_a_full_collision_and_on_ambiguity() -> None:
    k1, k2 = (Ed25519PrivateKey.from_private_bytes(hashlib.sha256(s).digest()) for s in COLLIDE_SEEDS)
    v1, v2 = (ed25519_vkey(COLLIDE_NAME, k.public_key()) for k in (k1, k2))
    note = sign_note(TEXT, COLLIDE_NAME, k2)
    assert [both_open(note, known)["reason"] for known in ([v2], [v1], [v1, v2])] == [
        None, "bad_signature", "ambiguous_key"]


def test_an_altered_cosignature_time_fails_in_both() -> None:
    raw = base64.b64decode(cosign(TEXT, *W, 5).split(" ")[2])
    for ts in (6, 2**63):
        altered = raw[:4] + ts.to_bytes(8, "big") + raw[12:]
        assert both_open(f"{TEXT}\n— {W[0]} {base64.b64encode(altered).decode()}\n", [VW])["reason"] == \
            "bad_signature"


@given(st.binary(max_size=300), st.sampled_from([[VA], [VA, VW], []]))
def test_the_twin_agrees_on_hostile_input(raw: bytes, known: list[Vkey]) -> None:
    both_open(raw, known)


@given(st.integers(0, len(COSIGNED.encode()) - 1), st.integers(1, 255))
def test_the_twin_agrees_on_every_changed_byte(at: int, xor: int) -> None:
    raw = bytearray(COSIGNED.encode())
    raw[at] ^= xor
    verdict = both_open(bytes(raw), [VA, VW])
    # a changed signature line may leave the other key's signature standing, never another text
    assert not verdict["ok"] or (verdict["text"] == TEXT and len(verdict["verified"]) == 1)


def test_without_cryptography_the_known_signatures_are_not_checked() -> None:
    verdict = tool.open_note(COSIGNED, [tool.parse_vkey(k.encode()) for k in (VA, VW)], None, None)
    assert (verdict["ok"], verdict["reason"], verdict["verified"]) == (False, "not_checked", [])
    assert [(s["name"], s["timestamp"]) for s in verdict["not_checked"]] == [(A[0], None), (W[0], 1_700_000_000)]
    assert "NOT checked" in verdict["detail"]
    # what needs no signature check is still checked: syntax, unknown keys, a cosignature's shape
    assert tool.open_note(COSIGNED[:-2] + "\n", [], None, None)["reason"] == "malformed"
    assert tool.open_note(COSIGNED, [], None, None)["reason"] == "no_known_signature"
    short = base64.b64decode(cosign(TEXT, *W, 5).split(" ")[2])[:-1]
    line = f"— {W[0]} {base64.b64encode(short).decode()}\n"
    assert tool.open_note(TEXT + "\n" + line, [tool.parse_vkey(VW.encode())], None, None)["reason"] == "bad_signature"


def test_the_twin_runs_on_the_standard_library_alone() -> None:
    """-I -S: no site-packages, so no cryptography: the vkey example parses and is reported not checked."""
    case = C2SP["vkey_example"]
    script = ("import runpy, sys; t = runpy.run_path(sys.argv[1], run_name='twin');"
              f" v = t['open_note']({case['note']!r}, [t['parse_vkey']({case['vkey']!r})], None,"
              " t['signature_checker']()); print(v['reason'], len(v['not_checked']))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(TOOL)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "not_checked 1"), done.stderr


# -- vkeys, checkpoints, tlog-proofs --------------------------------------------------------------------------


def test_the_twin_parses_every_vkey_alike() -> None:
    cases = [GO["keys"]["peter_vkey"], GO["keys"]["enoch_vkey"], C2SP["vkey_example"]["vkey"], VA.encode(),
             VW.encode(), *(c["vkey"] for c in GO["bad_vkeys"]), *(text for text, _ in BAD_VKEYS.values()),
             *vkey_manglings(GO["keys"]["peter_vkey"])]
    accepted = 0
    for text in cases:
        ours, theirs = same_error(parse_vkey, tool.parse_vkey, text)
        if isinstance(ours, Vkey):
            accepted += 1
            assert (ours.name, ours.key_id, ours.sig_type, ours.public) == (
                theirs["name"], theirs["key_id"], theirs["type"], theirs["public"])
    assert accepted == 5


def test_the_twin_parses_every_checkpoint_text_alike() -> None:
    tree = GO["tree"]
    texts = [tree["text"], *(b["text"] for b in tree["bad"]), tree["other_origin"]["text"],
             *(tree["text"] + e["suffix"] * e.get("times", 1) for e in tree["extensions"]),
             *(text for text, _ in BAD_CHECKPOINTS.values()), C2SP["checkpoint"]["note"].split("\n\n")[0] + "\n"]
    for text in texts:
        ours, theirs = same_error(parse_checkpoint_text, tool.parse_tlog_checkpoint, text)
        if not isinstance(ours, str):
            assert (ours.origin, ours.size, ours.root, list(ours.extensions)) == (
                theirs["origin"], theirs["size"], theirs["root"], theirs["extensions"])


def test_the_twin_parses_every_tlog_proof_alike() -> None:
    good = [TlogProof(None, 0, (), CHECKPOINT).encode(), TlogProof(b"", 3, (ROOT32,) * 63, CHECKPOINT).encode(),
            TlogProof(b"extra data", 2**63 - 1, (ROOT32,), CHECKPOINT).encode()]
    bodies = [*good, C2SP["tlog_proof"]["body"].encode(), *(body.encode() for body, _ in BAD_PROOFS.values()),
              b"c2sp.org/tlog-proof@v1\nindex 1\n\n\xff", 12]
    parsed = 0
    for body in bodies:
        ours, theirs = same_error(parse_tlog_proof, tool.parse_tlog_proof, body)
        if isinstance(ours, TlogProof):
            parsed += 1
            assert (ours.extra, ours.index, list(ours.proof), ours.checkpoint) == (
                theirs["extra"], theirs["index"], theirs["proof"], theirs["checkpoint"])
            assert theirs["tree"]["size"] == ours.tree_head().size
    assert parsed == len(good)
