"""Deterministic, realistic demo directory as FHIR R4 resources (pure data: no database, no wall clock).

`generate()` yields German practices in several cities with their doctors, Schedules (Terminprofile) and two
weeks of free Slots; the same settings always give the same resources, so demo links and tests stay valid.
"""

from __future__ import annotations

from collections.abc import Iterator

from terminhub.demo.directory import directory, directory_count
from terminhub.demo.names import DEMO_CITIES, FACHGEBIET_SYSTEM, FACHGEBIETE, City, Fachgebiet
from terminhub.demo.plan import DemoSettings, plan
from terminhub.demo.slots import slot_count, slots, working_days

__all__ = [
    "DEMO_CITIES",
    "FACHGEBIETE",
    "FACHGEBIET_SYSTEM",
    "City",
    "DemoSettings",
    "Fachgebiet",
    "count",
    "generate",
]


def generate(settings: DemoSettings) -> Iterator[dict]:
    """Yield FHIR R4 resources (JSON dicts with resourceType and id) in dependency order: every resource
    comes after the resources it references. The whole directory comes first, then the Slots, so that an
    interrupted load leaves every practice findable."""
    practices = plan(settings)
    for practice in practices:
        yield from directory(practice, settings)
    days = working_days(settings)
    for practice in practices:
        for doctor in practice.doctors:
            yield from slots(practice, doctor, days)


def count(settings: DemoSettings) -> int:
    """How many resources generate() will yield (for a progress bar), computed without generating them."""
    practices = plan(settings)
    days = working_days(settings)
    return sum(directory_count(p) + sum(slot_count(d, days) for d in p.doctors) for p in practices)
