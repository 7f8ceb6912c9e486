"""The standard-library tool and the package agree on the Merkle tree of a ledger: the signed tree
heads in its checkpoint records and the one the auditor holds (rules 8, 10 and 12 of the spec's
section 5), the witnesses' cosignatures (k of n, exit 6), and receipts and consistency proofs
checked without the ledger (section 14), on real ledgers, proofs and cosignatures and on every
forgery of them here. Verdicts are compared whole, as JSON, and so are the two command lines."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.cli import cli
from ledger import (
    COSIGNED_KIND,
    EMPTY_ROOT,
    AddCheckpoint,
    LedgerWriter,
    ReceiptVerdict,
    SignedCheckpoint,
    TreeHead,
    Vkey,
    add_signature_lines,
    append_checkpoint,
    check_extension,
    check_receipt,
    consistency_proof,
    cosign,
    cosigner_vkey,
    ed25519_vkey,
    leaf_hash,
    merkle_root,
    origin_of,
    prove_extension,
    prove_record,
    sign_note,
    tree_head_of,
    verify_file,
)
from ledger.merkle import from_leaves
from ledger.record import parse_line, seal
from tests.conftest import Made
from tests.standalone import TOOL, verifier
from tests.test_tree_heads import lines, resign, resign_without_tree
from tests.test_verifier_parity import STDLIB_ONLY, run_tool

tool = verifier("verify_ledger_tree_twin")
WITNESS_KEYS = {name: Ed25519PrivateKey.generate() for name in ("a", "b", "c", "d")}
WITNESS = {name: cosigner_vkey(f"w.example/{name}", key.public_key()) for name, key in WITNESS_KEYS.items()}
TIME = 1_768_467_600


@dataclass
class Log:
    """A ledger with two signed tree heads, records after each, and witnesses' cosignatures."""

    made: Made
    first: SignedCheckpoint
    second: SignedCheckpoint

    @property
    def path(self) -> Path:
        return self.made.path

    @property
    def vkey(self) -> Vkey:
        return ed25519_vkey(tree_head_of(self.note(1)).origin, self.made.public_key)

    def note(self, which: int) -> str:
        tlog = (self.first if which == 1 else self.second).tlog
        assert tlog is not None
        return tlog

    def head(self, which: int) -> TreeHead:
        return tree_head_of(self.note(which))

    def cosign(self, witness: str, which: int) -> str:
        key, vkey = WITNESS_KEYS[witness], WITNESS[witness]
        return cosign(self.head(which).text(), vkey.name, key, TIME + which)

    def record_cosignature(self, witness: str, which: int, line: str | None = None, size: int | None = None) -> None:
        """A ledger.cosigned record as `anticloud ledger add-cosignature` writes it."""
        head = self.head(which)
        with LedgerWriter.open(self.path) as writer:
            writer.append(COSIGNED_KIND, {
                "witness": WITNESS[witness].name, "vkey": WITNESS[witness].encode(), "size": size or head.size,
                "root": base64.b64encode(head.root).decode(), "checkpoint_seq": head.size,
                "time": TIME + which, "cosignature": line or self.cosign(witness, which)})


def build(make_ledger: Callable[..., Made], cosigned: bool = False) -> Log:
    made = make_ledger(6)
    with LedgerWriter.open(made.path) as writer:
        first = append_checkpoint(writer, made.key)
        for i in range(5):
            writer.append("test.after", {"i": i})
        second = append_checkpoint(writer, made.key)
        for i in range(3):
            writer.append("test.tail", {"i": i})
    log = Log(made, first, second)
    if cosigned:
        log.record_cosignature("a", 1)
        log.record_cosignature("a", 2)
        log.record_cosignature("b", 1)
        log.record_cosignature("d", 2)  # a witness the auditor does not name
        forged = log.cosign("c", 2)
        log.record_cosignature("c", 2, line=forged[:-10] + ("A" if forged[-10] != "A" else "B") + forged[-9:])
        log.record_cosignature("b", 2, size=999)  # names no signed tree head
    return log


