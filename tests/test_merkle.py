"""The RFC 9162 Merkle tree (ledger.merkle) and its standard-library twin in tools/verify_ledger.py.

Every root, every inclusion proof and every consistency proof of the trees of 0..20 leaves
verifies in both; the published RFC 6962 vectors of transparency-dev/merkle (checked in under
tests/corpus/merkle/, with their source) are reproduced; every kind of tampering is refused by
both, with the same reason code; hostile input gives a verdict, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import (
    EMPTY_ROOT,
    ProofRequestError,
    ProofVerdict,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.merkle import (
    Frontier,
    Subtrees,
    consistency_proof_length,
    from_leaves,
    inclusion_path_length,
    perfect_ranges,
)
from tests.standalone import TOOL, verifier

ROOT = Path(__file__).resolve().parent.parent
tool = verifier("verify_ledger_tool_merkle")

VECTORS: dict[str, Any] = json.loads((ROOT / "tests" / "corpus" / "merkle" / "rfc6962-vectors.json").read_text())
MAX_SIZE = 20


def mth(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 9162 section 2.1.1 writes it, recursively: the reference the tests trust."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def data(n: int, salt: bytes = b"") -> list[bytes]:
    """n distinct leaves that look like ledger lines (the tree never sees their newline)."""
    return [b'{"seq":%d,"salt":"%s"}' % (i, salt) for i in range(n)]


def hashes_of(leaves: list[bytes]) -> list[bytes]:
    return [leaf_hash(d) for d in leaves]


def accessor(hashes: list[bytes]) -> Subtrees:
    return from_leaves(hashes.__getitem__)


def incl_both(index: Any, size: Any, leaf: Any, proof: Any, root: Any) -> tuple[ProofVerdict, dict[str, Any]]:
    ours = verify_inclusion(index, size, leaf, proof, root)
    theirs = tool.merkle_verify_inclusion(index, size, leaf, proof, root)
    assert ours.to_json() == theirs
    assert ours.ok == (ours.reason is None) and (ours.ok or ours.detail)
    return ours, theirs


def cons_both(old: Any, new: Any, old_root: Any, new_root: Any, proof: Any) -> tuple[ProofVerdict, dict[str, Any]]:
    ours = verify_consistency(old, new, old_root, new_root, proof)
    theirs = tool.merkle_verify_consistency(old, new, old_root, new_root, proof)
    assert ours.to_json() == theirs
    assert ours.ok == (ours.reason is None) and (ours.ok or ours.detail)
    return ours, theirs


def flip(h: bytes, bit: int = 3) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# -- known answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["hashes"], ids=lambda c: c["desc"])
def test_published_hashes(case: dict[str, Any]) -> None:
    if case.get("empty_root"):
        got, twin = merkle_root([]), tool.MERKLE_EMPTY_ROOT
        assert got == EMPTY_ROOT
    elif "leaf" in case:
        got, twin = leaf_hash(bytes.fromhex(case["leaf"])), tool.merkle_leaf(bytes.fromhex(case["leaf"]))
    else:
        left, right = bytes.fromhex(case["left"]), bytes.fromhex(case["right"])
        got, twin = node_hash(left, right), tool.merkle_node(left, right)
    assert got.hex() == twin.hex() == case["want"]


def test_published_roots_and_proofs() -> None:
    leaves = [bytes.fromhex(d) for d in VECTORS["leaves"]]
    hashes = hashes_of(leaves)
    roots = [bytes.fromhex(r) for r in VECTORS["roots"]]
    for n in range(1, len(leaves) + 1):
        assert merkle_root(hashes[:n]) == mth(leaves[:n]) == roots[n - 1], n
    for case in VECTORS["inclusion"]:
        i, n, proof = case["index"], case["size"], [bytes.fromhex(p) for p in case["proof"]]
        assert inclusion_proof(i, n, accessor(hashes)) == proof
        assert incl_both(i, n, hashes[i], proof, roots[n - 1])[0].ok
    for case in VECTORS["consistency"]:
        m, n, proof = case["old"], case["new"], [bytes.fromhex(p) for p in case["proof"]]
        assert consistency_proof(m, n, accessor(hashes)) == proof
        assert cons_both(m, n, roots[m - 1], roots[n - 1], proof)[0].ok


def test_the_leaf_and_node_prefixes_keep_a_leaf_from_passing_for_a_node() -> None:
    a, b = leaf_hash(b"Hello"), leaf_hash(b"World")
    assert node_hash(a, b) != leaf_hash(a + b)
    assert node_hash(a, b) != node_hash(b, a)
    assert leaf_hash(b"") != EMPTY_ROOT


# -- every proof of every small tree ----------------------------------------------------------------


@pytest.mark.parametrize("size", range(MAX_SIZE + 1))
def test_every_root_and_inclusion_proof(size: int) -> None:
    leaves = data(size)
    hashes = hashes_of(leaves)
    r = merkle_root(hashes)
    assert r == mth(leaves) == merkle_root(iter(hashes))
    for i in range(size):
        proof = inclusion_proof(i, size, accessor(hashes))
        assert len(proof) == inclusion_path_length(i, size)
        assert incl_both(i, size, hashes[i], proof, r)[0].ok, (i, size)


@pytest.mark.parametrize("new", range(MAX_SIZE + 1))
def test_every_consistency_proof(new: int) -> None:
    hashes = hashes_of(data(new))
    roots = [merkle_root(hashes[:m]) for m in range(new + 1)]
    for old in range(new + 1):
        proof = consistency_proof(old, new, accessor(hashes))
        if 0 < old < new:
            assert len(proof) == consistency_proof_length(old, new)
        else:
            assert proof == []
        assert cons_both(old, new, roots[old], roots[new], proof)[0].ok, (old, new)


def test_provers_refuse_what_the_tree_does_not_have() -> None:
    get = accessor(hashes_of(data(4)))
    for i, n in ((4, 4), (-1, 4), (0, 0)):
        with pytest.raises(ProofRequestError, match="no inclusion proof"):
            inclusion_proof(i, n, get)
    for m, n in ((5, 4), (-1, 4)):
        with pytest.raises(ProofRequestError, match="no consistency proof"):
            consistency_proof(m, n, get)


# -- tampering: refused by both, for the same reason ----------------------------------------------------


TAMPER_SIZES = (1, 2, 3, 5, 7, 8, 13, 16, 17)


@pytest.mark.parametrize("size", TAMPER_SIZES)
def test_tampered_inclusion_proofs_are_refused(size: int) -> None:
    hashes = hashes_of(data(size))
    other = hashes_of(data(size, b"other log"))
    r, other_root = merkle_root(hashes), merkle_root(other)
    for i in range(size):
        proof = inclusion_proof(i, size, accessor(hashes))
        probes: dict[str, tuple[Any, ...]] = {
            "root from another tree": (i, size, hashes[i], proof, other_root),
            "the other tree's leaf": (i, size, other[i], proof, r),
            "extended by a hash": (i, size, hashes[i], [*proof, r], r),
            "extended at the front": (i, size, hashes[i], [r, *proof], r),
            "size doubled": (i, size * 2, hashes[i], proof, r),
        }
        if size > 1:
            j = (i + 1) % size
            probes["swapped leaf"] = (i, size, hashes[j], proof, r)
            probes["wrong index"] = (j, size, hashes[i], proof, r)
            probes["wrong index, right leaf"] = (j, size, hashes[j], proof, r)
            probes["index ^ 2"] = (i ^ 2, size, hashes[i], proof, r)
        if proof:
            probes["truncated"] = (i, size, hashes[i], proof[:-1], r)
            probes["one hash replaced"] = (i, size, hashes[i], [*proof[:-1], other_root], r)
        if i < size // 2:
            probes["size halved"] = (i, size // 2, hashes[i], proof, r)
        for k in range(len(proof)):
            probes[f"sibling {k} flipped"] = (i, size, hashes[i], [*proof[:k], flip(proof[k]), *proof[k + 1:]], r)
        for name, probe in probes.items():
            ours, _ = incl_both(*probe)
            assert not ours.ok, (name, i, size)
            if name.startswith("sibling") or name in ("root from another tree", "swapped leaf"):
                assert ours.reason == "root_mismatch", (name, ours)
                assert ours.expected == probe[4].hex() and ours.actual != ours.expected
            if name.startswith(("extended", "truncated")):
                assert ours.reason == "wrong_length", (name, ours)


@pytest.mark.parametrize("new", TAMPER_SIZES)
def test_tampered_consistency_proofs_are_refused(new: int) -> None:
    hashes = hashes_of(data(new))
    other = hashes_of(data(new, b"other log"))
    roots = [merkle_root(hashes[:m]) for m in range(new + 1)]
    other_roots = [merkle_root(other[:m]) for m in range(new + 1)]
    for old in range(1, new):
        proof = consistency_proof(old, new, accessor(hashes))
        r1, r2 = roots[old], roots[new]
        probes: dict[str, tuple[Any, ...]] = {
            "old root from another tree": (old, new, other_roots[old], r2, proof),
            "new root from another tree": (old, new, r1, other_roots[new], proof),
            "a fork: both roots from another tree": (old, new, other_roots[old], other_roots[new], proof),
            "swapped roots": (old, new, r2, r1, proof),
            "sizes swapped": (new, old, r1, r2, proof),
            "empty proof": (old, new, r1, r2, []),
            "truncated": (old, new, r1, r2, proof[:-1]),
            "extended": (old, new, r1, r2, [*proof, r2]),
            "extended at the front": (old, new, r1, r2, [proof[0], *proof]),
            "old size + 1": (old + 1, new, r1, r2, proof),
            "old size - 1": (old - 1, new, r1, r2, proof),
            "new size doubled": (old, new * 2, r1, r2, proof),
            "old size ^ 2": (old ^ 2, new, r1, r2, proof),
        }
        for k in range(len(proof)):
            probes[f"hash {k} flipped"] = (old, new, r1, r2, [*proof[:k], flip(proof[k], 4), *proof[k + 1:]])
        for name, probe in probes.items():
            ours, _ = cons_both(*probe)
            assert not ours.ok, (name, old, new)
            if name.startswith("hash") or "another tree" in name:
                assert ours.reason == "root_mismatch", (name, ours)
            if name in ("truncated", "extended", "empty proof", "extended at the front"):
                assert ours.reason == "wrong_length", (name, ours)
            if name == "sizes swapped":
                assert ours.reason == "out_of_range", ours


def test_the_trivial_consistency_cases_still_check_the_roots() -> None:
    hashes = hashes_of(data(3))
    r = merkle_root(hashes)
    assert cons_both(0, 3, EMPTY_ROOT, r, [])[0].ok
    assert cons_both(3, 3, r, r, [])[0].ok
    assert cons_both(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])[0].ok
    assert cons_both(0, 3, r, r, [])[0].reason == "root_mismatch"  # size 0 has only the empty root
    assert cons_both(3, 3, r, EMPTY_ROOT, [])[0].reason == "root_mismatch"  # a fork at equal size
    assert cons_both(3, 3, r, r, [r])[0].reason == "wrong_length"
    assert cons_both(0, 3, EMPTY_ROOT, r, [EMPTY_ROOT])[0].reason == "wrong_length"


def test_a_root_means_nothing_without_its_size() -> None:
    """Documented limit: a proof's shape fixes the size only up to neighbours that share it, so the
    size must come from the same signed checkpoint as the root (as C2SP tlog-checkpoint has it)."""
    hashes = hashes_of(data(3))
    r3 = merkle_root(hashes)
    proof = inclusion_proof(0, 3, accessor(hashes))
    assert incl_both(0, 4, hashes[0], proof, r3)[0].ok  # index 0 of 3 and of 4: the same two levels
    assert cons_both(1, 4, merkle_root(hashes[:1]), r3, consistency_proof(1, 3, accessor(hashes)))[0].ok


H = leaf_hash(b"x")
HOSTILE_INCLUSION: dict[str, tuple[Any, ...]] = {
    "index past the size": (5, 5, H, [], H),
    "index at a size 0": (0, 0, H, [], H),
    "negative index": (-1, 5, H, [], H),
    "a bool for an index": (True, 2, H, [H], H),
    "a float size": (0, 1.0, H, [], H),
    "a string index": ("0", 1, H, [], H),
    "a huge size": (0, 2**200, H, [], H),
    "a 31-byte leaf": (0, 1, H[:31], [], H),
    "a 33-byte root": (0, 1, H, [], H + b"\x00"),
    "a str root": (0, 1, H, [], H.hex()),
    "a None proof": (0, 1, H, None, H),
    "a bytes proof": (0, 2, H, H, H),
    "a str in the proof": (0, 2, H, [H.hex()], H),
    "an empty hash in the proof": (0, 2, H, [b""], H),
    "a bytearray in the proof": (0, 2, H, [bytearray(H)], H),
}
HOSTILE_CONSISTENCY: dict[str, tuple[Any, ...]] = {
    "old larger than new": (5, 4, H, H, [H]),
    "negative old": (-1, 4, H, H, [H]),
    "a bool size": (False, 1, EMPTY_ROOT, H, []),
    "a None size": (None, 1, H, H, []),
    "a huge new size": (1, 2**200, H, H, [H]),
    "a short old root": (1, 2, H[:16], H, [H]),
    "a None root": (1, 2, H, None, [H]),
    "a tuple of junk": (1, 2, H, H, (1, 2)),
    "a dict proof": (1, 2, H, H, {"a": H}),
}


@pytest.mark.parametrize("probe", HOSTILE_INCLUSION.values(), ids=HOSTILE_INCLUSION.keys())
def test_hostile_inclusion_input_gets_a_verdict(probe: tuple[Any, ...]) -> None:
    ours, theirs = incl_both(*probe)
    assert not ours.ok and ours.reason in ("bad_input", "out_of_range", "wrong_length") and theirs["detail"]
    assert "\n" not in (ours.detail or "") and json.dumps(ours.to_json())


@pytest.mark.parametrize("probe", HOSTILE_CONSISTENCY.values(), ids=HOSTILE_CONSISTENCY.keys())
def test_hostile_consistency_input_gets_a_verdict(probe: tuple[Any, ...]) -> None:
    ours, theirs = cons_both(*probe)
    assert not ours.ok and ours.reason in ("bad_input", "out_of_range", "wrong_length") and theirs["detail"]
    assert "\n" not in (ours.detail or "") and json.dumps(ours.to_json())


# -- properties -----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 600).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n))),
       st.integers(0, 255))
def test_random_trees_prove_and_refuse(case: tuple[int, int, int], bit: int) -> None:
    size, index, old = case
    hashes = hashes_of(data(size))
    r = merkle_root(hashes)
    proof = inclusion_proof(index, size, accessor(hashes))
    assert incl_both(index, size, hashes[index], proof, r)[0].ok
    if proof:  # any single flipped bit anywhere in the proof is caught
        k, b = bit % len(proof), bit % 8
        bad = [*proof[:k], bytes([proof[k][0] ^ (1 << b)]) + proof[k][1:], *proof[k + 1:]]
        assert incl_both(index, size, hashes[index], bad, r)[0].reason == "root_mismatch"
    cproof = consistency_proof(old, size, accessor(hashes))
    old_root = merkle_root(hashes[:old])
    assert cons_both(old, size, old_root, r, cproof)[0].ok
    if cproof:
        assert not cons_both(old, size, old_root, flip(r, bit % 8), cproof)[0].ok
        assert not cons_both(old, size, old_root, r, cproof[1:])[0].ok


# -- on a real ledger: leaf i is line i without its newline ------------------------------------------------


def test_a_record_of_a_real_ledger_is_proven_by_the_standalone_tool(make_ledger: Any) -> None:
    made = make_ledger(9)
    lines = made.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 11  # genesis, nine records, and the final newline
    lines = lines[:-1]
    hashes = [leaf_hash(line) for line in lines]
    r = merkle_root(hashes)
    old_root = merkle_root(hashes[:4])
    for seq in (0, 6, 9):
        proof = inclusion_proof(seq, len(lines), accessor(hashes))
        # the auditor holds the one line, the proof and the root: nothing else of the ledger
        assert tool.merkle_verify_inclusion(seq, len(lines), tool.merkle_leaf(lines[seq]), proof, r)["ok"]
        assert not tool.merkle_verify_inclusion(seq, len(lines), tool.merkle_leaf(lines[seq] + b"\n"), proof, r)["ok"]
    cproof = consistency_proof(4, len(lines), accessor(hashes))
    assert tool.merkle_verify_consistency(4, len(lines), old_root, r, cproof)["ok"]
    rewritten = [*lines[:2], lines[2].replace(b'"i":1', b'"i":7'), *lines[3:]]
    assert rewritten != lines
    forged = [leaf_hash(line) for line in rewritten]
    verdict = tool.merkle_verify_consistency(4, len(lines), old_root, merkle_root(forged),
                                             consistency_proof(4, len(lines), accessor(forged)))
    assert verdict["reason"] == "root_mismatch"


def test_the_documented_worked_example() -> None:
    """docs/ledger-format.md section 12 states the tree of section 8's three lines: recompute it."""
    doc = (ROOT / "docs" / "ledger-format.md").read_text()
    example = doc[doc.index("## 8. Worked example"):doc.index("## 9. Seals")]
    section = doc[doc.index("## 12. The Merkle tree"):doc.index("\n## ", doc.index("## 12. The Merkle tree"))]
    jsonl = next(body for lang, body in re.findall(r"```(\w*)\n(.*?)```", example, re.DOTALL) if lang == "jsonl")
    lines = [line.encode() for line in jsonl.split("\n")[:-1]]
    stated = re.findall(r"`([0-9a-f]{64})`", section)
    assert len(lines) == 3 and len(stated) == 5
    hashes = [leaf_hash(line) for line in lines]
    assert [h.hex() for h in hashes] == stated[:3]
    assert [merkle_root(hashes[:2]).hex(), merkle_root(hashes).hex()] == stated[3:]
    assert inclusion_proof(1, 3, accessor(hashes)) == [hashes[0], hashes[2]]
    assert consistency_proof(2, 3, accessor(hashes)) == [hashes[2]]
    assert tool.merkle_verify_inclusion(1, 3, tool.merkle_leaf(lines[1]), [hashes[0], hashes[2]],
                                        bytes.fromhex(stated[4]))["ok"]
    assert tool.merkle_verify_consistency(2, 3, bytes.fromhex(stated[3]), bytes.fromhex(stated[4]), [hashes[2]])["ok"]


