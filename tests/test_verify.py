"""Replaying whole files: any appends verify, and any tampering fails at the right record."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import LedgerWriter, verify_file
from ledger.canonical import MAX_SAFE_INTEGER
from ledger.record import seal
from tests.conftest import genesis_for
from tests.waiting import join

KEY = Ed25519PrivateKey.generate()
kinds = st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z][a-z0-9_]{0,6}){0,2}", fullmatch=True)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
appends = st.lists(st.tuples(kinds.filter(lambda k: k not in ("ledger.genesis", "ledger.checkpoint")),
                             st.dictionaries(st.text(max_size=5), values, max_size=4)), min_size=1, max_size=12)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write(tmp_path: Path, entries: list[tuple[str, dict[str, Any]]]) -> tuple[Path, list[bytes]]:
    path = tmp_path / f"l-{secrets.token_hex(4)}.jsonl"
    with LedgerWriter.create(path, genesis_for(KEY)) as writer:
        for kind, data in entries:
            writer.append(kind, data)
    return path, path.read_bytes().splitlines(keepends=True)


@SETTINGS
@given(appends)
def test_any_sequence_of_appends_verifies(tmp_path: Path, entries: list[tuple[str, dict[str, Any]]]) -> None:
    path, _ = write(tmp_path, entries)
    verdict = verify_file(path)
    assert verdict.status == "intact", verdict.fault
    assert verdict.records == len(entries) + 1
    assert verdict.head_seq == len(entries)


@SETTINGS
@given(appends, st.data())
def test_flipping_any_byte_fails_at_that_record(tmp_path: Path, entries: list[tuple[str, dict[str, Any]]],
                                                 data: st.DataObject) -> None:
    path, lines = write(tmp_path, entries)
    blob = b"".join(lines)
    at = data.draw(st.integers(0, len(blob) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(blob[:at] + bytes([blob[at] ^ flip]) + blob[at + 1:])
    starts = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    seq = max(i for i, s in enumerate(starts) if s <= at)
    verdict = verify_file(path)
    if at == len(blob) - 1:  # the final newline: what is left is an unterminated last line
        assert verdict.status == "torn" and verdict.records == seq
        assert verdict.torn is not None and verdict.torn.offset == starts[seq]
    else:
        assert verdict.status == "broken"
        assert verdict.fault is not None and verdict.fault.seq == seq, verdict.fault
        assert verdict.fault.offset == starts[seq]
        assert verdict.records == seq


@SETTINGS
@given(appends.filter(lambda e: len(e) >= 2), st.data())
def test_deleting_swapping_duplicating_inserting_lines_fails_at_the_right_seq(
    tmp_path: Path, entries: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    path, lines = write(tmp_path, entries)
    n = len(lines)
    op = data.draw(st.sampled_from(["delete", "swap", "duplicate", "insert"]), label="op")
    i = data.draw(st.integers(0, n - 2), label="at")
    changed = list(lines)
    if op == "delete":
        del changed[i]
    elif op == "swap":
        changed[i], changed[i + 1] = changed[i + 1], changed[i]
    elif op == "duplicate":
        changed.insert(i + 1, lines[i])
    else:  # a well-formed record that claims to be the next one after lines[i]
        _, forged = seal(i + 1, "forged.entry", {"x": 1}, "0" * 64)
        changed.insert(i + 1, forged)
        i += 1
    path.write_bytes(b"".join(changed))
    verdict = verify_file(path)
    assert verdict.status == "broken"
    assert verdict.fault is not None
    expected_seq = i if op in ("delete", "swap") else i + 1 if op == "duplicate" else i
    assert verdict.fault.seq == expected_seq, (op, verdict.fault)
    assert verdict.fault.reason in {"seq_mismatch", "prev_mismatch", "bad_genesis"}


def test_empty_and_headless_files_are_broken(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert verify_file(empty).fault is not None
    _, line = seal(0, "test.event", {}, "0" * 64)
    headless = tmp_path / "headless.jsonl"
    headless.write_bytes(line)
    verdict = verify_file(headless)
    assert verdict.fault is not None and verdict.fault.reason == "bad_genesis"


def test_a_second_genesis_is_refused(make_ledger: Any) -> None:
    made = make_ledger(1)
    lines = made.path.read_bytes().splitlines(keepends=True)
    last = __import__("ledger.record", fromlist=["parse_line"]).parse_line(lines[-1][:-1])
    _, line = seal(2, "ledger.genesis", genesis_for(KEY), last.hash)
    made.path.write_bytes(b"".join(lines) + line)
    verdict = verify_file(made.path)
    assert verdict.fault is not None and (verdict.fault.reason, verdict.fault.seq) == ("bad_genesis", 2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(appends.filter(lambda e: len(e) >= 3), st.data())
def test_parallel_replay_gives_exactly_the_serial_verdict(
    tmp_path: Path, entries: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    path, lines = write(tmp_path, entries)
    blob = b"".join(lines)
    op = data.draw(st.sampled_from(["none", "flip", "delete", "duplicate", "cut"]), label="op")
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    if op == "flip":
        at = data.draw(st.integers(0, len(blob) - 1), label="byte")
        blob = blob[:at] + bytes([blob[at] ^ 0x41]) + blob[at + 1:]
    elif op in ("delete", "duplicate"):
        changed = list(lines)
        changed.insert(i, lines[i]) if op == "duplicate" else changed.pop(i)
        blob = b"".join(changed)
    elif op == "cut":
        blob = blob[:data.draw(st.integers(1, len(blob)), label="cut")]
    path.write_bytes(blob)
    jobs = data.draw(st.integers(2, 5), label="jobs")
    assert verify_file(path, jobs=jobs).to_json() == verify_file(path, jobs=1).to_json()


def test_parallel_replay_from_a_threaded_caller(make_ledger: Any) -> None:
    import threading

    made = make_ledger(30)
    results: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: results.append(verify_file(made.path, jobs=3).to_json()))
    worker.start()  # two threads alive: the forkserver path
    join(worker, 60, "the threaded caller's parallel replay")
    assert results == [verify_file(made.path, jobs=1).to_json()]
    assert results[0]["verdict"] == "intact" and results[0]["records"] == 31


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_the_writer_refuses_what_its_verifier_would_reject(make_ledger: Any) -> None:
    """Data nested 980 deep was once written, then refused by the verifier (RecursionError), and the
    ledger could not be opened again. Now the writer refuses it, and the ledger stays whole."""
    from ledger.canonical import MAX_DEPTH
    from ledger.errors import EncodingError
    from ledger.record import MAX_LINE_BYTES

    made = make_ledger(1)
    with LedgerWriter.open(made.path) as writer:
        for refused in ({"x": _nested(980)}, {"x": _nested(MAX_DEPTH - 1)}, {"s": "x" * MAX_LINE_BYTES}):
            try:
                writer.append("test.event", refused)
            except EncodingError:
                continue
            raise AssertionError("the writer accepted a record no verifier accepts")
        writer.append("test.event", {"x": _nested(MAX_DEPTH - 2)})  # the deepest data a record may hold
    verdict = verify_file(made.path)
    assert verdict.status == "intact" and verdict.records == 3
    with LedgerWriter.open(made.path) as writer:
        assert writer.head.seq == 2


def test_an_unterminated_tail_longer_than_any_record_is_broken_not_torn(make_ledger: Any) -> None:
    """A crash can only tear a line the writer wrote, and no such line exceeds the bound."""
    from ledger.errors import LedgerCorruptError
    from ledger.record import MAX_LINE_BYTES

    made = make_ledger(1)
    good = made.path.read_bytes()
    made.path.write_bytes(good + b"x" * MAX_LINE_BYTES)
    assert verify_file(made.path).status == "torn"
    made.path.write_bytes(good + b"x" * (MAX_LINE_BYTES + 1))
    verdict = verify_file(made.path)
    assert verdict.status == "broken" and verdict.fault is not None
    assert (verdict.fault.reason, verdict.fault.seq, verdict.fault.offset) == ("unparseable_line", 2, len(good))
    try:
        LedgerWriter.open(made.path).close()
    except LedgerCorruptError as exc:
        assert "longer than" in str(exc)
    else:
        raise AssertionError("the writer took an over-long tail for a torn append")
    assert made.path.read_bytes() == good + b"x" * (MAX_LINE_BYTES + 1), "nothing was quarantined or cut"
