"""Checkpoint bodies, witness add-checkpoint requests and tlog-proof files (ledger.tlog_text).

Published vectors: the checkpoint, add-checkpoint and tlog-proof examples of the C2SP
specifications, and x/mod's tlog tree-note tests (tests/corpus/note/, with their sources).
Every value round-trips; every malformed form is refused with a one-line NoteError.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import (
    AddCheckpoint,
    NoteError,
    TlogProof,
    TreeHead,
    add_signature_lines,
    cosign,
    cosigner_vkey,
    ed25519_vkey,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    open_note,
    parse_add_checkpoint,
    parse_checkpoint_text,
    parse_tlog_proof,
    sign_note,
    split_note,
    tree_head_of,
    verify_inclusion,
)
from ledger.merkle import from_leaves
from ledger.tlog_text import MAX_PROOF_HASHES, MAX_SIZE
from tests.test_note import C2SP, GO, key

ROOT32 = bytes(range(32))
B64 = base64.b64encode(ROOT32).decode()
LOG = ("example.org/log", key(30))
CHECKPOINT = sign_note(TreeHead("example.org/log", 5, ROOT32).text(), *LOG)
H = base64.b64encode(hashlib.sha256(b"h").digest()).decode()


# -- published vectors ----------------------------------------------------------------------------------


def test_the_go_tree_note_formats_and_parses() -> None:
    case = GO["tree"]
    head = TreeHead(case["origin"], case["size"], leaf_hash(case["leaf"].encode()))
    assert head.text() == case["text"]
    assert parse_checkpoint_text(case["text"]) == head


@pytest.mark.parametrize("bad", GO["tree"]["bad"], ids=lambda b: b["error"])
def test_the_go_bad_tree_notes_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(NoteError, match=bad["error"]):
        parse_checkpoint_text(bad["text"])


def test_a_checkpoint_names_its_origin_for_the_caller_to_check() -> None:
    head = parse_checkpoint_text(GO["tree"]["other_origin"]["text"])
    assert head.origin == "not-go.sum database tree" and head.size == GO["tree"]["size"]


@pytest.mark.parametrize("case", GO["tree"]["extensions"], ids=lambda c: repr(c["suffix"][:8]))
def test_lines_after_the_root_are_extensions(case: dict[str, Any]) -> None:
    text = GO["tree"]["text"] + case["suffix"] * case.get("times", 1)
    if case["extensions"] is None:
        with pytest.raises(NoteError, match="ends with a newline"):
            parse_checkpoint_text(text)
    else:
        head = parse_checkpoint_text(text)
        assert list(head.extensions) == case["extensions"] * case.get("times", 1)
        assert head.text() == text


def test_the_witness_add_checkpoint_example_parses_and_round_trips() -> None:
    case = C2SP["add_checkpoint"]
    body = case["body"].encode()
    request = parse_add_checkpoint(body)
    assert (request.old_size, len(request.proof)) == (case["old_size"], case["proof_lines"])
    assert tree_head_of(request.checkpoint).size == 20852163
    assert len(split_note(request.checkpoint)[1]) == 2
    assert request.encode() == body


def test_the_tlog_proof_example_is_refused_for_its_elided_signatures_and_parses_without_them() -> None:
    case = C2SP["tlog_proof"]
    with pytest.raises(NoteError, match="not standard base64"):
        parse_tlog_proof(case["body"].encode())
    body = case["body"][:case["body"].index("— ")]  # the checkpoint with its '[...]' lines removed
    text = body[body.index(case["origin"]):-1]
    whole = (body[:-1] + sign_note(text, *LOG)[len(text):]).encode()
    proof = parse_tlog_proof(whole)
    assert (proof.index, len(proof.proof)) == (case["index"], case["proof_lines"])
    assert proof.extra is not None and proof.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert (proof.tree_head().origin, proof.tree_head().size) == (case["origin"], case["size"])
    assert proof.encode() == whole


# -- round trips ---------------------------------------------------------------------------------------------

origins = st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1, max_size=30)
hashes = st.binary(min_size=32, max_size=32)


@given(origins, st.integers(0, MAX_SIZE), hashes, st.lists(origins, max_size=3))
def test_any_tree_head_round_trips(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    head = TreeHead(origin, size, root, tuple(extensions))
    assert parse_checkpoint_text(head.text()) == head


@given(st.integers(0, MAX_SIZE), st.lists(hashes, max_size=MAX_PROOF_HASHES),
       st.none() | st.binary(max_size=60), st.integers(0, MAX_SIZE))
def test_any_request_and_proof_round_trip(old: int, proof: list[bytes], extra: bytes | None, index: int) -> None:
    request = AddCheckpoint(old, tuple(proof), CHECKPOINT)
    assert parse_add_checkpoint(request.encode()) == request
    tlog = TlogProof(extra, index, tuple(proof), CHECKPOINT)
    assert parse_tlog_proof(tlog.encode()) == tlog


# -- malformed forms -------------------------------------------------------------------------------------------

BAD_CHECKPOINTS = {
    "no final newline": ("o\n1\n" + B64, "ends with a newline"),
    "two lines": ("o\n1\n", "at least three lines, not 2"),
    "empty origin": ("\n1\n" + B64 + "\n", "origin is empty"),
    "leading zero": ("o\n01\n" + B64 + "\n", "the tree size '01'"),
    "negative": ("o\n-1\n" + B64 + "\n", "the tree size"),
    "plus sign": ("o\n+1\n" + B64 + "\n", "the tree size"),
    "a space": ("o\n 1\n" + B64 + "\n", "the tree size"),
    "fullwidth digit": ("o\n\uff11\n" + B64 + "\n", "the tree size"),
    "2^63": (f"o\n{2**63}\n{B64}\n", "the tree size"),
    "a 5000-digit size": ("o\n" + "9" * 5000 + "\n" + B64 + "\n", "the tree size"),
    "31-byte root": ("o\n1\n" + base64.b64encode(ROOT32[:31]).decode() + "\n", "31 bytes, not 32"),
    "root not base64": ("o\n1\n" + B64[:-1] + "*\n", "not standard base64"),
    "root not canonical": ("o\n1\n" + B64[:-2] + "B=\n", "canonical"),
    "empty extension line": ("o\n1\n" + B64 + "\n\next\n", "extension line is empty"),
    "control character in the origin": ("o\x01\n1\n" + B64 + "\n", "origin must be"),
    "control character in an extension": ("o\n1\n" + B64 + "\ne\tx\n", "extension line must be"),
}


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_every_malformed_checkpoint_text_is_refused(name: str) -> None:
    text, reason = BAD_CHECKPOINTS[name]
    with pytest.raises(NoteError, match=re.escape(reason)) as caught:
        parse_checkpoint_text(text)
    assert "\n" not in str(caught.value)


def test_tree_heads_cannot_be_built_malformed() -> None:
    for args in (("", 1, ROOT32), ("o\n", 1, ROOT32), ("o", -1, ROOT32), ("o", True, ROOT32), ("o", 2**63, ROOT32),
                 ("o", 1, ROOT32[:31]), ("o", 1, ROOT32, ("",)), ("o", 1, ROOT32, ["x"])):
        with pytest.raises(NoteError):
            TreeHead(*args)


BAD_REQUESTS: dict[str, tuple[str | bytes, str]] = {
    "no old line": (f"{H}\n\n{CHECKPOINT}", "'old <size>'"),
    "old with a leading zero": (f"old 07\n\n{CHECKPOINT}", "the old size '07'"),
    "old without its space": (f"old\n\n{CHECKPOINT}", "'old <size>'"),
    "two spaces": (f"old  7\n\n{CHECKPOINT}", "the old size"),
    "no blank line": (f"old 7\n{H}\n", "no blank line"),
    "the checkpoint run into the proof": (f"old 7\n{CHECKPOINT}", "proof line 1 is not standard base64"),
    "64 proof lines": (f"old 7\n{(H + chr(10)) * 64}\n{CHECKPOINT}", "more than 63"),
    "short hash": ("old 7\nAAAA\n\n" + CHECKPOINT, "3 bytes, not 32"),
    "proof line not base64": (f"old 7\n{H[:-1]}!\n\n{CHECKPOINT}", "line 1 is not standard base64"),
    "a CR after the size": (f"old 7\r\n\n{CHECKPOINT}", "the old size"),
    "checkpoint unsigned": ("old 7\n\n" + TreeHead("o", 5, ROOT32).text(), "no blank line before its signatures"),
    "checkpoint text malformed": ("old 7\n\n" + sign_note("o\n5\n", *LOG), "at least three lines"),
    "invalid UTF-8": (b"old 7\n\n\xff", "UTF-8"),
    "too large": ("old 7\n\n" + "x" * (2 << 20), "larger than"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_every_malformed_add_checkpoint_request_is_refused(name: str) -> None:
    body, reason = BAD_REQUESTS[name]
    with pytest.raises(NoteError, match=re.escape(reason)) as caught:
        parse_add_checkpoint(body if isinstance(body, bytes) else body.encode())
    assert "\n" not in str(caught.value)


def test_63_proof_lines_is_the_most_a_request_may_hold() -> None:
    assert len(parse_add_checkpoint(f"old 7\n{(H + chr(10)) * 63}\n{CHECKPOINT}".encode()).proof) == 63
    with pytest.raises(NoteError):
        AddCheckpoint(7, (ROOT32,) * 64, CHECKPOINT)
    with pytest.raises(NoteError):
        parse_add_checkpoint("old 7\n\n{CHECKPOINT}")  # type: ignore[arg-type]


BAD_PROOFS = {
    "no header": (f"index 1\n\n{CHECKPOINT}", "does not start with c2sp.org/tlog-proof@v1"),
    "another version": (f"c2sp.org/tlog-proof@v2\nindex 1\n\n{CHECKPOINT}", "does not start with"),
    "no index": (f"c2sp.org/tlog-proof@v1\n{H}\n\n{CHECKPOINT}", "no 'index <n>' line"),
    "extra without index": (f"c2sp.org/tlog-proof@v1\nextra AAAA\n\n{CHECKPOINT}", "no 'index <n>' line"),
    "index before extra": (f"c2sp.org/tlog-proof@v1\nindex 1\nextra AAAA\n\n{CHECKPOINT}", "not standard base64"),
    "index with a leading zero": (f"c2sp.org/tlog-proof@v1\nindex 01\n\n{CHECKPOINT}", "the index '01'"),
    "extra not canonical": (f"c2sp.org/tlog-proof@v1\nextra AB==\nindex 1\n\n{CHECKPOINT}", "canonical"),
    "short hash": (f"c2sp.org/tlog-proof@v1\nindex 1\nAAAA\n\n{CHECKPOINT}", "3 bytes, not 32"),
    "64 hashes": (f"c2sp.org/tlog-proof@v1\nindex 1\n{(H + chr(10)) * 64}\n{CHECKPOINT}", "more than 63"),
    "no blank line": (f"c2sp.org/tlog-proof@v1\nindex 1\n{H}\n", "no blank line"),
    "the checkpoint run into the proof": (f"c2sp.org/tlog-proof@v1\nindex 1\n{CHECKPOINT}", "proof line 1 is not"),
    "checkpoint without signatures": (f"c2sp.org/tlog-proof@v1\nindex 1\n\n{TreeHead('o', 5, ROOT32).text()}",
                                      "no blank line before its signatures"),
}


@pytest.mark.parametrize("name", BAD_PROOFS)
def test_every_malformed_tlog_proof_is_refused(name: str) -> None:
    body, reason = BAD_PROOFS[name]
    with pytest.raises(NoteError, match=re.escape(reason)) as caught:
        parse_tlog_proof(body.encode())
    assert "\n" not in str(caught.value)


@given(st.binary(max_size=400))
def test_hostile_bodies_raise_only_note_errors(raw: bytes) -> None:
    for parse in (parse_add_checkpoint, parse_tlog_proof):
        with contextlib.suppress(NoteError):
            parse(raw)


# -- the pieces together ------------------------------------------------------------------------------------------


def test_a_cosigned_tlog_proof_of_a_ledger_line_verifies_end_to_end() -> None:
    """A log signs its tree head, a witness cosigns it, and a proof for one line verifies from the file alone."""
    lines = [b'{"seq":%d}' % i for i in range(6)]
    leaves = [leaf_hash(line) for line in lines]
    head = TreeHead("example.org/log", len(lines), merkle_root(leaves))
    witness = ("example.org/witness", key(31))
    checkpoint = add_signature_lines(sign_note(head.text(), *LOG), cosign(head.text(), *witness, 1_767_225_600))
    written = TlogProof(None, 4, tuple(inclusion_proof(4, 6, from_leaves(leaves.__getitem__))), checkpoint).encode()

    proof = parse_tlog_proof(written)
    verdict = open_note(proof.checkpoint, [ed25519_vkey(LOG[0], LOG[1].public_key()),
                                           cosigner_vkey(witness[0], witness[1].public_key())])
    assert verdict.ok and [s.timestamp for s in verdict.verified] == [None, 1_767_225_600]
    tree = parse_checkpoint_text(verdict.text or "")
    assert verify_inclusion(proof.index, tree.size, leaf_hash(lines[4]), list(proof.proof), tree.root).ok
    assert not verify_inclusion(proof.index, tree.size, leaf_hash(lines[3]), list(proof.proof), tree.root).ok
