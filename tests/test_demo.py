"""The demo directory: deterministic, countable, in dependency order, valid FHIR R4, times right in Berlin."""

from __future__ import annotations

import datetime
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import get_fhir_model_class

from terminhub.demo import DEMO_CITIES, FACHGEBIET_SYSTEM, FACHGEBIETE, DemoSettings, count, generate
from terminhub.demo.plan import anr_check_digit
from terminhub.demo.slots import easter

BERLIN = ZoneInfo("Europe/Berlin")
BSNR = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
SMALL = DemoSettings(practices=12, days=7, seed=7, start=datetime.date(2026, 11, 23))
DIRECTORY = DemoSettings(practices=300, days=0, seed=3, start=datetime.date(2026, 11, 23))


@cache
def resources(settings: DemoSettings) -> tuple[dict, ...]:
    return tuple(generate(settings))


def of_type(settings: DemoSettings, resource_type: str) -> list[dict]:
    return [r for r in resources(settings) if r["resourceType"] == resource_type]


def references(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def test_same_seed_same_output_other_seed_other_output() -> None:
    again = DemoSettings(practices=12, days=7, seed=7, start=datetime.date(2026, 11, 23))
    assert list(generate(again)) == list(resources(SMALL))
    other = DemoSettings(practices=12, days=7, seed=8, start=datetime.date(2026, 11, 23))
    assert list(generate(other)) != list(resources(SMALL))


@pytest.mark.parametrize(
    "settings",
    [
        SMALL,
        DemoSettings(practices=0, start=datetime.date(2026, 1, 1)),
        DemoSettings(practices=3, days=0, start=datetime.date(2026, 1, 1)),
        DemoSettings(practices=5, days=40, seed=99, start=datetime.date(2026, 12, 20)),
    ],
)
def test_count_equals_what_generate_yields(settings: DemoSettings) -> None:
    assert count(settings) == sum(1 for _ in generate(settings))


def test_default_volume_is_counted_exactly_and_stays_moderate() -> None:
    settings = DemoSettings(start=datetime.date(2026, 10, 20))
    kinds = Counter(r["resourceType"] for r in generate(settings))
    assert count(settings) == sum(kinds.values())
    assert kinds["Organization"] == kinds["Location"] == kinds["HealthcareService"] == 50
    assert 10_000 <= kinds["Slot"] <= 40_000


def test_ids_are_valid_and_unique_per_type() -> None:
    for settings in (SMALL, DIRECTORY):
        ids = Counter((r["resourceType"], r["id"]) for r in resources(settings))
        assert all(FHIR_ID.fullmatch(i) for _, i in ids)
        assert [key for key, n in ids.items() if n > 1] == []


def test_bsnr_nine_digits_unique_and_anr_seven_digits_unique_with_check_digit() -> None:
    bsnrs = [
        i["value"] for o in of_type(DIRECTORY, "Organization") for i in o["identifier"] if i["system"] == BSNR
    ]
    assert len(bsnrs) == 300 == len(set(bsnrs))
    assert all(re.fullmatch(r"\d{9}", b) for b in bsnrs)
    anrs = [
        i["value"] for p in of_type(DIRECTORY, "Practitioner") for i in p["identifier"] if i["system"] == ANR
    ]
    assert len(anrs) == len(of_type(DIRECTORY, "Practitioner")) == len(set(anrs))
    assert all(re.fullmatch(r"\d{7}", a) and anr_check_digit(a[:6]) == a[6] for a in anrs)


def test_anr_check_digit_follows_the_kbv_rule() -> None:
    # 1*4 + 2*9 + 3*4 + 4*9 + 5*4 + 6*9 = 144 -> 10 - 4 = 6; a sum ending in 0 gives 0.
    assert anr_check_digit("123456") == "6"
    assert anr_check_digit("000000") == "0"


def test_every_reference_points_to_an_earlier_resource() -> None:
    seen: set[str] = set()
    for resource in resources(SMALL):
        for ref in references(resource):
            assert ref in seen, f"{resource['resourceType']}/{resource['id']} refers to {ref} too early"
        seen.add(f"{resource['resourceType']}/{resource['id']}")


def test_every_resource_validates_as_fhir_r4() -> None:
    for resource in resources(SMALL):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_practice_shape() -> None:
    """Organization, Location, service, 1-3 doctors each with role and Schedule, one role without doctor."""
    cities = {c.name: c for c in DEMO_CITIES}
    roles = defaultdict(list)
    for role in of_type(DIRECTORY, "PractitionerRole"):
        roles[role["organization"]["reference"]].append(role)
    for org in of_type(DIRECTORY, "Organization"):
        ref = f"Organization/{org['id']}"
        assert " – " in org["name"] and org["telecom"][0]["system"] == "phone"
        address = org["address"][0]
        assert address["country"] == "DE" and address["postalCode"] in cities[address["city"]].postal_codes
        practice_roles = [r for r in roles[ref] if "practitioner" not in r]
        assert len(practice_roles) == 1
        assert 1 <= len(roles[ref]) - 1 <= 3
    for location in of_type(DIRECTORY, "Location"):
        city = cities[location["address"]["city"]]
        assert abs(location["position"]["latitude"] - city.lat) < 0.05
        assert abs(location["position"]["longitude"] - city.lon) < 0.07
        assert location["managingOrganization"] == {"reference": "Organization/org-" + location["id"][4:]}
    assert {o["address"][0]["city"] for o in of_type(DIRECTORY, "Organization")} == set(cities)
    assert len(of_type(DIRECTORY, "Schedule")) == len(of_type(DIRECTORY, "Practitioner"))
    practitioners = of_type(DIRECTORY, "Practitioner")
    doctors = sum("prefix" in p["name"][0] for p in practitioners)
    assert len(practitioners) / 2 < doctors < len(practitioners)


def test_schedules_carry_terminprofil_fields_and_a_few_restrictions() -> None:
    schedules = of_type(DIRECTORY, "Schedule")
    codes = {f.code for f in FACHGEBIETE}
    features: Counter[str] = Counter()
    for schedule in schedules:
        ext = {e["url"]: e for e in schedule["extension"]}
        assert ext["urn:terminhub:schedule-name"]["valueString"]
        assert ext["urn:terminhub:default-slot-minutes"]["valuePositiveInt"] in (10, 15, 20)
        assert schedule["active"] is True
        (coding,) = schedule["specialty"][0]["coding"]
        assert coding["system"] == FACHGEBIET_SYSTEM and coding["code"] in codes and coding["display"]
        assert [a["reference"].split("/")[0] for a in schedule["actor"]] == ["PractitionerRole", "Location"]
        features.update(url for url in ext if url.endswith(("bookable-by", "requires-confirmation")))
    assert 0 < features["urn:terminhub:bookable-by"] < len(schedules) / 5
    assert 0 < features["urn:terminhub:requires-confirmation"] < len(schedules) / 5
    assert {s["specialty"][0]["coding"][0]["code"] for s in schedules} == codes


def test_slots_fit_their_schedule() -> None:
    schedules = {f"Schedule/{s['id']}": s for s in of_type(SMALL, "Schedule")}
    slots = of_type(SMALL, "Slot")
    assert slots and all(s["status"] == "free" for s in slots)
    assert len({s["identifier"][0]["value"] for s in slots}) == len(slots)
    assert all(s["identifier"][0]["system"] == "urn:terminhub:demo-slot" for s in slots)
    for slot in slots:
        schedule = schedules[slot["schedule"]["reference"]]
        minutes = next(e["valuePositiveInt"] for e in schedule["extension"] if "default-slot" in e["url"])
        start, end = (datetime.datetime.fromisoformat(slot[k]) for k in ("start", "end"))
        assert end - start == datetime.timedelta(minutes=minutes)
        horizon = schedule["planningHorizon"]
        assert datetime.datetime.fromisoformat(horizon["start"]) <= start
        assert end <= datetime.datetime.fromisoformat(horizon["end"])
        assert 7 <= start.hour < 18
    videos = [s for s in slots if "appointmentType" in s]
    assert 0 < len(videos) < len(slots) / 10
    assert all(
        v["appointmentType"]["coding"][0]
        == {"system": "urn:terminhub:termintyp", "code": "video", "display": "Videosprechstunde"}
        for v in videos
    )


@pytest.mark.parametrize(
    ("start", "switch", "before", "after"),
    [
        (datetime.date(2026, 10, 20), "2026-10-25", "+02:00", "+01:00"),  # back to winter time
        (datetime.date(2026, 3, 23), "2026-03-29", "+01:00", "+02:00"),  # on to summer time
    ],
)
def test_offsets_follow_berlin_daylight_saving_time(
    start: datetime.date, switch: str, before: str, after: str
) -> None:
    settings = DemoSettings(practices=4, days=14, start=start)
    slots = [r for r in generate(settings) if r["resourceType"] == "Slot"]
    days = {s["start"][:10] for s in slots}
    assert min(days) < switch < max(days)
    for slot in slots:
        for key in ("start", "end"):
            assert slot[key].endswith(before if slot[key][:10] < switch else after), slot[key]
            moment = datetime.datetime.fromisoformat(slot[key])
            assert moment.astimezone(BERLIN).replace(tzinfo=None) == moment.replace(tzinfo=None)


def test_no_slots_on_weekends_or_nationwide_holidays() -> None:
    # 2025-10-03 (Tag der Deutschen Einheit) is a Friday; the window also spans two weekends.
    settings = DemoSettings(practices=4, days=14, start=datetime.date(2025, 9, 27))
    slots = [r for r in generate(settings) if r["resourceType"] == "Slot"]
    starts = [datetime.datetime.fromisoformat(s["start"]) for s in slots]
    assert starts
    assert all(s.weekday() < 5 for s in starts)
    assert datetime.date(2025, 10, 3) not in {s.date() for s in starts}
    assert min(starts).date() == datetime.date(2025, 9, 29)


def test_easter() -> None:
    assert [easter(y) for y in (2024, 2025, 2026)] == [
        datetime.date(2024, 3, 31),
        datetime.date(2025, 4, 20),
        datetime.date(2026, 4, 5),
    ]


def test_settings_refuse_negative_sizes() -> None:
    with pytest.raises(ValueError):
        DemoSettings(practices=-1, start=datetime.date(2026, 1, 1))
