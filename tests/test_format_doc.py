"""The worked example in docs/ledger-format.md is true: its bytes hash, sign and verify as stated."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import (
    SignedCheckpoint,
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
    parse_vkey,
    sign_note,
    verify_file,
    verify_inclusion,
)
from ledger.checkpoint import ed25519_valid, raw_public_key
from ledger.merkle import from_leaves
from ledger.record import parse_line
from tests.standalone import verifier
from tools import verify_ledger

DOC = (Path(__file__).resolve().parent.parent / "docs" / "ledger-format.md").read_text()
EXAMPLE = DOC[DOC.index("## 8. Worked example"):DOC.index("## 9. Seals")]
SEALED = DOC[DOC.index("## 10. Worked example"):DOC.index("\n## ", DOC.index("## 10. Worked example"))]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", EXAMPLE, re.DOTALL)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def test_each_documented_body_hashes_to_the_documented_digest() -> None:
    bodies = [body.strip() for lang, body in BLOCKS if not lang and body.startswith('{"data"')]
    digests = re.findall(r"SHA3-256: `([0-9a-f]{64})`", EXAMPLE)
    assert len(bodies) == len(digests) == 3
    for body, digest in zip(bodies, digests, strict=True):
        assert hashlib.sha3_256(body.encode()).hexdigest() == digest


def test_documented_file_verifies_with_both_verifiers(tmp_path: Path) -> None:
    jsonl = next(body for lang, body in BLOCKS if lang == "jsonl")
    path = tmp_path / "example.jsonl"
    path.write_text(jsonl, encoding="utf-8")
    verdict = verify_file(path, public_key=raw_public_key(KEY.public_key()))
    assert verdict.status == "intact" and verdict.records == 3 and verdict.checkpoints_in_ledger == 1
    assert verdict.head_hash == "09b3508407d3027c7b8b5bd0236e559b9e5140865abb9c07384094a69ab7cd3f"
    tool = verifier("tool")
    assert tool.verify(str(path), None, None)["verdict"] == "intact"


def test_documented_key_message_and_signature_agree() -> None:
    raw = raw_public_key(KEY.public_key())
    assert raw.hex() in EXAMPLE
    message = next(body.strip() for lang, body in BLOCKS if not lang and body.startswith('{"hash"'))
    record = parse_line(next(b for lang, b in BLOCKS if lang == "jsonl").splitlines()[2].encode())
    signed = SignedCheckpoint.from_json(record.data)
    assert signed.checkpoint.message() == message.encode()
    assert ed25519_valid(raw, message.encode(), signed.signature)
    assert KEY.sign(message.encode()) == signed.signature  # Ed25519 is deterministic


def test_the_bounds_the_spec_states_are_the_bounds_both_verifiers_apply() -> None:
    """Each bound is stated once in the package (ledger/canonical.py, ledger/record.py); the
    standalone tool restates it by design, and the spec writes it down: all three must agree."""
    from ledger.canonical import MAX_DEPTH
    from ledger.record import MAX_LINE_BYTES
    from ledger.verify import EXIT_CODES

    tool = verifier("tool")
    assert (tool.MAX_DEPTH, tool.MAX_LINE_BYTES, tool.EXIT_CODES) == (MAX_DEPTH, MAX_LINE_BYTES, EXIT_CODES)
    assert f"at most **{MAX_LINE_BYTES >> 20} MiB ({MAX_LINE_BYTES:,} bytes)**" in DOC
    assert f"nest at most **{MAX_DEPTH}** deep" in DOC and f"nest at most\n  {MAX_DEPTH - 1} deep" in DOC
    table = DOC[DOC.index("### Verdicts and exit codes"):DOC.index("## 6.")]
    for status, code in EXIT_CODES.items():
        assert f"| `{status}` | {code} |" in table


def _sealed_values() -> dict[str, str]:
    found = dict(re.findall(r"`(K_[0-9]|T_[0-9]) = ([0-9a-f]{64})`", SEALED))
    found["secret"] = re.search(r"\(`([0-9a-f]{64})`\)", SEALED).group(1)  # type: ignore[union-attr]
    return found


def test_the_documented_key_schedule_and_tags_are_what_both_kmac_implementations_compute() -> None:
    from ledger.seal import fingerprint, kmac256, next_key, tag

    values = _sealed_values()
    secret = bytes.fromhex(values["secret"])
    assert secret == bytes(range(32, 64))
    assert fingerprint(secret) in SEALED
    k1, k2 = next_key(secret), next_key(next_key(secret))
    assert (k1.hex(), k2.hex()) == (values["K_1"], values["K_2"])
    for key, name in ((secret, "T_0"), (k1, "T_1")):
        assert kmac256(key, b"", b"anticloud.seal.tag-key").hex() == values[name]
        assert verify_ledger.kmac256(key, b"", 32, b"anticloud.seal.tag-key").hex() == values[name]
    contents = [body.strip() for lang, body in re.findall(r"```(\w*)\n(.*?)```", SEALED, re.DOTALL)
                if not lang and body.startswith('{"enrollment"')]
    tags = re.findall(r"tag: `(kmac256:[0-9a-f]{64})`", SEALED)
    assert len(contents) == len(tags) == 2
    for key, content, expected in zip((secret, k1), contents, tags, strict=True):
        assert tag(key, json.loads(content)) == expected


def test_the_documented_sealed_file_verifies_with_its_secret(tmp_path: Path) -> None:
    body = next(b for lang, b in re.findall(r"```(\w*)\n(.*?)```", SEALED, re.DOTALL) if lang == "sealedjsonl")
    path = tmp_path / "sealed.jsonl"
    path.write_text(body, encoding="utf-8")
    verdict = verify_file(path, seal_secret=bytes(range(32, 64)))
    assert verdict.status == "intact" and verdict.records == 7
    assert verdict.seals is not None and (verdict.seals.sealed_epoch, verdict.seals.sealed_seq) == (1, 6)
    assert verdict.seals.checked and verdict.seals.unsealed_records == 0


def test_the_documented_signed_checkpoint_and_proof_are_what_both_implementations_make_and_accept() -> None:
    """Section 13: the tlog-proof of line 1 in section 12's tree, signed with section 8's key and cosigned."""
    section = DOC[DOC.index("## 13. Signed notes"):DOC.index("\n## ", DOC.index("## 13. Signed notes"))]
    body = next(b for lang, b in re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL) if lang == "tlogproof")
    vkeys = re.findall(r"`(example\.org/[a-z]+\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+)`", section)
    timestamp = int(re.search(r"cosigned at (\d+)", section).group(1))  # type: ignore[union-attr]
    witness = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
    lines = [line.encode() for line in next(b for lang, b in BLOCKS if lang == "jsonl").split("\n")[:-1]]
    leaves = [leaf_hash(line) for line in lines]

    text = TreeHead("example.org/ledger", 3, merkle_root(leaves)).text()
    checkpoint = add_signature_lines(sign_note(text, "example.org/ledger", KEY),
                                     cosign(text, "example.org/witness", witness, timestamp))
    made = TlogProof(None, 1, tuple(inclusion_proof(1, 3, from_leaves(leaves.__getitem__))), checkpoint).encode()
    assert made == body.encode()  # Ed25519 is deterministic: the bytes are reproducible
    assert [parse_vkey(v) for v in vkeys] == [ed25519_vkey("example.org/ledger", KEY.public_key()),
                                             cosigner_vkey("example.org/witness", witness.public_key())]
    assert timestamp.to_bytes(8, "big").hex(" ") in section

    verdict = open_note(checkpoint, [parse_vkey(v) for v in vkeys])
    assert verdict.ok and [s.timestamp for s in verdict.verified] == [None, timestamp]
    path = inclusion_proof(1, 3, from_leaves(leaves.__getitem__))
    assert verify_inclusion(1, 3, leaves[1], path, merkle_root(leaves)).ok

    tool = verifier("tool")
    proof = tool.parse_tlog_proof(body.encode())
    opened = tool.open_note(proof["checkpoint"], [tool.parse_vkey(v) for v in vkeys], None, tool.signature_checker())
    assert opened["ok"] and proof["tree"]["root"] == merkle_root(leaves)
    assert tool.merkle_verify_inclusion(proof["index"], proof["tree"]["size"], tool.merkle_leaf(lines[1]),
                                        proof["proof"], proof["tree"]["root"])["ok"]
