"""One record: the exact bytes it seals to, and the reason each kind of bad line is refused."""

from __future__ import annotations

import hashlib

import pytest

from ledger.canonical import MAX_DEPTH
from ledger.errors import EncodingError
from ledger.record import MAX_LINE_BYTES, RecordFault, parse_line, prepare, seal, valid_ts

TS = "2026-01-02T03:04:05.678901Z"
PREV = "ab" * 32
BODY = b'{"data":{"a":1,"z":"\xc3\xa9"},"kind":"test.event","prev":"' + PREV.encode() + \
    b'","seq":1,"ts":"2026-01-02T03:04:05.678901Z","v":1}'


def test_seal_known_answer() -> None:
    record, line = seal(1, "test.event", {"z": "é", "a": 1}, PREV, TS)
    digest = hashlib.sha3_256(BODY).hexdigest()  # pinned value checked with `openssl dgst -sha3-256`
    assert record.hash == digest == "e38a59f6f6d40767766a90ba55df58f75bc42141f2b9b3f9b2790216e9a4239b"
    assert line == BODY.replace(b',"kind"', b',"hash":"' + digest.encode() + b'","kind"') + b"\n"
    assert parse_line(line[:-1]) == record


def reason(line: bytes) -> str:
    with pytest.raises(RecordFault) as info:
        parse_line(line)
    return info.value.reason


GOOD = seal(1, "test.event", {"z": "é", "a": 1}, PREV, TS)[1][:-1]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"", "unparseable_line"),
        (b"not json", "unparseable_line"),
        (b"\xff\xfe", "unparseable_line"),
        (GOOD.replace(b'"a":1', b'"a":1.0'), "unparseable_line"),
        (GOOD.replace(b'"v":1', b'"v":2'), "invalid_record"),
        (GOOD.replace(b'"seq":1', b'"seq":-1'), "invalid_record"),
        (GOOD.replace(b'"seq":1', b'"seq":"1"'), "invalid_record"),
        (GOOD.replace(b'"kind":"test.event"', b'"kind":"Test"'), "invalid_record"),
        (GOOD.replace(b"05.678901Z", b"05.678901+00:00"), "invalid_record"),
        (GOOD.replace(b"2026-01-02", b"2026-02-30"), "invalid_record"),
        (GOOD.replace(b"2026-01-02", "\u0662\u0660\u0662\u0666-01-02".encode()), "invalid_record"),
        (GOOD.replace(b'"v":1}', b'"v":true}'), "invalid_record"),
        (GOOD.replace(b'"seq":1', b'"seq":true'), "invalid_record"),
        (GOOD.replace(b'"a":1', b'"a":' + b"[" * 980 + b"]" * 980), "unparseable_line"),
        (GOOD.replace(b'"a":1', b'"a":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)), "unparseable_line"),
        (GOOD.replace(b'"a":1', b'"a":"' + b"x" * MAX_LINE_BYTES + b'"'), "unparseable_line"),
        (GOOD.replace(b'"prev":"ab', b'"prev":"AB'), "invalid_record"),
        (GOOD.replace(b'"v":1}', b'"v":1,"x":0}'), "invalid_record"),
        (GOOD.replace(b'{"data"', b'{ "data"'), "non_canonical"),
        (GOOD.replace(b'"a":1,"z":"\xc3\xa9"', b'"z":"\xc3\xa9","a":1'), "non_canonical"),
        (GOOD.replace(b'"z":"\xc3\xa9"', b'"z":"\\u00e9"'), "non_canonical"),
        (GOOD.replace(b'"a":1', b'"a":1,"a":1'), "non_canonical"),
        (GOOD.replace(b'"a":1', b'"a":01'), "unparseable_line"),
        (GOOD.replace(b'"a":1', b'"a":"\\ud800"'), "unparseable_line"),
        (GOOD.replace(b'"a":1', b'"a":2'), "hash_mismatch"),
        (GOOD.replace(b'"seq":1', b'"seq":2'), "hash_mismatch"),
    ],
)
def test_bad_lines_are_refused_with_the_right_reason(line: bytes, expected: str) -> None:
    assert reason(line) == expected


@pytest.mark.parametrize(
    ("kind", "data", "prev", "ts"),
    [
        ("Bad Kind", {}, PREV, TS),
        ("x" * 65, {}, PREV, TS),
        ("test.event", {"f": 0.5}, PREV, TS),
        ("test.event", {}, "00", TS),
        ("test.event", {}, PREV, "2026-01-02 03:04:05"),
        ("test.event", {}, PREV, "\u0662\u0660\u0662\u0666-01-02T03:04:05.678901Z"),
        ("test.event", {}, PREV, "２０２６-01-02T03:04:05.678901Z"),
        ("test.event", {"a": [[0]]}, PREV, TS),  # replaced below by a value one level too deep
    ],
)
def test_seal_refuses_what_could_never_verify(kind: str, data: dict[str, object], prev: str, ts: str) -> None:
    if data == {"a": [[0]]}:
        data = {"a": _nested(MAX_DEPTH - 1)}  # with the record and data objects: MAX_DEPTH + 1
    with pytest.raises(EncodingError):
        seal(1, kind, data, prev, ts)


def _nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_the_deepest_data_the_writer_accepts_parses_back() -> None:
    record, line = seal(1, "test.event", {"a": _nested(MAX_DEPTH - 2)}, PREV, TS)
    assert parse_line(line[:-1]) == record


def test_timestamps_are_real_dates_in_ascii_digits() -> None:
    assert valid_ts(TS) and valid_ts("2024-02-29T23:59:59.999999Z")
    for bad in ("2026-02-30T00:00:00.000000Z", "2026-01-02T24:00:00.000000Z", "0000-01-01T00:00:00.000000Z",
                "\u0662\u0660\u0662\u0666-01-02T03:04:05.678901Z", "2026-01-02T03:04:05.67890\u0661Z", None, 20260102):
        assert not valid_ts(bad), bad


def test_the_line_length_bound_is_the_writers_and_the_readers() -> None:
    """prepare refuses data whose line could exceed MAX_LINE_BYTES at any seq; parse_line refuses longer lines."""
    def data(n: int) -> dict[str, str]:
        return {"s": "x" * n}
    # The largest data prepare accepts makes a line of exactly the bound at the largest seq.
    n = MAX_LINE_BYTES - len(seal(2**53 - 1, "test.event", data(0), PREV, TS)[1]) + 1
    record, line = seal(2**53 - 1, "test.event", data(n), PREV, TS)
    assert len(line) - 1 == MAX_LINE_BYTES and parse_line(line[:-1]) == record
    with pytest.raises(EncodingError, match="longer than"):
        prepare("test.event", data(n + 1))
    with pytest.raises(RecordFault, match="longer than") as info:
        parse_line(line[:-1] + b" ")
    assert info.value.reason == "unparseable_line"


def test_the_general_path_accepts_what_the_fast_path_declines() -> None:
    seq = 10**15 + 7  # more digits than the fast envelope takes, still a safe integer
    record, line = seal(seq, "test.event", {"a": 1}, PREV, TS)
    assert parse_line(line[:-1]) == record
    tampered = line[:-1].replace(b'"a":1', b'"a":2')
    assert reason(tampered) == "hash_mismatch"
