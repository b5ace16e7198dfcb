"""Exact amount parsing: no floats, no rounding of money."""

from __future__ import annotations

import pytest

from offchain.money import UINT256_MAX, AmountError, format_units, to_base_units


@pytest.mark.parametrize(
    ("text", "decimals", "units"),
    [
        ("9.99", 6, 9_990_000),
        ("0.000001", 6, 1),
        ("1_000_000", 6, 1_000_000_000_000),
        ("250", 0, 250),
        ("0.1", 18, 100_000_000_000_000_000),  # a float would give 100000000000000005...
        (" 12.50 ", 2, 1250),
        ("1e3", 6, 1_000_000_000),
    ],
)
def test_parses_exactly(text: str, decimals: int, units: int) -> None:
    assert to_base_units(text, decimals) == units


@pytest.mark.parametrize(
    ("text", "decimals", "message"),
    [
        ("9.999", 2, "more than 2 decimal places"),
        ("-1", 6, "must not be negative"),
        ("abc", 6, "not a number"),
        ("NaN", 6, "not a finite amount"),
        ("Infinity", 6, "not a finite amount"),
        (str(UINT256_MAX + 1), 0, "does not fit in a uint256"),
    ],
)
def test_rejects_what_is_not_an_exact_amount(text: str, decimals: int, message: str) -> None:
    with pytest.raises(AmountError, match=message):
        to_base_units(text, decimals)


def test_uint256_max_round_trips() -> None:
    assert to_base_units(format_units(UINT256_MAX, 18), 18) == UINT256_MAX


def test_formats_with_every_decimal_place() -> None:
    assert format_units(9_990_000, 6) == "9.990000"
    assert format_units(5, 0) == "5"
    with pytest.raises(AmountError):
        format_units(-1, 6)


def test_rejects_impossible_decimals() -> None:
    with pytest.raises(AmountError, match="between 0 and 77"):
        to_base_units("1", 78)
