"""Every random decision of the demo, drawn once into small plans.

Both `generate()` and `count()` expand the same plans, so the count is exact without building resources,
and one `random.Random(seed)` drawn in a fixed order makes the whole directory reproducible.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass

from terminhub.demo.names import (
    CITY_WEIGHTS,
    DEMO_CITIES,
    FACHGEBIETE,
    FAMILY,
    GIVEN_FEMALE,
    GIVEN_MALE,
    City,
    Fachgebiet,
)

# Consultation hours per weekday (0 = Monday … 6 = Sunday): (start, end) in minutes after local midnight.
Week = tuple[tuple[tuple[int, int], ...], ...]

# A few Schedules show the contract's restrictions (3.1); which one is fixed by position, not by chance,
# so that every directory of a dozen Schedules or more has both kinds.
_CONFIRMATION_EVERY = (12, 5)  # every 12th Schedule, counting from the 6th, books as `pending`
_RESTRICTED_EVERY = (12, 9)  # every 12th, counting from the 10th, is bookable by one face only
_RESTRICTED_TO = (("third-party",), ("scheduling-client", "practice"))


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """Size, seed and first day of the demo directory (`start` is today in Europe/Berlin, by the caller)."""

    practices: int = 50
    days: int = 14
    seed: int = 1
    start: datetime.date

    def __post_init__(self) -> None:
        if self.practices < 0 or self.days < 0:
            raise ValueError("practices and days must not be negative")


@dataclass(frozen=True)
class DoctorPlan:
    """One practitioner with their role and Schedule (Terminprofil)."""

    number: int  # 1-based within the practice
    given: str
    family: str
    gender: str
    doctor: bool  # carries the prefix "Dr. med."
    anr: str
    schedule_name: str
    slot_minutes: int
    week: Week
    video_weekday: int | None  # the last hour of this morning is a video consultation
    requires_confirmation: bool
    bookable_by: tuple[str, ...]

    @property
    def display(self) -> str:
        return f"{'Dr. med. ' if self.doctor else ''}{self.given} {self.family}"

    @property
    def short(self) -> str:
        return f"{'Dr. med. ' if self.doctor else ''}{self.family}"


@dataclass(frozen=True)
class PracticePlan:
    """One practice (Organization, its Location and HealthcareService) and its doctors."""

    number: int  # 1-based
    key: str  # the number as it appears in ids, zero-padded: "0001"
    city: City
    street: str
    postal_code: str
    lat: float
    lon: float
    bsnr: str
    phone: str
    fachgebiet: Fachgebiet
    doctors: tuple[DoctorPlan, ...]

    @property
    def name(self) -> str:
        first, *others = self.doctors
        label = self.fachgebiet.label
        if not others:
            return f"Praxis {first.display} – {label}"
        if len(others) == 1:
            return f"Gemeinschaftspraxis {first.short} & {others[0].short} – {label}"
        return f"Gemeinschaftspraxis {first.short} und Partner – {label}"


def anr_check_digit(six: str) -> str:
    """KBV check digit of an Arztnummer (7th digit): the six digits weighted 4, 9, 4, 9, 4, 9, summed; the
    difference of the sum's last digit to 10, with 10 written as 0."""
    total = sum(int(d) * (4 if i % 2 == 0 else 9) for i, d in enumerate(six))
    return str((10 - total % 10) % 10)


def plan(settings: DemoSettings) -> list[PracticePlan]:
    """Draw the whole directory; the order of draws is part of the seed's meaning, so only append to it."""
    rng = random.Random(settings.seed)
    bsnrs: set[str] = set()
    anrs: set[str] = set()
    practices: list[PracticePlan] = []
    schedule_count = 0
    width = max(4, len(str(settings.practices)))
    # The first practices visit every city and every specialty once, so that a small demo shows them all.
    cities = rng.sample(DEMO_CITIES, len(DEMO_CITIES))
    fields = rng.sample(FACHGEBIETE, len(FACHGEBIETE))
    for number in range(1, settings.practices + 1):
        if number <= len(cities):
            city = cities[number - 1]
        else:
            city = rng.choices(DEMO_CITIES, weights=CITY_WEIGHTS)[0]
        if number <= len(fields):
            fach = fields[number - 1]
        else:
            fach = rng.choices(FACHGEBIETE, weights=[f.weight for f in FACHGEBIETE])[0]
        bsnr = _unique(bsnrs, lambda c=city: c.kv + f"{rng.randrange(10**7):07d}")
        phone = city.phone_prefix + f"{rng.randrange(10**city.phone_digits):0{city.phone_digits}d}"
        street = f"{rng.choice(city.streets)} {rng.randint(1, 140)}"
        postal_code = rng.choice(city.postal_codes)
        lat = round(city.lat + rng.uniform(-0.035, 0.035), 6)
        lon = round(city.lon + rng.uniform(-0.055, 0.055), 6)
        morning = (rng.choice((450, 480, 510)), rng.choice((690, 720, 750)))  # 7:30-8:30 to 11:30-12:30
        n_doctors = rng.choices((1, 2, 3), weights=(4, 4, 2))[0]
        doctors = []
        for d in range(1, n_doctors + 1):
            female = rng.random() < 0.55
            given = rng.choice(GIVEN_FEMALE if female else GIVEN_MALE)
            family = rng.choice(FAMILY)
            anr = _unique(anrs, lambda: (six := f"{rng.randint(100000, 999999)}") + anr_check_digit(six))
            day_off = rng.randrange(5) if n_doctors > 1 else None  # part-time in group practices
            week = _week(rng, morning, day_off)
            video = rng.choice([i for i in range(5) if week[i]]) if rng.random() < 0.25 else None
            restricted = schedule_count % _RESTRICTED_EVERY[0] == _RESTRICTED_EVERY[1]
            doctors.append(
                DoctorPlan(
                    number=d,
                    given=given,
                    family=family,
                    gender="female" if female else "male",
                    doctor=rng.random() < 0.85,
                    anr=anr,
                    schedule_name=rng.choice(fach.schedule_names),
                    slot_minutes=rng.choice(fach.slot_minutes),
                    week=week,
                    video_weekday=video,
                    requires_confirmation=schedule_count % _CONFIRMATION_EVERY[0] == _CONFIRMATION_EVERY[1],
                    bookable_by=_RESTRICTED_TO[schedule_count // _RESTRICTED_EVERY[0] % 2]
                    if restricted
                    else (),
                )
            )
            schedule_count += 1
        key = f"{number:0{width}d}"
        practices.append(
            PracticePlan(number, key, city, street, postal_code, lat, lon, bsnr, phone, fach, tuple(doctors))
        )
    return practices


def _week(rng: random.Random, morning: tuple[int, int], day_off: int | None) -> Week:
    """Mornings Monday to Friday; afternoons on two or three of Monday, Tuesday, Thursday, as German
    practices keep Wednesday and Friday afternoons free."""
    afternoon = (rng.choice((840, 900)), rng.choice((1020, 1080)))  # 14:00/15:00 to 17:00/18:00
    afternoon_days = set(rng.sample((0, 1, 3), rng.choice((2, 3, 3))))
    week = []
    for weekday in range(7):
        if weekday >= 5 or weekday == day_off:
            week.append(())
        else:
            week.append((morning, afternoon) if weekday in afternoon_days else (morning,))
    return tuple(week)


def _unique(seen: set[str], draw: Callable[[], str]) -> str:
    """Draw until the value is new: BSNR and ANR identify a practice and a doctor."""
    while (value := draw()) in seen:
        pass
    seen.add(value)
    return value
