"""Decimals the store holds: ClickHouse `Decimal(38, 9)` (the events' `amount`, the aggregates'
`sum`, `min` and `max`), and the checks that say so without ever overflowing.

Every check reads the decimal's digits and exponent (`Decimal.as_tuple()`: plain integers) before
any arithmetic, so `1e999999999` or `0E+100000000` costs what its text costs; what arithmetic is
left runs in `STORE_CONTEXT`, which traps instead of rounding.
"""

from __future__ import annotations

import re
from decimal import (
    Clamped,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Subnormal,
    Underflow,
    localcontext,
)

STORE_PRECISION = 38  # digits in all
STORE_SCALE = 9  # digits after the point
STORE_INTEGER_DIGITS = STORE_PRECISION - STORE_SCALE  # 29 before it
# Wider than the exponent of any literal a storable value needs (38 digits, 9 of them decimals,
# written with trailing zeros or in scientific notation), narrow enough that no check pays for it.
MAX_EXPONENT = 64
MAX_NUMBER_TEXT = 64  # characters of a number sent as a string

# The arithmetic of stored decimals: exact (38 digits) or an error, never a silent rounding.
STORE_CONTEXT = Context(
    prec=STORE_PRECISION,
    Emax=STORE_INTEGER_DIGITS - 1,
    Emin=-STORE_SCALE,
    traps=[InvalidOperation, DivisionByZero, Overflow, Underflow, Subnormal, Inexact, Rounded, Clamped],
)

# A number as text: ASCII digits, an optional sign, point and exponent ("9.99", "-1E-7", ".5").
# No spaces, underscores, non-ASCII digits, hexadecimal, NaN or Infinity.
NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NOT_FINITE = {"nan", "snan", "inf", "infinity"}


def number_text_problem(text: str) -> str | None:
    """Why `text` is not a plain decimal number, or None when it is. Checked before parsing."""
    if len(text) > MAX_NUMBER_TEXT:
        return f"is longer than {MAX_NUMBER_TEXT} characters"
    if not NUMBER_TEXT.fullmatch(text):
        if text.strip().lstrip("+-").lower() in _NOT_FINITE:
            return "must be a finite number"
        return 'must be a decimal number written with ASCII digits, such as "9.99" or "1.5e3"'
    return None


def _parts(value: Decimal) -> tuple[int, tuple[int, ...], int] | None:
    """(sign, digits, exponent) of `value` as written, or None when it is not finite."""
    sign, digits, exponent = value.as_tuple()
    return None if isinstance(exponent, str) else (sign, digits, exponent)


def _significant(sign: int, digits: tuple[int, ...], exponent: int) -> tuple[int, tuple[int, ...], int]:
    """The same number without leading or trailing zeros (zero has no digits): integer work only."""
    start = 0
    while start < len(digits) and digits[start] == 0:
        start += 1
    end = len(digits)
    while end > start and digits[end - 1] == 0:
        end -= 1
    return sign, tuple(digits[start:end]), exponent + len(digits) - end


def decimal_problem(value: Decimal) -> str | None:
    """Why `value` cannot be stored in `Decimal(38, 9)` once normalised (trailing zeros dropped,
    any zero is 0), or None when it can. The reason completes a sentence about the value."""
    parts = _parts(value)
    if parts is None:
        return "must be a finite decimal"
    if not -MAX_EXPONENT <= parts[2] <= MAX_EXPONENT:
        return f"has an exponent out of range (at most ±{MAX_EXPONENT})"
    _, digits, exponent = _significant(*parts)
    if not digits:
        return None
    if exponent < -STORE_SCALE:
        return f"has more than {STORE_SCALE} decimal places"
    if len(digits) + exponent > STORE_INTEGER_DIGITS:
        return f"has more than {STORE_INTEGER_DIGITS} digits before the decimal point"
    return None


def normalised(value: Decimal) -> Decimal:
    """`value` (one `decimal_problem` accepts) without trailing zeros and without a positive
    exponent: `0E+30` is `0`, `9.990` is `9.99`, `1.5E+3` is `1500`. Built from digits, exactly."""
    parts = _parts(value)
    if parts is None:
        raise ValueError(f"{value} is not finite")
    sign, digits, exponent = _significant(*parts)
    if not digits:
        return Decimal(0)
    if exponent > 0:
        digits, exponent = digits + (0,) * exponent, 0
    return Decimal((sign, digits, exponent))


def exceeds(value: Decimal, bound: Decimal) -> bool:
    """|value| > bound, for a `value` that `decimal_problem` accepts, in the bounded context."""
    with localcontext(STORE_CONTEXT):
        return value.copy_abs() > bound


def fits_store(value: Decimal) -> bool:
    """True when `value`, exactly as written, is a `Decimal(38, 9)` literal ClickHouse stores
    without loss: finite, at most 38 digits, at most 9 of them after the point and at most 29
    before it (leading and trailing zeros count, as in the text). The ingest writes every amount
    normalised, so each one fits; a record that reached a topic another way may not (the
    streams worker dead-letters it, the sink dead-letters what ClickHouse refuses). No
    arithmetic, whatever the exponent."""
    parts = _parts(value)
    if parts is None:
        return False
    _, digits, exponent = parts
    return (
        len(digits) <= STORE_PRECISION
        and exponent >= -STORE_SCALE
        and len(digits) + exponent <= STORE_INTEGER_DIGITS
    )
