"""Sealed content, checked by both verifiers (docs/ledger-format.md section 15): real ledgers whose
records commit to real content files, the store damaged in each way, and erasures before and after."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anticloud.cli import cli
from anticloud.cli.verify import render_content
from anticloud.home import Home
from ledger import EXIT_CONTENT, ContentTally, LedgerWriter, content_path, content_refs, erasure_of, verify_file
from ledger.record import parse_line
from tests.conftest import genesis_for
from tests.standalone import TOOL, verifier

tool = verifier("verify_ledger_content")
KEY_A, KEY_B = "2026-11-" + "a1" * 8, "2026-12-" + "b2" * 8


def sealed_ref(store: Path, inference: str, name: str, key: str, blob: bytes | None = None) -> dict[str, str]:
    """A content reference, its file written to ``store`` (random bytes stand in for a ciphertext)."""
    ident = f"{inference}.{name}"
    blob = secrets.token_bytes(secrets.randbelow(200) + 29) if blob is None else blob
    path = content_path(store, ident)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return {"id": ident, "alg": "aes-256-gcm", "sha3_256": "sha3-256:" + hashlib.sha3_256(blob).hexdigest(),
            "key_commitment": "sha3-256:" + secrets.token_hex(32), "key": key}


@dataclass
class Sealed:
    """A ledger and its content store; ``refs`` maps (inference, field) to (seq, reference)."""

    path: Path
    store: Path
    refs: dict[tuple[str, str], tuple[int, dict[str, str]]] = field(default_factory=dict)
    inferences: list[str] = field(default_factory=list)

    def file(self, inference: str, name: str) -> Path:
        return content_path(self.store, f"{inference}.{name}")


def build(tmp: Path, steps: list[tuple[str, Any]], name: str = "ledger",
          key: Ed25519PrivateKey | None = None) -> Sealed:
    """A real ledger: ("inference", KEY) appends a sealed begin and end; ("chat", KEY) a chat's;
    ("erase", {"keys": [...], "inferences": [...]}) a content.erased; ("raw", (kind, data)) anything."""
    base = tmp / name
    base.mkdir()
    made = Sealed(base / "ledger.jsonl", base / "content")
    made.store.mkdir()
    with LedgerWriter.create(made.path, genesis_for(key or Ed25519PrivateKey.generate())) as writer:
        for step, arg in steps:
            if step in ("inference", "chat"):
                inference = secrets.token_hex(8)
                made.inferences.append(inference)
                asked = "prompt" if step == "inference" else "messages"
                begin = sealed_ref(made.store, inference, asked, arg)
                seq = writer.append("inference.begin", {"id": inference, "kind": "completion" if step == "inference"
                                                        else "chat", "sealed": {asked: begin}}).seq
                made.refs[(inference, asked)] = (seq, begin)
                end = sealed_ref(made.store, inference, "output", arg)
                seq = writer.append("inference.end", {"id": inference, "done_reason": "stop",
                                                      "sealed": {"output": end}}).seq
                made.refs[(inference, "output")] = (seq, end)
            elif step == "erase":
                writer.append("content.erased", {"erasure": secrets.token_hex(8), "scope": {"seq": 1},
                                                 "ciphertext": "deleted", "request": "ticket-1", **arg})
            else:
                writer.append(*arg)
    return made


def both(made: Sealed, store: bool = True, jobs: int = 1) -> dict[str, Any]:
    """The verdict of both verifiers, which must agree on content and exit code; returns ours."""
    ours = verify_file(made.path, content_dir=made.store if store else None, jobs=jobs).to_json()
    theirs = tool.verify(str(made.path), None, None, content=str(made.store) if store else None)
    assert ours["content"] == theirs["content"]
    assert (ours["verdict"], ours["exit_code"]) == (theirs["verdict"], theirs["exit_code"])
    return ours


@pytest.mark.parametrize("jobs", [1, 3], ids=["serial", "parallel"])
def test_all_intact_counts_every_reference_and_exits_0(tmp_path: Path, jobs: int) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("chat", KEY_B), ("inference", KEY_A)])
    v = both(made, jobs=jobs)
    assert (v["verdict"], v["exit_code"]) == ("intact", 0)
    assert {k: v["content"][k] for k in ("sealed", "erased", "checked", "missing_count", "mismatched_count",
                                         "malformed_count")} == {"sealed": 6, "erased": 0, "checked": 6,
                                                                 "missing_count": 0, "mismatched_count": 0,
                                                                 "malformed_count": 0}
    assert v["content"]["store"] == str(made.store)


def test_without_a_store_it_counts_and_checks_no_file(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("inference", KEY_B), ("erase", {"keys": [KEY_B]})])
    for path in made.store.rglob("*.*"):
        path.unlink()  # no file is looked at without a store
    v = both(made, store=False)
    assert v["exit_code"] == 0
    assert (v["content"]["sealed"], v["content"]["erased"], v["content"]["checked"], v["content"]["store"]) == (
        4, 2, 0, None)


@pytest.mark.parametrize("jobs", [1, 3], ids=["serial", "parallel"])
def test_a_flipped_byte_is_a_mismatch_with_its_evidence_and_exits_7(tmp_path: Path, jobs: int) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("inference", KEY_A)])
    inference = made.inferences[1]
    target = made.file(inference, "prompt")
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    target.write_bytes(bytes(blob))
    v = both(made, jobs=jobs)
    assert (v["verdict"], v["exit_code"]) == ("intact", EXIT_CONTENT), "the chain's verdict is unchanged"
    seq, ref = made.refs[(inference, "prompt")]
    assert v["content"]["mismatched"] == [{"seq": seq, "field": "prompt", "id": ref["id"], "expected": ref["sha3_256"],
                                           "actual": "sha3-256:" + hashlib.sha3_256(bytes(blob)).hexdigest()}]
    assert (v["content"]["mismatched_count"], v["content"]["missing_count"]) == (1, 0)


def test_a_missing_file_is_missing(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("chat", KEY_A)])
    inference = made.inferences[1]
    made.file(inference, "output").unlink()
    v = both(made)
    seq, ref = made.refs[(inference, "output")]
    assert v["exit_code"] == EXIT_CONTENT
    assert v["content"]["missing"] == [{"seq": seq, "field": "output", "id": ref["id"], "expected": ref["sha3_256"],
                                        "actual": None}]


def test_files_swapped_between_two_records_are_two_mismatches(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("inference", KEY_A)])
    a, b = made.file(made.inferences[0], "output"), made.file(made.inferences[1], "output")
    blob_a, blob_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(blob_b)
    b.write_bytes(blob_a)
    v = both(made)
    assert v["content"]["mismatched_count"] == 2
    assert [(f["id"], f["actual"]) for f in v["content"]["mismatched"]] == [
        (made.refs[(made.inferences[0], "output")][1]["id"], made.refs[(made.inferences[1], "output")][1]["sha3_256"]),
        (made.refs[(made.inferences[1], "output")][1]["id"], made.refs[(made.inferences[0], "output")][1]["sha3_256"])]


@pytest.mark.parametrize("jobs", [1, 3], ids=["serial", "parallel"])
def test_an_erasure_by_key_group_with_its_files_deleted_is_erased_never_missing(tmp_path: Path, jobs: int) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("chat", KEY_B), ("inference", KEY_A),
                            ("erase", {"keys": [KEY_A], "inferences": []}), ("inference", KEY_B)])
    for inference in (made.inferences[0], made.inferences[2]):
        for name in ("prompt", "output"):
            made.file(inference, name).unlink()
    v = both(made, jobs=jobs)
    assert v["exit_code"] == 0
    assert (v["content"]["sealed"], v["content"]["erased"], v["content"]["checked"]) == (8, 4, 4)
    assert v["content"]["missing"] == []


def test_an_erasure_by_inference_erases_that_inference_only(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("inference", KEY_A)])
    with LedgerWriter.open(made.path) as writer:
        writer.append("content.erased", {"erasure": secrets.token_hex(8), "scope": {"seq": 1}, "keys": [],
                                         "inferences": [made.inferences[0]], "ciphertext": "kept", "request": "x"})
    made.file(made.inferences[0], "prompt").write_bytes(b"kept, and no longer what was committed: not a fault")
    made.file(made.inferences[1], "output").unlink()
    v = both(made)
    assert (v["content"]["erased"], v["content"]["checked"], v["content"]["mismatched_count"]) == (2, 2, 0)
    assert [f["id"] for f in v["content"]["missing"]] == [f"{made.inferences[1]}.output"]


def test_an_erasure_before_a_record_does_not_erase_it(tmp_path: Path) -> None:
    inference = "0123456789abcdef"
    made = build(tmp_path, [("erase", {"keys": [KEY_A], "inferences": [inference]})])
    with LedgerWriter.open(made.path) as writer:
        ref = sealed_ref(made.store, inference, "prompt", KEY_A)
        seq = writer.append("inference.begin", {"id": inference, "kind": "completion", "sealed": {"prompt": ref}}).seq
    content_path(made.store, ref["id"]).unlink()
    v = both(made)
    assert (v["content"]["sealed"], v["content"]["erased"], v["exit_code"]) == (1, 0, EXIT_CONTENT)
    assert v["content"]["missing"][0]["seq"] == seq


MALFORMED: dict[str, tuple[dict[str, Any], str]] = {
    "not_an_object": ({"sealed": "yes"}, "sealed is not an object naming at least one field"),
    "no_field": ({"sealed": {}}, "sealed is not an object naming at least one field"),
    "wrong_field": ({"sealed": {"output": None}}, "inference.begin seals input, messages, prompt, not output"),
    "missing_member": ({"drop": "key_commitment"}, "a content reference is an object of exactly alg, id, key, "
                                                   "key_commitment, sha3_256"),
    "bad_inference": ({"id": "../../etc"}, "the record's id is not an inference id (16 lowercase hex digits)"),
    "other_inference": ({"ref_id": "fedcba9876543210.prompt"},
                        "id is not 0123456789abcdef.prompt (the record's inference, then the field)"),
    "alg": ({"set": ("alg", "aes-128-gcm")}, "alg is not aes-256-gcm"),
    "digest": ({"set": ("sha3_256", "sha3-256:" + "AB" * 32)}, "sha3_256 is not sha3-256:<64 lowercase hex digits>"),
    "commitment": ({"set": ("key_commitment", 7)}, "key_commitment is not sha3-256:<64 lowercase hex digits>"),
    "key": ({"set": ("key", "2026-13-" + "a1" * 8)}, "key is not a key group id (YYYY-MM-<16 lowercase hex digits>)"),
    "leak": ({"prompt_sha3_256": "sha3-256:" + "00" * 32},
             "the record also carries prompt_sha3_256 beside its sealed prompt"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_reference_is_a_content_finding_with_its_reason(tmp_path: Path, case: str) -> None:
    """The record verified (hashed, canonical, linked): the chain is intact, and the appliance
    committed to something no one can check. That is a finding about the content (exit 7), not a
    broken chain, which would hide every record after it."""
    edit, reason = MALFORMED[case]
    made = build(tmp_path, [("inference", KEY_A)])
    ref = sealed_ref(made.store, "0123456789abcdef", "prompt", KEY_A)
    data: dict[str, Any] = {"id": "0123456789abcdef", "kind": "completion", "sealed": {"prompt": ref}}
    if "drop" in edit:
        del ref[edit["drop"]]
    elif "set" in edit:
        ref[edit["set"][0]] = edit["set"][1]
    elif "ref_id" in edit:
        ref["id"] = edit["ref_id"]
    elif "id" in edit:
        data["id"] = edit["id"]
    elif "sealed" in edit:
        data["sealed"] = edit["sealed"]
    else:
        data.update(edit)
    with LedgerWriter.open(made.path) as writer:
        seq = writer.append("inference.begin", data).seq
        writer.append("test.event", {"after": True})
    v = both(made)
    assert (v["verdict"], v["records"], v["exit_code"]) == ("intact", seq + 2, EXIT_CONTENT)
    assert v["content"]["malformed_count"] == 1 and v["content"]["sealed"] == 2
    assert v["content"]["malformed"][0]["reason"] == reason and v["content"]["malformed"][0]["seq"] == seq


def test_a_malformed_erasure_erases_nothing(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("erase", {"keys": [KEY_A, 3]})])
    made.file(made.inferences[0], "prompt").unlink()
    v = both(made)
    assert v["content"]["malformed"][0]["reason"] == "content.erased: keys is not a list of key group ids"
    assert (v["content"]["erased"], v["content"]["missing_count"], v["exit_code"]) == (0, 1, EXIT_CONTENT)


def test_a_broken_chain_keeps_exit_1_and_counts_the_records_before_the_fault(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("inference", KEY_A)])
    lines = made.path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"done_reason":"stop"', b'"done_reason":"stoq"')
    made.path.write_bytes(b"".join(lines))
    made.file(made.inferences[0], "prompt").unlink()
    v = both(made)
    assert (v["verdict"], v["exit_code"], v["content"]["sealed"], v["content"]["missing_count"]) == ("broken", 1, 1, 1)


def test_only_the_first_ten_findings_are_listed_and_all_are_counted(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A)] * 8)
    for path in list(made.store.rglob("*.output")):
        path.unlink()
    for path in made.store.rglob("*.prompt"):
        path.write_bytes(b"x")
    v = both(made, jobs=3)
    c = v["content"]
    assert (c["missing_count"], c["mismatched_count"], len(c["missing"]), len(c["mismatched"])) == (8, 8, 8, 8)
    more = build(tmp_path, [("inference", KEY_A)] * 12, "more")
    for path in list(more.store.rglob("*.*")):
        path.unlink()
    c = both(more)["content"]
    assert (c["missing_count"], len(c["missing"])) == (24, 10)
    assert [f["seq"] for f in c["missing"]] == list(range(1, 11)), "the first ten, by seq"


def test_an_unreadable_store_is_exit_2_in_one_line(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A)])
    run = subprocess.run([sys.executable, "-I", "-S", str(TOOL), str(made.path), "--content", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "content store" in run.stderr


# -- the standalone tool and the command line, as the auditor runs them ---------------------------------


def test_the_tool_and_the_command_line_print_the_same_content_lines_and_exit_7(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("inference", KEY_B), ("erase", {"keys": [KEY_B]})])
    made.file(made.inferences[0], "output").write_bytes(b"altered")
    made.file(made.inferences[1], "prompt").unlink()  # erased: deleted is what erasure leaves
    run = subprocess.run([sys.executable, "-I", "-S", str(TOOL), str(made.path), "--content", str(made.store)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == EXIT_CONTENT, run.stderr
    assert "  content           4 sealed, 2 erased, 2 checked: 0 missing, 1 mismatched" in run.stdout
    home = Home(tmp_path / "home")
    result = CliRunner().invoke(cli, ["--home", str(home.root), "verify", "ledger", str(made.path),
                                      "--content", str(made.store)])
    assert result.exit_code == EXIT_CONTENT, result.output
    ours = [line for line in result.output.splitlines() if line.startswith(("  content", "    ", "  CONTENT"))]
    theirs = [line for line in run.stdout.splitlines() if line.startswith(("  content", "    ", "  CONTENT"))]
    assert ours == theirs and ours[-1].startswith("  CONTENT FAULT")
    as_json = CliRunner().invoke(cli, ["--home", str(home.root), "verify", "ledger", str(made.path), "--json"])
    doc = json.loads(as_json.output)
    assert (doc["exit_code"], doc["content"]["store"], doc["content"]["checked"]) == (0, None, 0)


def test_the_homes_own_content_store_is_used_by_default(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    assert CliRunner().invoke(cli, ["--home", str(home.root), "init"]).exit_code == 0
    store = home.root / "content"
    inference = secrets.token_hex(8)
    with LedgerWriter.open(home.ledger) as writer:
        writer.append("inference.begin", {"id": inference, "kind": "completion",
                                          "sealed": {"prompt": sealed_ref(store, inference, "prompt", KEY_A)}})
    code = CliRunner().invoke(cli, ["--home", str(home.root), "verify", "ledger"])
    assert code.exit_code == 0 and "1 sealed, 0 erased, 1 checked: 0 missing" in code.output
    content_path(store, f"{inference}.prompt").unlink()
    code = CliRunner().invoke(cli, ["--home", str(home.root), "verify", "ledger"])
    assert code.exit_code == EXIT_CONTENT and f"MISSING        seq {1 + _last_seq_before(home.ledger)}" in code.output
    other = tmp_path / "copy.jsonl"
    other.write_bytes(home.ledger.read_bytes())
    code = CliRunner().invoke(cli, ["--home", str(home.root), "verify", "ledger", str(other)])
    assert code.exit_code == 0, "another ledger is not checked against this home's store unless asked"


def _last_seq_before(path: Path) -> int:
    return parse_line(path.read_bytes().splitlines()[-2]).seq


def test_the_renderings_agree_word_for_word(tmp_path: Path) -> None:
    made = build(tmp_path, [("inference", KEY_A), ("inference", KEY_A)])
    made.file(made.inferences[0], "prompt").unlink()
    made.file(made.inferences[1], "output").write_bytes(b"")
    verdict = verify_file(made.path, content_dir=made.store)
    assert verdict.content is not None
    assert render_content(verdict.content) == tool.render_content(verdict.content.to_json())


# -- the rules alone, and a property over any order of sealing and erasing ------------------------------


def test_the_rules_parse_a_reference_and_an_erasure() -> None:
    ref = {"id": "0123456789abcdef.output", "alg": "aes-256-gcm", "sha3_256": "sha3-256:" + "ab" * 32,
           "key_commitment": "sha3-256:" + "cd" * 32, "key": KEY_A}
    refs, bad = content_refs(9, "inference.end", {"id": "0123456789abcdef", "sealed": {"output": ref}})
    assert bad == [] and refs[0].inference == "0123456789abcdef" and refs[0].seq == 9 and refs[0].key == KEY_A
    assert content_refs(9, "model.load", {"sealed": "anything"}) == ([], []), "other kinds are opaque"
    assert erasure_of({"keys": [KEY_A]}) == (frozenset({KEY_A}), frozenset())
    with pytest.raises(ValueError, match="inferences"):
        erasure_of({"inferences": "0123456789abcdef"})


EVENTS = st.lists(st.one_of(st.tuples(st.just("seal"), st.integers(0, 3), st.sampled_from([KEY_A, KEY_B])),
                            st.tuples(st.just("key"), st.sampled_from([KEY_A, KEY_B])),
                            st.tuples(st.just("inference"), st.integers(0, 3))), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS, cut=st.integers(0, 25))
def test_any_order_of_sealing_and_erasing_is_counted_as_the_rule_says_however_it_is_split(
        events: list[tuple[Any, ...]], cut: int) -> None:
    """A reference is erased iff an erasure after it names its key or inference; a tally split in two
    runs and merged says the same as one over all, and the same as the tool."""
    inferences = [f"{i:016x}" for i in range(4)]
    records: list[tuple[str, dict[str, Any]]] = []
    for event in events:
        if event[0] == "seal":
            ident = inferences[event[1]]
            ref = {"id": f"{ident}.output", "alg": "aes-256-gcm", "sha3_256": "sha3-256:" + "ab" * 32,
                   "key_commitment": "sha3-256:" + "cd" * 32, "key": event[2]}
            records.append(("inference.end", {"id": ident, "sealed": {"output": ref}}))
        elif event[0] == "key":
            records.append(("content.erased", {"keys": [event[1]], "inferences": []}))
        else:
            records.append(("content.erased", {"keys": [], "inferences": [inferences[event[1]]]}))
    expected_erased = sum(
        1 for i, (kind, data) in enumerate(records) if kind == "inference.end"
        and any(k == "content.erased" and (data["sealed"]["output"]["key"] in d["keys"]
                                           or data["id"] in d["inferences"]) for k, d in records[i + 1:]))
    whole, first, second, theirs = ContentTally(), ContentTally(), ContentTally(), tool.Content()
    for seq, (kind, data) in enumerate(records, start=1):
        record = _record(seq, kind, data)
        whole.feed(record)
        (first if seq <= cut else second).feed(record)
        theirs.feed({"seq": seq, "kind": kind, "data": data})
    first.merge(second)
    sealed = sum(kind == "inference.end" for kind, _ in records)
    assert (whole.sealed, whole.erased) == (first.sealed, first.erased) == (sealed, expected_erased)
    assert (theirs.sealed, theirs.erased) == (sealed, expected_erased)
    assert sorted(whole.remaining()) == sorted(first.remaining())


def _record(seq: int, kind: str, data: dict[str, Any]) -> Any:
    from ledger import Record
    return Record(seq, "2026-01-01T00:00:00.000000Z", kind, data, "0" * 64, "0" * 64)
