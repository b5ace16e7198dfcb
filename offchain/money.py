"""Exact conversion between human amounts ("12.50") and token base units (12500000).

Amounts are integers in base units everywhere; decimals appear only at the edges, for
people, and are parsed with `Decimal` so that no float ever touches an amount.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation, localcontext

UINT256_MAX = 2**256 - 1


class AmountError(ValueError):
    """An amount that cannot be represented exactly in base units."""


def to_base_units(amount: str, decimals: int) -> int:
    """Parse a decimal amount such as ``"12.50"`` into base units of a token with
    ``decimals`` decimals. Rejects negatives, non-numbers and more fractional digits
    than the token has (rather than rounding money)."""
    if not 0 <= decimals <= 77:
        raise AmountError(f"token decimals must be between 0 and 77, got {decimals}")
    text = amount.strip().replace("_", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise AmountError(f"not a number: {amount!r}") from None
    if not value.is_finite():
        raise AmountError(f"not a finite amount: {amount!r}")
    if value < 0:
        raise AmountError(f"amount must not be negative: {amount!r}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > decimals:
        raise AmountError(
            f"{amount!r} has more than {decimals} decimal places, the token's precision"
        )
    # Decimal's default 28-digit context would round a uint256; 200 digits hold any of them.
    with localcontext() as context:
        context.prec = 200
        units = int(value.scaleb(decimals))
    if units > UINT256_MAX:
        raise AmountError(f"{amount!r} does not fit in a uint256")
    return units


def format_units(units: int, decimals: int) -> str:
    """Format base units as a decimal string with exactly ``decimals`` places."""
    if units < 0:
        raise AmountError(f"base units must not be negative: {units}")
    if decimals == 0:
        return str(units)
    whole, fraction = divmod(units, 10**decimals)
    return f"{whole}.{fraction:0{decimals}d}"
