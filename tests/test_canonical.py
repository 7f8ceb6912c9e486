"""Canonical JSON: known answers, the profile's refusals, and agreement with an independent RFC 8785."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from ledger.canonical import MAX_SAFE_INTEGER, canonical_bytes, encode_checked, loads_strict
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


def test_deep_nesting_is_refused_not_crashed() -> None:
    with pytest.raises(RecursionError):
        loads_strict("[" * 100_000 + "]" * 100_000)
