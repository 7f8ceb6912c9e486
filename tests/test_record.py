"""One record: the exact bytes it seals to, and the reason each kind of bad line is refused."""

from __future__ import annotations

import hashlib

import pytest

from ledger.errors import EncodingError
from ledger.record import RecordFault, parse_line, seal

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
    ],
)
def test_seal_refuses_what_could_never_verify(kind: str, data: dict[str, object], prev: str, ts: str) -> None:
    with pytest.raises(EncodingError):
        seal(1, kind, data, prev, ts)


def test_the_general_path_accepts_what_the_fast_path_declines() -> None:
    seq = 10**15 + 7  # more digits than the fast envelope takes, still a safe integer
    record, line = seal(seq, "test.event", {"a": 1}, PREV, TS)
    assert parse_line(line[:-1]) == record
    tampered = line[:-1].replace(b'"a":1', b'"a":2')
    assert reason(tampered) == "hash_mismatch"
