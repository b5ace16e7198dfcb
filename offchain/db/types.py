"""Column types that keep chain values exact in every supported database."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

UINT256_MAX = 2**256 - 1
_UINT256_DIGITS = 78  # len(str(2**256 - 1))


class Uint256(TypeDecorator[int]):
    """An unsigned 256-bit integer, exact everywhere.

    PostgreSQL stores it as ``NUMERIC(78, 0)``. SQLite has no exact type that wide (its
    NUMERIC affinity turns large values into floats), so there it is text zero-padded to 78
    digits: exact, and ordered like the numbers it holds.
    """

    impl = String(_UINT256_DIGITS)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(_UINT256_DIGITS, 0, asdecimal=True))
        return dialect.type_descriptor(String(_UINT256_DIGITS))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"uint256 columns take int, got {type(value).__name__}")
        if not 0 <= value <= UINT256_MAX:
            raise ValueError(f"{value} is not a uint256")
        if dialect.name == "postgresql":
            return Decimal(value)
        return f"{value:0{_UINT256_DIGITS}d}"

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value)


def uint256_literal(value: int, dialect_name: str) -> Any:
    """The stored form of `value`, for comparisons written by hand in a repository."""
    return Decimal(value) if dialect_name == "postgresql" else f"{value:0{_UINT256_DIGITS}d}"
