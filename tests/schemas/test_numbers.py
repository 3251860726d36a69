"""Decimals the store holds (`Decimal(38, 9)`), decided from digits and exponent alone."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from schemas.numbers import decimal_problem, fits_store, normalised, number_text_problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("9.99", None),
        ("0E+30", None),  # zero, whatever the exponent
        ("0E-18", None),
        ("1.000000000000000000000000000000", None),  # trailing zeros are not decimals
        ("99999999999999999999999999999.999999999", None),  # 29 + 9 digits
        ("123456789012345678901234567890", "more than 29 digits before"),
        ("1E+40", "more than 29 digits before"),
        ("0.0000000001", "more than 9 decimal places"),
        ("1e-10", "more than 9 decimal places"),
        ("0E+100000000", "exponent out of range"),
        ("1e999999999", "exponent out of range"),
        ("-1e999999999", "exponent out of range"),
        ("1e-999999999", "exponent out of range"),
        ("NaN", "finite"),
        ("-Infinity", "finite"),
    ],
)
def test_what_the_store_holds_once_normalised(text: str, problem: str | None) -> None:
    found = decimal_problem(Decimal(text))
    assert found == problem if problem is None else problem in (found or "")


@pytest.mark.parametrize(
    ("text", "plain"),
    [("0E+30", "0"), ("-0", "0"), ("9.990", "9.99"), ("1.5E+3", "1500"), ("1E-7", "1E-7"), ("100", "100")],
)
def test_normalised_drops_trailing_zeros_and_positive_exponents(text: str, plain: str) -> None:
    assert str(normalised(Decimal(text))) == plain
    assert normalised(Decimal(text)) == Decimal(text)


@pytest.mark.parametrize(
    ("text", "fits"),
    [
        ("9.99", True),
        ("0", True),
        ("-999999999.999999999", True),
        ("99999999999999999999999999999.999999999", True),
        ("0E+30", False),  # ClickHouse refuses this literal (ARGUMENT_OUT_OF_BOUND) though it is 0
        ("1E+29", False),
        ("1E+28", True),
        ("1.0000000001", False),  # ClickHouse would drop the last digit
        ("1" + "0" * 40 + "E-20", False),  # 41 digits: ClickHouse refuses it
        ("0E+100000000", False),
        ("1e999999999", False),
        ("NaN", False),
        ("Infinity", False),
    ],
)
def test_fits_store_reads_the_literal_as_written(text: str, fits: bool) -> None:
    assert fits_store(Decimal(text)) is fits


def test_every_normalised_amount_fits_as_written() -> None:
    texts = ["0E+30", "9.990", "1.5E+3", "12345678901234567890123456789.5", "1." + "0" * 30]
    for text in texts:
        assert decimal_problem(Decimal(text)) is None
        assert fits_store(normalised(Decimal(text)))


def test_huge_exponents_cost_nothing() -> None:
    started = time.perf_counter()
    for _ in range(10_000):
        assert not fits_store(Decimal("1e999999999999999999"))
        assert decimal_problem(Decimal("-1e999999999999999999")) is not None
        assert decimal_problem(Decimal("0E+999999999999999999")) is not None
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("9.99", None),
        ("-1.5e3", None),
        (".5", None),
        ("5.", None),
        ("+1", None),
        (" 1.5", "ASCII digits"),
        ("1_000", "ASCII digits"),
        ("\u0661\u0662", "ASCII digits"),  # Arabic-Indic digits
        ("\uff11", "ASCII digits"),  # fullwidth 1
        ("0x10", "ASCII digits"),
        ("1e", "ASCII digits"),
        ("", "ASCII digits"),
        ("nan", "finite"),
        ("-Infinity", "finite"),
        ("1" * 65, "longer than 64"),
    ],
)
def test_number_text(text: str, problem: str | None) -> None:
    found = number_text_problem(text)
    assert found == problem if problem is None else problem in (found or "")
