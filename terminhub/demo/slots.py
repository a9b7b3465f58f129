"""Free Slots of the demo Schedules: consultation hours on working days, in Europe/Berlin local time.

Times are built as local wall-clock times with zoneinfo, so every `start`/`end` carries the offset valid on
its own date (+01:00 in winter, +02:00 in summer), as a client in Germany reads them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from functools import lru_cache
from zoneinfo import ZoneInfo

from terminhub.demo.plan import DemoSettings, DoctorPlan, PracticePlan

BERLIN = ZoneInfo("Europe/Berlin")
SLOT_IDENTIFIER_SYSTEM = "urn:terminhub:demo-slot"
TERMINTYP_SYSTEM = "urn:terminhub:termintyp"
_VIDEO = {"system": TERMINTYP_SYSTEM, "code": "video", "display": "Videosprechstunde"}


def easter(year: int) -> datetime.date:
    """Easter Sunday (Gregorian, anonymous algorithm): the movable nationwide holidays hang on it."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    r = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * r) // 451
    month, day = divmod(h + r - 7 * m + 114, 31)
    return datetime.date(year, month, day + 1)


@lru_cache(maxsize=16)
def holidays(year: int) -> frozenset[datetime.date]:
    """Holidays in every German state; practices are closed then (state-only holidays are left out)."""
    sunday = easter(year)
    movable = (-2, 1, 39, 50)  # Karfreitag, Ostermontag, Christi Himmelfahrt, Pfingstmontag
    fixed = ((1, 1), (5, 1), (10, 3), (12, 25), (12, 26))
    return frozenset(
        [sunday + datetime.timedelta(days=n) for n in movable] + [datetime.date(year, m, d) for m, d in fixed]
    )


def working_days(settings: DemoSettings) -> list[datetime.date]:
    """The days of [start, start + days) on which practices open: Monday to Friday, not a holiday."""
    days = (settings.start + datetime.timedelta(days=n) for n in range(settings.days))
    return [d for d in days if d.weekday() < 5 and d not in holidays(d.year)]


def local(day: datetime.date, minutes: int) -> datetime.datetime:
    """A wall-clock time in Berlin on that day (minutes after midnight)."""
    return datetime.datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=BERLIN)


def slot_count(doctor: DoctorPlan, days: list[datetime.date]) -> int:
    """How many Slots `slots()` yields for this doctor, by arithmetic alone."""
    per_weekday = [sum((end - start) // doctor.slot_minutes for start, end in w) for w in doctor.week]
    return sum(per_weekday[d.weekday()] for d in days)


def slots(practice: PracticePlan, doctor: DoctorPlan, days: list[datetime.date]) -> Iterator[dict]:
    """Whole Slots of the doctor's default length filling each consultation window; a window's remainder
    shorter than a Slot is left out, as a practice calendar would."""
    for day, window, minute in slot_times(doctor, days):
        yield slot(practice, doctor, day, window, minute)


def slot_times(doctor: DoctorPlan, days: list[datetime.date]) -> Iterator[tuple[datetime.date, int, int]]:
    """(day, window, minute of the day) of each Slot `slots()` yields, in the same order, without building
    it: a benchmark that keeps one Slot in ten builds only those."""
    step = doctor.slot_minutes
    for day in days:
        for window, (window_start, window_end) in enumerate(doctor.week[day.weekday()]):
            for minute in range(window_start, window_end - step + 1, step):
                yield day, window, minute


def slot(practice: PracticePlan, doctor: DoctorPlan, day: datetime.date, window: int, minute: int) -> dict:
    """The doctor's Slot starting `minute` after midnight on `day`, in consultation window `window`."""
    step = doctor.slot_minutes
    slot_id = f"slot-{practice.key}-{doctor.number}-{day:%Y%m%d}-{minute // 60:02d}{minute % 60:02d}"
    resource = {
        "resourceType": "Slot",
        "id": slot_id,
        "identifier": [{"system": SLOT_IDENTIFIER_SYSTEM, "value": slot_id}],
        "schedule": {"reference": f"Schedule/sched-{practice.key}-{doctor.number}"},
        "status": "free",
        "start": local(day, minute).isoformat(),
        "end": local(day, minute + step).isoformat(),
    }
    window_end = doctor.week[day.weekday()][window][1]
    if day.weekday() == doctor.video_weekday and window == 0 and minute >= window_end - 60:
        resource["appointmentType"] = {"coding": [dict(_VIDEO)]}  # the last hour of the morning
    return resource
