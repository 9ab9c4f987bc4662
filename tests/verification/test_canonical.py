"""RFC 8785 style canonical JSON: the bytes every proof signature covers."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyxwiz.errors import ValidationError
from cyxwiz.verification.canonical import canonical_json, canonical_sha256


def test_rfc8785_section_3_2_2_example() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(value) == expected.encode()


def test_rfc8785_property_sorting_by_utf16() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = list(json.loads(canonical_json(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (123456789012345680000.0, "123456789012345680000"),
        (0.1, "0.1"),
        (9007199254740992, "9007199254740992"),
    ],
)
def test_numbers_in_ecmascript_form(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode()


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, 2**60 + 1, 10**400, b"bytes", {1: "x"}, object(), "\udc00"]
)
def test_values_without_a_canonical_form_are_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        canonical_json(bad)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip(number: float) -> None:
    assert float(canonical_json(number)) == number


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
    max_leaves=15,
)


@given(_values)
def test_parses_back_and_is_stable(value: object) -> None:
    encoded = canonical_json(value)
    # A JCS reader reads numbers as doubles; Python's json would make big integral ones exact ints.
    decoded = json.loads(encoded, parse_int=lambda s: int(s) if abs(int(s)) <= 2**53 else float(s))
    assert canonical_json(decoded) == encoded
    assert canonical_sha256(decoded) == canonical_sha256(value)
