"""FHIR date, dateTime and instant values as half-open ranges [lo, hi) of epoch microseconds.

A value stands for the whole interval its precision implies (2026 is a year, 2026-11-22 a day in
TERMINHUB_TIMEZONE, 10:00:00+01:00 a second), which is what the R4 date prefixes compare.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from terminhub.clock import to_us

MIN_US = -(2**62)
MAX_US = 2**62

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?$"
)


class DateError(ValueError):
    """A value that is not a FHIR date/dateTime, or a time without an offset."""


def parse_range(value: str, tz: ZoneInfo) -> tuple[int, int]:
    """Parse a date/dateTime/instant into [lo, hi) microseconds."""
    value = value.strip()
    m = _DATE.match(value)
    if m:
        year, month, day = int(m[1]), int(m[2] or 1), int(m[3] or 1)
        try:
            start = date(year, month, day)
        except ValueError as exc:
            raise DateError(f"not a valid date: {value}") from exc
        try:
            if m[3]:
                end = start + timedelta(days=1)
            elif m[2]:
                end = date(year + (month == 12), month % 12 + 1, 1)
            else:
                end = date(year + 1, 1, 1)
        except (ValueError, OverflowError):  # the last day, month or year of 9999: open-ended
            return _local_midnight(start, tz), MAX_US
        return _local_midnight(start, tz), _local_midnight(end, tz)
    m = _DATETIME.match(value)
    if not m:
        raise DateError(f"not a valid date or dateTime: {value}")
    if not m[8]:
        raise DateError(f"a dateTime with a time must carry a UTC offset: {value}")
    iso = value.replace("Z", "+00:00")
    if m[7] and len(m[7]) > 6:
        iso = iso.replace("." + m[7], "." + m[7][:6])
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError as exc:
        raise DateError(f"not a valid dateTime: {value}") from exc
    lo = to_us(moment)
    if m[7]:
        step = 10 ** max(0, 6 - len(m[7]))
    elif m[6]:
        step = 1_000_000
    else:
        step = 60_000_000
    return lo, lo + step


def parse_instant(value: str, tz: ZoneInfo) -> int:
    return parse_range(value, tz)[0]


def _local_midnight(day: date, tz: ZoneInfo) -> int:
    return to_us(datetime(day.year, day.month, day.day, tzinfo=tz))


PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value