def both(path: Path, *, signed: SignedCheckpoint | None = None, pubkey: bytes | None = None,
         note: str | None = None, jobs: int = 1, checked: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = verify_file(path, checkpoint=signed, public_key=pubkey, tree_head=note, jobs=jobs,
                       **({} if checked else {"check_signature": None})).to_json()
    cp = (signed.to_json()["checkpoint"], signed.signature) if signed else None
    theirs = tool.verify(str(path), cp, pubkey, tool.signature_checker if checked else lambda: None,
                         tree_head=note or (signed.tlog if signed else None))
    return ours, theirs


def _edit_checkpoint(which: int, tlog: Callable[[Log], Any]) -> Callable[[Log], dict[str, Any]]:
    """The ``which``-th checkpoint record's tlog replaced, every hash after it recomputed."""
    def case(log: Log) -> dict[str, Any]:
        seq = (log.first if which == 1 else log.second).checkpoint.seq + 1
        forged = tlog(log)
        resign_without_tree(log.path, lambda s, d: {**d, "tlog": forged} if s == seq else d)
        return {}
    return case


def _signed(log: Log, head: TreeHead, key: Ed25519PrivateKey | None = None) -> str:
    return sign_note(head.text(), head.origin, key or log.made.key)


def _zero_signature(note: str) -> str:
    text, _, line = note.rpartition("\n\n")
    prefix, _, blob = line.rstrip("\n").rpartition(" ")
    return f"{text}\n\n{prefix} {base64.b64encode(base64.b64decode(blob)[:4] + bytes(64)).decode()}\n"


def _rewrite_below(held: int) -> Callable[[Log], dict[str, Any]]:
    """The insider with the appliance key rewrites record 3 and re-signs everything, tree heads included."""
    def case(log: Log) -> dict[str, Any]:
        note = log.note(held)
        resign(log.path, log.made.key, lambda seq, data: {**data, "rewritten": True} if seq == 3 else data)
        return {"note": note}
    return case


def _cut(keep: Callable[[Log], int], torn: bool = False) -> Callable[[Log], list[bytes]]:
    def cut(log: Log) -> list[bytes]:
        kept = lines(log.path)[:keep(log)]
        log.path.write_bytes(b"".join(line + b"\n" for line in kept) + (b'{"data":' if torn else b""))
        return kept
    return cut


def _truncated(log: Log) -> dict[str, Any]:
    _cut(lambda lg: lg.head(1).size + 2)(log)
    return {"note": log.note(2)}


def _whole_file_rewritten(log: Log) -> dict[str, Any]:
    """A held head of exactly the whole file, whose last record is then edited: checked at the end."""
    size = log.head(2).size
    _cut(lambda lg: size)(log)
    resign_without_tree(log.path, lambda seq, data: {**data, "x": 1} if seq == size - 1 else data)
    return {"note": log.note(2)}


def _other_ledger(log: Log) -> dict[str, Any]:
    path = log.path.with_name("other.jsonl")
    from tests.conftest import genesis_for
    with LedgerWriter.create(path, genesis_for(log.made.key)) as writer:
        writer.append("test.event", {})
        signed = append_checkpoint(writer, log.made.key)
    return {"signed": signed}


# name -> (what the case does to the ledger, returning the auditor's inputs; the verdict, the reason,
# the seq of the fault). Every one is verified by both, serially and in parallel, and compared whole.
TREE_CASES: dict[str, tuple[Callable[[Log], dict[str, Any]], str, str | None, Callable[[Log], int] | None]] = {
    "good": (lambda log: {}, "intact", None, None),
    "good_held_note": (lambda log: {"note": log.note(1)}, "intact", None, None),
    "good_held_document": (lambda log: {"signed": log.second}, "intact", None, None),
    "good_held_size_0": (lambda log: {"note": _signed(log, TreeHead(log.head(1).origin, 0, EMPTY_ROOT))},
                         "intact", None, None),
    "torn_after_held": (lambda log: (_cut(lambda lg: 20, torn=True)(log), {"note": log.note(2)})[1], "torn",
                        None, None),
    "insider_signs_a_wrong_root": (_edit_checkpoint(2, lambda log: _signed(log, TreeHead(
        log.head(2).origin, log.head(2).size, bytes(32)))), "broken", "tree_mismatch", lambda log: log.head(2).size),
    "another_origin": (_edit_checkpoint(1, lambda log: _signed(log, TreeHead(
        origin_of("0" * 32), log.head(1).size, log.head(1).root), None)), "broken", "checkpoint_mismatch",
        lambda log: log.head(1).size),
    "another_size": (_edit_checkpoint(1, lambda log: _signed(log, TreeHead(
        log.head(1).origin, log.head(1).size - 1, log.head(1).root))), "broken", "checkpoint_mismatch",
        lambda log: log.head(1).size),
    "another_key": (_edit_checkpoint(1, lambda log: _signed(log, log.head(1), Ed25519PrivateKey.generate())),
                    "broken", "bad_signature", lambda log: log.head(1).size),
    "signature_zeroed": (_edit_checkpoint(1, lambda log: _zero_signature(log.note(1))), "broken", "bad_signature",
                         lambda log: log.head(1).size),
    "extension_line": (_edit_checkpoint(1, lambda log: _signed(log, TreeHead(
        log.head(1).origin, log.head(1).size, log.head(1).root, ("ext",)))), "broken", "checkpoint_mismatch",
        lambda log: log.head(1).size),
    "not_a_note": (_edit_checkpoint(1, lambda log: "anticloud\n"), "broken", "invalid_record",
                   lambda log: log.head(1).size),
    "empty_tlog": (_edit_checkpoint(1, lambda log: ""), "broken", "invalid_record", lambda log: log.head(1).size),
    "tlog_not_text": (_edit_checkpoint(1, lambda log: 7), "broken", "invalid_record", lambda log: log.head(1).size),
    "insider_rewrite_alone": (lambda log: (_rewrite_below(1)(log), {})[1], "intact", None, None),
    "insider_rewrite_below_held": (_rewrite_below(1), "broken", "tree_mismatch", lambda log: log.head(1).size),
    "insider_rewrite_below_held_document": (lambda log: {"signed": log.first, **_rewrite_below(1)(log),
                                                         "note": None},
                                            "broken", "checkpoint_mismatch", lambda log: log.first.checkpoint.seq),
    "truncated_below_held": (_truncated, "broken", "truncated_below_checkpoint", lambda log: log.head(2).size - 1),
    "held_of_whole_file_rewritten": (_whole_file_rewritten, "broken", "tree_mismatch",
                                     lambda log: log.head(2).size),
    "held_wrong_root_at_size_0": (lambda log: {"note": _signed(log, TreeHead(log.head(1).origin, 0, bytes(32)))},
                                  "broken", "tree_mismatch", lambda log: 0),
    "held_another_key": (lambda log: {"note": _signed(log, log.head(1), Ed25519PrivateKey.generate())},
                         "broken", "bad_signature", lambda log: 0),
    "held_another_origin": (lambda log: {"note": _signed(log, TreeHead(origin_of("1" * 32), 3, bytes(32)))},
                            "broken", "checkpoint_mismatch", lambda log: 0),
    "held_with_another_pubkey": (lambda log: {"note": log.note(1), "pubkey": bytes(32)}, "broken", "key_mismatch",
                                 lambda log: 0),
    "held_document_of_another_ledger": (_other_ledger, "broken", "checkpoint_mismatch", lambda log: 0),
}


@pytest.mark.parametrize("name", sorted(TREE_CASES))
def test_both_verifiers_check_tree_heads_alike(make_ledger: Callable[..., Made], name: str) -> None:
    log = build(make_ledger)
    change, status, reason, seq = TREE_CASES[name]
    inputs = change(log)
    for jobs in (1, 2):
        ours, theirs = both(log.path, jobs=jobs, **inputs)
        assert ours == theirs, jobs
    assert (ours["verdict"], ours["fault"] and ours["fault"]["reason"]) == (status, reason), ours["fault"]
    if seq is not None:
        assert ours["fault"]["seq"] == seq(log)
    if reason is None:
        leaves = [leaf_hash(line) for line in lines(log.path)]
        assert ours["tree"] == {"size": len(leaves), "root": merkle_root(leaves).hex()}
        assert ours["tree_head"] is None or ours["tree_head"]["matched"]
    if inputs.get("note") or inputs.get("signed"):
        assert ours["tree_head"] is not None or ours["fault"]["seq"] == 0
    # Without Ed25519 (the tool without cryptography): the same verdict where no signature decides it,
    # and never a pass where one was left unchecked.
    ours, theirs = both(log.path, checked=False, **inputs)
    assert ours == theirs
    assert ours["verdict"] in ("unchecked", "broken")


def test_the_tool_finds_a_wrong_root_where_the_insider_signed_it(make_ledger: Callable[..., Made]) -> None:
    log = build(make_ledger)
    TREE_CASES["insider_signs_a_wrong_root"][0](log)
    verdict = tool.verify(str(log.path), None, None)
    fault = verdict["fault"]
    assert (fault["reason"], fault["seq"], fault["line"], fault["expected"]) == (
        "tree_mismatch", log.head(2).size, log.head(2).size + 1, "00" * 32)
    assert fault["detail"] == f"the signed tree head is not the Merkle root of the {log.head(2).size} records before it"
    assert verdict["tree"] is None and verdict["records"] == log.head(2).size


def test_a_tree_head_held_in_a_file_catches_the_rewrite_from_the_command_line(make_ledger: Callable[..., Made],
                                                                               tmp_path: Path) -> None:
    log = build(make_ledger)
    held = tmp_path / "held.note"
    held.write_text(log.note(1))
    document = tmp_path / "held.json"
    document.write_bytes(log.first.to_bytes())
    for given in (held, document):
        code, doc = twin_json(str(log.path), "--checkpoint", str(given))
        assert (code, doc["tree_head"]["matched"]) == (0, True)
    _rewrite_below(1)(log)
    assert twin_json(str(log.path))[0] == 0  # alone, it looks sound
    code, doc = twin_json(str(log.path), "--checkpoint", str(held))
    assert code == 1 and doc["fault"]["reason"] == "tree_mismatch" and "rewritten below it" in doc["fault"]["detail"]
    held.write_text("not a checkpoint\n")
    run = run_tool(log.path, "--checkpoint", held)
    assert run.returncode == 2 and "neither a checkpoint document nor a tlog checkpoint" in run.stderr


def test_without_cryptography_a_held_tree_head_is_a_signature_not_checked(make_ledger: Callable[..., Made],
                                                                          tmp_path: Path) -> None:
    log = build(make_ledger)
    _cut(lambda lg: lg.head(1).size)(log)  # no checkpoint record left: only the held head is signed
    held = tmp_path / "held.note"
    held.write_text(_zero_signature(log.note(1)))
    run = run_tool(log.path, "--checkpoint", held)
    assert run.returncode == 5, run.stdout + run.stderr
    assert run.stdout.startswith("SIGNATURES NOT CHECKED: ") and "1 signature(s)" in run.stdout


# -- witnesses over a whole ledger: the tool and `anticloud verify ledger` print the same report --------------


def twin_json(*args: str) -> tuple[int, dict[str, Any]]:
    code, out = twin(*args, "--json")
    return code, json.loads(out)


def twin(*args: str) -> tuple[int, str]:
    """The tool's main() in this process (cryptography importable), its exit code and its output."""
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = tool.main(list(args))
    return code, out.getvalue()


def appliance(*args: str, home: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.output


WITNESS_SETS: dict[str, tuple[list[str], int | None, bool, int, int]] = {
    # name: (witnesses given, --quorum, hold the second head cosigned by c, exit code, witnessed size's head)
    "one_who_cosigned_both": (["a"], None, False, 0, 2),
    "two_of_two": (["a", "b"], None, False, 0, 1),
    "one_of_two": (["a", "b"], 1, False, 0, 2),
    "three_of_three_one_silent": (["a", "b", "c"], None, False, 6, 0),
    "two_of_three": (["a", "b", "c"], 2, False, 0, 1),
    "three_of_three_with_the_held_cosignature": (["a", "b", "c"], None, True, 0, 1),
    "the_unnamed_witness_alone": (["c"], None, False, 6, 0),
}


@pytest.mark.parametrize("name", sorted(WITNESS_SETS))
def test_both_report_the_same_witnesses(make_ledger: Callable[..., Made], tmp_path: Path, name: str) -> None:
    given, quorum, hold, code, head = WITNESS_SETS[name]
    log = build(make_ledger, cosigned=True)
    args = [str(log.path), *[a for w in given for a in ("--witness", WITNESS[w].encode())],
            *(["--quorum", str(quorum)] if quorum else [])]
    if hold:
        held = tmp_path / "cosigned.note"
        held.write_text(add_signature_lines(log.note(2), log.cosign("c", 2)))
        args += ["--checkpoint", str(held)]
    ours_code, ours = appliance("verify", "ledger", *args, "--json", home=tmp_path / "home")
    theirs_code, theirs = twin(*args, "--json")
    assert (ours_code, json.loads(ours)) == (theirs_code, json.loads(theirs))
    report = json.loads(theirs)["witnesses"]
    assert theirs_code == code and report["witnessed_size"] == (log.head(head).size if head else 0)
    # recorded: a on both heads, b on the first, d (never given) and a forgery "by c" on the second,
    # and one by b naming no signed tree head
    assert report["unknown"] == sum(w not in given for w in ("a", "a", "b", "d", "c"))
    assert len(report["invalid"]) == 1 + ("c" in given), report["invalid"]
    assert appliance("verify", "ledger", *args, home=tmp_path / "home") == twin(*args)  # the human report too


def test_a_witness_report_is_only_made_for_a_ledger_that_is_not_broken(make_ledger: Callable[..., Made],
                                                                       tmp_path: Path) -> None:
    log = build(make_ledger, cosigned=True)
    log.path.write_bytes(log.path.read_bytes().replace(b'"i":2', b'"i":3', 1))
    args = [str(log.path), "--witness", WITNESS["a"].encode(), "--json"]
    code, doc = twin_json(*args[:-1])
    assert code == 1 and "witnesses" not in doc
    assert appliance("verify", "ledger", *args, home=tmp_path / "home")[0] == 1


def test_without_cryptography_no_cosignature_counts_and_the_verdict_says_so(make_ledger: Callable[..., Made]) -> None:
    log = build(make_ledger, cosigned=True)
    run = run_tool(log.path, "--witness", WITNESS["a"].encode(), "--witness", WITNESS["b"].encode())
    assert run.returncode == 5 and run.stdout.startswith("SIGNATURES NOT CHECKED: "), run.stdout + run.stderr
    assert "  witnesses         NOT CHECKED: 3 cosignature(s) by the witnesses given were not verified" in run.stdout
    report = json.loads(run_tool(log.path, "--witness", WITNESS["a"].encode(), "--json").stdout)["witnesses"]
    assert (report["met"], report["not_checked"], report["cosigned"]) == (False, 2, {WITNESS["a"].encode(): 0})


@pytest.mark.parametrize("args", [["--quorum", "2", "--witness", "W"], ["--quorum", "0", "--witness", "W"],
                                  ["--quorum", "1"], ["--witness", "not-a-vkey"], ["--vkey", "W"],
                                  ["--from", "x.note"]])
def test_bad_witness_arguments_are_usage_errors(make_ledger: Callable[..., Made], args: list[str]) -> None:
    log = build(make_ledger)
    run = run_tool(log.path, *[WITNESS["a"].encode() if a == "W" else a for a in args])
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.strip(), run.stderr


# -- receipts and consistency proofs, without the ledger ---------------------------------------------------


def check_both(raw: bytes, vkey: Vkey, witnesses: tuple[str, ...] = (), quorum: int = 0,
               old: str | None = None) -> dict[str, Any]:
    keys = [WITNESS[w] for w in witnesses]
    ours = (check_extension(raw, old, vkey, keys, quorum) if old is not None
            else check_receipt(raw, vkey, keys, quorum)).to_json()
    twin_keys = [tool.parse_vkey(k.encode()) for k in keys]
    check = tool.signature_checker()
    theirs = (tool.check_extension(raw, old, tool.parse_vkey(vkey.encode()), twin_keys, quorum, check)
              if old is not None else tool.check_receipt(raw, tool.parse_vkey(vkey.encode()), twin_keys, quorum, check))
    assert ours == theirs
    return ours


def _proof_lines(raw: bytes, edit: Callable[[list[str]], list[str]]) -> bytes:
    head, _, note = raw.decode().partition("\n\n")
    return ("\n".join(edit(head.split("\n"))) + "\n\n" + note).encode()


def _flip_hash(at: int) -> Callable[[list[str]], list[str]]:
    def edit(header: list[str]) -> list[str]:
        hashes = [i for i, line in enumerate(header) if len(line) == 44]
        raw = bytearray(base64.b64decode(header[hashes[at]]))
        raw[5] ^= 1
        return [base64.b64encode(bytes(raw)).decode() if i == hashes[at] else x for i, x in enumerate(header)]
    return edit


def _swap_extra(log: Log, seq: int, edit: Callable[[dict[str, Any]], dict[str, Any]] = lambda d: d) -> Callable[
        [list[str]], list[str]]:
    record = parse_line(lines(log.path)[seq])
    _, line = seal(record.seq, record.kind, edit(record.data), record.prev, record.ts)
    extra = "extra " + base64.b64encode(line.rstrip(b"\n")).decode()
    return lambda header: [extra if x.startswith("extra ") else x for x in header]


def _forge_cosignature(raw: bytes, witness: str) -> bytes:
    """The witness's cosignature line with one bit of its signature flipped (key id and time kept)."""
    out = []
    for line in raw.decode().split("\n"):
        if line.startswith(f"\u2014 {WITNESS[witness].name} "):
            prefix, _, blob = line.rpartition(" ")
            sig = bytearray(base64.b64decode(blob))
            sig[30] ^= 1
            line = f"{prefix} {base64.b64encode(bytes(sig)).decode()}"
        out.append(line)
    return "\n".join(out).encode()


def _resigned_checkpoint(log: Log, change: Callable[[TreeHead], TreeHead], key: Ed25519PrivateKey | None = None,
                         raw: bytes = b"") -> bytes:
    head, _, _ = raw.decode().partition("\n\n")
    forged = change(log.head(2))
    return (head + "\n\n" + sign_note(forged.text(), forged.origin, key or log.made.key)).encode()


RECEIPTS: dict[str, tuple[Callable[[Log, bytes], bytes], tuple[str, ...], int, str | None]] = {
    # name: (how the receipt for record 3 is changed, witnesses given, quorum, the reason)
    "good": (lambda log, raw: raw, (), 0, None),
    "good_cosigned": (lambda log, raw: raw, ("a",), 1, None),
    "good_one_of_two": (lambda log, raw: raw, ("a", "b"), 1, None),
    "missing_cosignature_under_quorum": (lambda log, raw: raw, ("a", "b"), 2, "unwitnessed"),
    "forged_cosignature": (lambda log, raw: _forge_cosignature(raw, "a"), ("a",), 1, "unwitnessed"),
    "wrong_sibling": (lambda log, raw: _proof_lines(raw, _flip_hash(0)), (), 0, "not_included"),
    "wrong_last_sibling": (lambda log, raw: _proof_lines(raw, _flip_hash(-1)), (), 0, "not_included"),
    "sibling_missing": (lambda log, raw: _proof_lines(raw, lambda h: h[:-1]), (), 0, "not_included"),
    "wrong_index": (lambda log, raw: raw.replace(b"\nindex 3\n", b"\nindex 4\n"), (), 0, "wrong_record"),
    "index_and_record_of_another": (lambda log, raw: _proof_lines(raw.replace(b"\nindex 3\n", b"\nindex 4\n"),
                                                                  _swap_extra(log, 4)), (), 0, "not_included"),
    "swapped_record": (lambda log, raw: _proof_lines(raw, _swap_extra(log, 4)), (), 0, "wrong_record"),
    "edited_record": (lambda log, raw: _proof_lines(raw, _swap_extra(log, 3, lambda d: {**d, "i": 99})), (), 0,
                      "not_included"),
    "record_not_a_record": (lambda log, raw: _proof_lines(raw, lambda h: [
        "extra " + base64.b64encode(b'{"a":1}').decode() if x.startswith("extra ") else x for x in h]), (), 0,
        "malformed"),
    "no_record": (lambda log, raw: _proof_lines(raw, lambda h: [x for x in h if not x.startswith("extra ")]), (), 0,
                  "malformed"),
    "wrong_size_edited": (lambda log, raw: raw.replace(f"\n{log.head(2).size}\n".encode(),
                                                       f"\n{log.head(2).size + 1}\n".encode()), (), 0,
                          "bad_signature"),
    "wrong_size_signed_by_the_insider": (lambda log, raw: _resigned_checkpoint(
        log, lambda h: TreeHead(h.origin, 8, h.root), raw=raw), (), 0, "not_included"),
    "checkpoint_signed_by_another_key": (lambda log, raw: _resigned_checkpoint(
        log, lambda h: h, Ed25519PrivateKey.generate(), raw=raw), (), 0, "bad_signature"),
    "checkpoint_from_another_log": (lambda log, raw: _resigned_checkpoint(
        log, lambda h: TreeHead(origin_of("2" * 32), h.size, h.root), raw=raw), (), 0, "wrong_log"),
    "not_a_proof": (lambda log, raw: b"c2sp.org/tlog-proof@v2\n" + raw.split(b"\n", 1)[1], (), 0, "malformed"),
    "garbage": (lambda log, raw: b"\xff\x00", (), 0, "malformed"),
}


@pytest.fixture
def receipt_log(make_ledger: Callable[..., Made]) -> tuple[Log, bytes]:
    log = build(make_ledger, cosigned=True)
    return log, prove_record(log.path, 3).encode()


@pytest.mark.parametrize("name", sorted(RECEIPTS))
def test_both_check_receipts_alike(receipt_log: tuple[Log, bytes], name: str) -> None:
    log, good = receipt_log
    change, witnesses, quorum, reason = RECEIPTS[name]
    raw = change(log, good)
    assert raw != good or reason is None or reason == "unwitnessed"
    verdict = check_both(raw, log.vkey, witnesses, quorum)
    assert (verdict["ok"], verdict["reason"]) == (reason is None, reason), verdict
    if reason is None:
        assert verdict["record"] == parse_line(lines(log.path)[3]).to_json()
        assert verdict["size"] == log.head(2).size and verdict["witnesses"] == [WITNESS[w].name for w in witnesses
                                                                                 if w == "a"]


def test_a_receipt_from_another_log_names_the_other_log(receipt_log: tuple[Log, bytes],
                                                        make_ledger: Callable[..., Made]) -> None:
    log, good = receipt_log
    other = build(make_ledger)
    verdict = check_both(good, other.vkey)
    assert verdict["reason"] == "wrong_log" and log.vkey.name in verdict["detail"]


CONSISTENCY: dict[str, tuple[Callable[[Log, bytes], tuple[bytes, str]], tuple[str, ...], int, str | None]] = {
    # name: (the body and the held note, from the good proof of head 1 to head 2), witnesses, quorum, reason
    "good": (lambda log, raw: (raw, log.note(1)), (), 0, None),
    "good_cosigned": (lambda log, raw: (raw + log.cosign("a", 2).encode(), log.note(1)), ("a",), 1, None),
    "held_cosigned_by_witnesses": (lambda log, raw: (raw, add_signature_lines(log.note(1), log.cosign("b", 1))), (),
                                   0, None),
    "missing_cosignature_under_quorum": (lambda log, raw: (raw + log.cosign("a", 2).encode(), log.note(1)),
                                         ("a", "c"), 2, "unwitnessed"),
    "forged_cosignature": (lambda log, raw: (_forge_cosignature(raw + log.cosign("a", 2).encode(), "a"),
                                             log.note(1)), ("a",), 1, "unwitnessed"),
    "wrong_sibling": (lambda log, raw: (_proof_lines(raw, _flip_hash(0)), log.note(1)), (), 0, "not_consistent"),
    "sibling_added": (lambda log, raw: (_proof_lines(raw, lambda h: [*h, h[-1]]), log.note(1)), (), 0,
                      "not_consistent"),
    "wrong_old_size": (lambda log, raw: (raw.replace(f"old {log.head(1).size}\n".encode(),
                                                     f"old {log.head(1).size - 1}\n".encode()), log.note(1)), (), 0,
                       "wrong_record"),
    "held_of_another_size": (lambda log, raw: (raw, log.note(2)), (), 0, "wrong_record"),
    "held_from_another_log": (lambda log, raw: (raw, _signed(log, TreeHead(origin_of("3" * 32), 7, bytes(32)))), (),
                              0, "wrong_log"),
    "held_signed_by_another_key": (lambda log, raw: (raw, _signed(log, log.head(1), Ed25519PrivateKey.generate())),
                                   (), 0, "bad_signature"),
    "held_not_a_note": (lambda log, raw: (raw, "hello\n"), (), 0, "malformed"),
    "newer_from_another_log": (lambda log, raw: (raw.split(b"\n\n")[0] + b"\n\n" + _signed(log, TreeHead(
        origin_of("4" * 32), log.head(2).size, log.head(2).root)).encode(), log.note(1)), (), 0, "wrong_log"),
    "not_a_body": (lambda log, raw: (b"new 5\n\n" + raw.split(b"\n\n", 1)[1], log.note(1)), (), 0, "malformed"),
}


@pytest.mark.parametrize("name", sorted(CONSISTENCY))
def test_both_check_consistency_proofs_alike(make_ledger: Callable[..., Made], name: str) -> None:
    log = build(make_ledger, cosigned=True)
    good = prove_extension(log.path, log.head(1)).encode()
    change, witnesses, quorum, reason = CONSISTENCY[name]
    raw, held = change(log, good)
    verdict = check_both(raw, log.vkey, witnesses, quorum, old=held)
    assert (verdict["ok"], verdict["reason"]) == (reason is None, reason), verdict
    if reason is None:
        assert (verdict["old_size"], verdict["size"]) == (log.head(1).size, log.head(2).size)


def test_a_consistency_proof_from_a_rewritten_ledger_fails_against_the_head_held(
        make_ledger: Callable[..., Made]) -> None:
    """The insider rewrites below the head the auditor holds and re-signs everything: the newer
    head is genuinely signed, but no proof leads to it from the old root."""
    log = build(make_ledger)
    held = log.note(1)
    resign(log.path, log.made.key, lambda seq, data: {**data, "rewritten": True} if seq == 3 else data)
    rewritten = SignedCheckpoint.from_json(parse_line(lines(log.path)[log.head(2).size]).data).tlog
    assert rewritten is not None
    leaves = [leaf_hash(line) for line in lines(log.path)]
    proof = consistency_proof(log.head(1).size, log.head(2).size, from_leaves(leaves.__getitem__))
    raw = AddCheckpoint(log.head(1).size, tuple(proof), rewritten).encode()
    verdict = check_both(raw, log.vkey, old=held)
    assert verdict["reason"] == "not_consistent" and "root_mismatch" in verdict["detail"]


# -- the two command lines on proofs, and the tool without cryptography -------------------------------------


@pytest.mark.parametrize("name", ["good_cosigned", "wrong_sibling", "missing_cosignature_under_quorum"])
def test_the_tool_prints_what_anticloud_verify_proof_prints(receipt_log: tuple[Log, bytes], tmp_path: Path,
                                                             name: str) -> None:
    log, good = receipt_log
    change, witnesses, quorum, _ = RECEIPTS[name]
    proof = tmp_path / "receipt.tlog-proof"
    proof.write_bytes(change(log, good))
    args = [str(proof), "--vkey", log.vkey.encode(),
            *[a for w in witnesses for a in ("--witness", WITNESS[w].encode())],
            *(["--quorum", str(quorum)] if quorum else [])]
    for extra in ([], ["--json"]):
        ours = appliance("verify", "proof", *args, *extra, home=tmp_path / "home")
        assert twin("--proof", *args, *extra) == ours
    extension = tmp_path / "extension"
    extension.write_bytes(prove_extension(log.path, log.head(1)).encode())
    held = tmp_path / "held.note"
    held.write_text(log.note(1))
    args = [str(extension), "--vkey", log.vkey.encode(), "--from", str(held)]
    ours = appliance("verify", "proof", *args, home=tmp_path / "home")
    assert twin("--proof", *args) == ours and ours[1].startswith("VALID: the tree of size")


def test_without_cryptography_a_receipt_is_not_passed(receipt_log: tuple[Log, bytes], tmp_path: Path) -> None:
    log, good = receipt_log
    proof = tmp_path / "receipt.tlog-proof"
    proof.write_bytes(good)
    vkey = log.vkey.encode()
    run = run_tool("--proof", proof, "--vkey", vkey)
    assert run.returncode == 5 and run.stdout.startswith("SIGNATURES NOT CHECKED: record 3 "), run.stdout + run.stderr
    doc = json.loads(run_tool("--proof", proof, "--vkey", vkey, "--json").stdout)
    assert (doc["ok"], doc["reason"], doc["record"]["seq"]) == (False, "not_checked", 3)
    # What no signature could change is still decided: a bad proof, or too few witnesses even if all were genuine.
    proof.write_bytes(_proof_lines(good, _flip_hash(0)))
    run = run_tool("--proof", proof, "--vkey", vkey)
    assert run.returncode == 1 and run.stdout.startswith("NOT VALID: not_included")
    proof.write_bytes(good)
    run = run_tool("--proof", proof, "--vkey", vkey, "--witness", WITNESS["b"].encode())  # b cosigned no later head
    assert run.returncode == 1 and run.stdout.startswith("NOT VALID: unwitnessed")
    run = run_tool("--proof", proof, "--vkey", vkey, "--witness", WITNESS["a"].encode())
    assert run.returncode == 5  # a's line is there, but cannot be checked
    extension = tmp_path / "extension"
    extension.write_bytes(prove_extension(log.path, log.head(1)).encode())
    held = tmp_path / "held.note"
    held.write_text(log.note(1))
    run = run_tool("--proof", extension, "--vkey", vkey, "--from", held)
    assert run.returncode == 5 and run.stdout.startswith("SIGNATURES NOT CHECKED: the tree of size")


def test_unreadable_proof_inputs_are_exit_2(receipt_log: tuple[Log, bytes], tmp_path: Path) -> None:
    log, good = receipt_log
    proof = tmp_path / "receipt.tlog-proof"
    proof.write_bytes(good)
    for args in (["--proof", tmp_path / "missing", "--vkey", log.vkey.encode()],
                 ["--proof", proof, "--vkey", "nonsense"],
                 ["--proof", proof],
                 ["--proof", proof, "--vkey", log.vkey.encode(), "--from", tmp_path / "missing"],
                 ["--proof", proof, "--vkey", log.vkey.encode(), "--checkpoint", proof],
                 ["--proof", proof, "--vkey", log.vkey.encode(), str(log.path)]):
        run = run_tool(*args)
        assert run.returncode == 2 and "Traceback" not in run.stderr, (args, run.stderr)


def test_the_tool_still_needs_nothing_but_the_standard_library_for_proofs(receipt_log: tuple[Log, bytes]) -> None:
    """-I -S: the proof checkers load and decide a forged receipt without cryptography."""
    log, good = receipt_log
    forged = _proof_lines(good, _flip_hash(0))
    script = ("import runpy, sys; t = runpy.run_path(sys.argv[1], run_name='twin');"
              " v = t['check_receipt'](sys.argv[2].encode('latin-1'), t['parse_vkey'](sys.argv[3]));"
              " print(v['reason'])")
    done = subprocess.run([*STDLIB_ONLY, "-c", script, str(TOOL), forged.decode("latin-1"), log.vkey.encode()],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "not_included"), done.stderr


def test_the_spec_names_every_reason_the_tree_and_proof_checks_give() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ledger-format.md").read_text()
    rules = doc[doc.index("## 5. Verifying"):doc.index("### Verdicts and exit codes")]
    proofs = doc[doc.index("## 14. Receipts"):]
    assert "**tree_mismatch**" in rules and "12. When the tree of the lines read reaches" in rules
    reasons = {"malformed", "wrong_log", "bad_signature", "unwitnessed", "wrong_record", "not_included",
               "not_consistent", "not_checked"}
    assert reasons <= set(re.findall(r"\*\*([a-z_]+)\*\*", proofs)), proofs
    assert all(f"``{r}``" in (ReceiptVerdict.__doc__ or "") for r in reasons - {"not_checked"})
    assert "| (`intact`) | 6 |" in doc and "`witnesses`" in proofs
