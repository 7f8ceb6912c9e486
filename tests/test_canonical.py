"""Canonical JSON: known answers, the profile's refusals, and agreement with an independent RFC 8785."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from ledger.canonical import MAX_DEPTH, MAX_SAFE_INTEGER, canonical_bytes, encode_checked, loads_strict, nesting_depth
from ledger.errors import EncodingError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": [True, None, "x"]}, b'{"a":[true,null,"x"],"b":1}'),
        ({"s": "\b\t\n\f\r\x00\x1f\x7f"}, b'{"s":"\\b\\t\\n\\f\\r\\u0000\\u001f\x7f"}'),
        ({"q": 'quote " and \\ backslash'}, b'{"q":"quote \\" and \\\\ backslash"}'),
        ({"u": "é€😀\u2028"}, '{"u":"é€😀\u2028"}'.encode()),
        ({"n": -0, "m": MAX_SAFE_INTEGER}, b'{"m":9007199254740991,"n":0}'),
        # U+1F600 is D83D DE00 in UTF-16 and so sorts before U+E000, though its code point is larger.
        ({"\ue000": 1, "\U0001f600": 2}, '{"😀":2,"\ue000":1}'.encode()),
        ({}, b"{}"),
    ],
)
def test_known_answers(value: Any, expected: bytes) -> None:
    assert canonical_bytes(value) == expected


@pytest.mark.parametrize(
    "value",
    [1.5, float("nan"), MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, {1: "x"}, "\ud800", {"s": {1.0}}, b"bytes"],
)
def test_refuses_values_outside_the_profile(value: Any) -> None:
    with pytest.raises(EncodingError):
        canonical_bytes(value)


@pytest.mark.parametrize("text", ["1.0", "1e3", "NaN", "Infinity", "9007199254740992", "[-9007199254740992]"])
def test_strict_parse_refuses_non_integers_and_huge_integers(text: str) -> None:
    with pytest.raises(ValueError):
        loads_strict(text)


@given(json_values)
def test_agrees_with_independent_rfc8785(value: Any) -> None:
    try:
        ours = canonical_bytes(value)
    except EncodingError:
        # Only lone surrogates can make a hypothesis text unencodable.
        with pytest.raises(Exception):
            rfc8785.dumps(value)
        return
    assert ours == rfc8785.dumps(value)


@given(json_values)
def test_round_trips(value: Any) -> None:
    try:
        encoded = canonical_bytes(value)
    except EncodingError:
        return
    assert encode_checked(loads_strict(encoded)) == encoded


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 980, 100_000])
def test_one_depth_bound_for_encoding_and_parsing(depth: int) -> None:
    text = "[" * depth + "0" + "]" * depth
    if depth <= MAX_DEPTH:
        assert canonical_bytes(nested(depth)) == encode_checked(loads_strict(text.encode()))
        return
    with pytest.raises(ValueError, match=f"more than {MAX_DEPTH} deep"):  # a ValueError, never a RecursionError
        loads_strict(text)
    if depth < 900:
        with pytest.raises(EncodingError, match=f"more than {MAX_DEPTH} deep"):
            canonical_bytes(nested(depth))


def test_a_value_that_contains_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodingError):
        canonical_bytes(loop)


@given(json_values)
def test_nesting_depth_counts_containers_not_brackets_in_strings(value: Any) -> None:
    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        return 0
    try:
        text = canonical_bytes(value).decode()
    except EncodingError:
        return
    assert nesting_depth(text) == depth(value)
    assert nesting_depth('["[[{\\"", {"]]": "\\\\["}]') == 2