def test_the_twin_runs_on_the_standard_library_alone() -> None:
    """-I -S: no site-packages; the tool's Merkle verifiers load and verify a published vector."""
    case = VECTORS["inclusion"][1]
    script = (
        "import runpy, sys; t = runpy.run_path(sys.argv[1], run_name='twin'); h = bytes.fromhex;"
        f" v = t['merkle_verify_inclusion']({case['index']}, {case['size']},"
        f" t['merkle_leaf'](h('{VECTORS['leaves'][case['index']]}')), [h(p) for p in {case['proof']!r}],"
        f" h('{VECTORS['roots'][case['size'] - 1]}')); print(v['ok'])"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(TOOL)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


def test_a_frontier_gives_the_root_at_every_size_and_resumes_from_its_perfect_subtrees() -> None:
    leaves = data(70)
    hashes = hashes_of(leaves)
    frontier = Frontier()
    assert frontier.root() == EMPTY_ROOT
    for n, h in enumerate(hashes, start=1):
        frontier.push(h)
        assert (frontier.size, frontier.root()) == (n, mth(leaves[:n]))
        subtrees = [merkle_root(hashes[lo:hi]) for lo, hi in perfect_ranges(0, n)]
        resumed = Frontier.of(subtrees, n)
        if n < len(hashes):
            resumed.push(hashes[n])
            assert resumed.root() == mth(leaves[: n + 1])
    with pytest.raises(ValueError, match="perfect subtrees"):
        Frontier.of([hashes[0]], 3)


def test_every_range_a_proof_names_is_its_perfect_subtrees_folded() -> None:
    hashes = hashes_of(data(40))
    asked: set[tuple[int, int]] = set()

    def recording(lo: int, hi: int) -> bytes:
        asked.add((lo, hi))
        return merkle_root(hashes[lo:hi])

    for n in range(1, 41):
        for i in range(n):
            inclusion_proof(i, n, recording)
        for m in range(n + 1):
            consistency_proof(m, n, recording)
    for lo, hi in asked:
        parts = [merkle_root(hashes[a:b]) for a, b in perfect_ranges(lo, hi)]
        assert all((b - a) & (b - a - 1) == 0 for a, b in perfect_ranges(lo, hi))
        folded = parts[-1]
        for part in reversed(parts[:-1]):
            folded = node_hash(part, folded)
        assert folded == merkle_root(hashes[lo:hi]), (lo, hi)
