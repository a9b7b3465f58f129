"""FHIR date, dateTime and instant values as half-open ranges [lo, hi) of epoch microseconds (contract 2.4:
date-only values are days in TERMINHUB_TIMEZONE; a time must carry an offset)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from terminhub.clock import to_us
from terminhub.fhir.dates import MAX_US, PREFIXES, DateError, parse_instant, parse_range, split_prefix

BERLIN = ZoneInfo("Europe/Berlin")
HOUR_US = 3_600_000_000


def local(*parts: int, tz: ZoneInfo = BERLIN) -> int:
    return to_us(datetime(*parts, tzinfo=tz))


def utc(*parts: int) -> int:
    return to_us(datetime(*parts, tzinfo=UTC))


# -- dates are local days, months and years ----------------------------------------------------------------
def test_a_year_runs_from_local_new_year_to_the_next() -> None:
    assert parse_range("2026", BERLIN) == (local(2026, 1, 1), local(2027, 1, 1))
    assert parse_range("2026", BERLIN) == (utc(2025, 12, 31, 23), utc(2026, 12, 31, 23))


def test_a_month_runs_to_the_first_of_the_next() -> None:
    assert parse_range("2026-02", BERLIN) == (local(2026, 2, 1), local(2026, 3, 1))
    assert parse_range("2026-12", BERLIN) == (local(2026, 12, 1), local(2027, 1, 1))


def test_a_month_with_the_change_to_summer_time_is_an_hour_short() -> None:
    lo, hi = parse_range("2026-03", BERLIN)
    assert hi - lo == 31 * 24 * HOUR_US - HOUR_US


def test_a_day_is_a_local_day() -> None:
    """2026-11-22 in Berlin is 2026-11-21T23:00Z to 2026-11-22T23:00Z."""
    assert parse_range("2026-11-22", BERLIN) == (utc(2026, 11, 21, 23), utc(2026, 11, 22, 23))
    assert parse_range("2026-07-01", BERLIN) == (utc(2026, 6, 30, 22), utc(2026, 7, 1, 22))


@pytest.mark.parametrize(
    ("day", "hours"),
    [("2026-03-29", 23), ("2026-10-25", 25), ("2026-06-15", 24), ("2026-12-31", 24), ("2028-02-29", 24)],
)
def test_days_of_the_clock_change_are_23_or_25_hours_long(day: str, hours: int) -> None:
    lo, hi = parse_range(day, BERLIN)
    assert hi - lo == hours * HOUR_US


def test_the_time_zone_decides_where_a_day_lies() -> None:
    new_york = ZoneInfo("America/New_York")
    assert parse_range("2026-11-22", new_york) == (utc(2026, 11, 22, 5), utc(2026, 11, 23, 5))


def test_dates_before_1970_are_exact() -> None:
    assert parse_range("1964-08-12", BERLIN) == (utc(1964, 8, 11, 23), utc(1964, 8, 12, 23))


@pytest.mark.parametrize("value", ["9999", "9999-12", "9999-12-31"])
def test_the_last_representable_periods_are_open_ended(value: str) -> None:
    """Periods ending after year 9999 end at the largest instant instead of failing."""
    lo, hi = parse_range(value, BERLIN)
    assert lo < hi == MAX_US


# -- dateTimes have the precision they are written with -------------------------------------------------
@pytest.mark.parametrize(
    ("value", "lo", "width_us"),
    [
        ("2026-11-22T10:00+01:00", (2026, 11, 22, 9, 0), 60_000_000),
        ("2026-11-22T10:00:30+01:00", (2026, 11, 22, 9, 0, 30), 1_000_000),
        ("2026-11-22T10:00:30.5+01:00", (2026, 11, 22, 9, 0, 30, 500_000), 100_000),
        ("2026-11-22T10:00:30.25Z", (2026, 11, 22, 10, 0, 30, 250_000), 10_000),
        ("2026-11-22T10:00:30.123456Z", (2026, 11, 22, 10, 0, 30, 123_456), 1),
        ("2026-11-22T10:00:30.123456789Z", (2026, 11, 22, 10, 0, 30, 123_456), 1),
        ("2026-11-22T10:00:30-05:00", (2026, 11, 22, 15, 0, 30), 1_000_000),
    ],
)
def test_a_datetime_stands_for_the_interval_of_its_precision(value: str, lo: tuple, width_us: int) -> None:
    assert parse_range(value, BERLIN) == (utc(*lo), utc(*lo) + width_us)


def test_z_and_plus_zero_are_the_same_instant() -> None:
    assert parse_range("2026-11-22T10:00:00Z", BERLIN) == parse_range("2026-11-22T10:00:00+00:00", BERLIN)


def test_a_datetime_with_an_offset_ignores_the_server_time_zone() -> None:
    value = "2026-03-29T02:30:00+01:00"  # does not exist on Berlin's wall clock; the offset decides
    assert parse_range(value, BERLIN) == parse_range(value, ZoneInfo("America/New_York"))


def test_datetimes_before_1970_with_fractions_are_exact() -> None:
    assert parse_range("1969-12-31T23:59:59.5Z", BERLIN) == (-500_000, -400_000)


def test_parse_instant_is_the_start_of_the_range() -> None:
    assert parse_instant("2026-11-22", BERLIN) == utc(2026, 11, 21, 23)
    assert parse_instant("2026-11-22T10:00:00.5Z", BERLIN) == utc(2026, 11, 22, 10) + 500_000


def test_surrounding_spaces_are_ignored() -> None:
    assert parse_range(" 2026-11-22 ", BERLIN) == parse_range("2026-11-22", BERLIN)


# -- what is refused --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["2026-11-22T10:00:00", "2026-11-22T10:00", "2026-11-22T10:00:00.5"])
def test_a_time_without_offset_is_refused(value: str) -> None:
    """A dateTime with a time and no offset cannot be placed on the time line: DateError (→ 400)."""
    with pytest.raises(DateError, match="offset"):
        parse_range(value, BERLIN)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "soon",
        "26-11-22",
        "2026-1-5",
        "2026-13",
        "2026-02-30",
        "2026-00",
        "0000",
        "2026-11-22T24:00:00Z",
        "2026-11-22T10:61:00Z",
        "2026-11-22T10:00:00+25:00",
        "2026-11-22 10:00:00Z",
        "2026-11-22T10Z",
        "2026-11-22t10:00:00z",
    ],
)
def test_malformed_values_are_refused(value: str) -> None:
    with pytest.raises(DateError):
        parse_range(value, BERLIN)


def test_date_errors_are_value_errors() -> None:
    """Callers that catch ValueError also catch DateError."""
    assert issubclass(DateError, ValueError)


# -- search prefixes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_r4_prefix_is_split_off(prefix: str) -> None:
    assert split_prefix(f"{prefix}2026-11-22") == (prefix, "2026-11-22")


@pytest.mark.parametrize("value", ["2026-11-22", "2026", "2026-11-22T10:00:00Z"])
def test_without_a_prefix_the_comparison_is_eq(value: str) -> None:
    assert split_prefix(value) == ("eq", value)


def test_the_r4_prefixes_are_known() -> None:
    assert set(PREFIXES) == {"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}


def test_an_unknown_prefix_is_left_for_the_parser_to_refuse() -> None:
    prefix, rest = split_prefix("xx2026")
    assert prefix == "eq"
    with pytest.raises(DateError):
        parse_range(rest, BERLIN)


def test_a_prefixed_value_spans_what_the_unprefixed_one_does() -> None:
    _, rest = split_prefix("ge2026-03-29")
    assert parse_range(rest, BERLIN) == (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
