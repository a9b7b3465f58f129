"""The benchmark's data and requests: what `make bench` loads and asks is what the issue describes."""

from __future__ import annotations

import datetime
from collections import Counter

import orjson

from bench import data, search
from bench.__main__ import scales

FIRST_DAY = datetime.date(2030, 3, 4)  # a Monday


def slots(practices: int, total: int) -> list[dict]:
    schedules = [f"b-sched-{p}-{s}" for p in range(1, practices + 1) for s in (1, 2)]
    return list(data._slots(schedules, total, FIRST_DAY))


def test_slots_are_spread_over_twelve_weeks_of_weekdays() -> None:
    made = slots(practices=10, total=1_200)
    days = {datetime.datetime.fromisoformat(s["start"]).date() for s in made}
    assert len(made) == 1_200 and len({s["id"] for s in made}) == 1_200
    assert len(days) == data.WEEKDAYS and all(d.weekday() < 5 for d in days)
    assert max(days) - min(days) < datetime.timedelta(weeks=12)


def test_a_schedule_never_has_two_slots_at_once() -> None:
    made = slots(practices=3, total=3_000)
    starts = Counter((s["schedule"]["reference"], s["start"]) for s in made)
    assert max(starts.values()) == 1
    for s in made:
        start, end = (datetime.datetime.fromisoformat(s[k]) for k in ("start", "end"))
        assert end - start == datetime.timedelta(minutes=15) and 8 <= start.hour < 16


def test_searches_carry_a_code_and_a_postal_prefix_where_practices_of_its_fachgebiet_are() -> None:
    codes = {data.specialty_of(p): [f"CODE{p}"] for p in range(1, 8)}
    made = search.requests(codes, practices=7)
    assert made and all(method == "POST" and path == "/fhir/$termine_suchen" for method, path, _ in made)
    for _, _, body in made:
        params = {
            p["name"]: next(v for k, v in p.items() if k != "name") for p in orjson.loads(body)["parameter"]
        }
        practice = int(params["vermittlungscode"].removeprefix("CODE"))
        assert params["plz"] == data.postal_code(practice)[0] and params["_count"] == 20


def test_every_searched_fachgebiet_is_referral_free_on_the_bench_server() -> None:
    free = search.REFERRAL_FREE.split(",")
    assert all(f"{data.FACHGEBIET_SYSTEM}|{data.specialty_of(p)}" in free for p in range(1, 50))


def test_read_and_search_are_measured_at_a_tenth_of_the_scale_too() -> None:
    assert scales(quick=False, scale=None) == [100_000, 1_000_000]
    assert scales(quick=True, scale=None) == [500, 5_000]
    assert scales(quick=False, scale=10_000_000) == [1_000_000, 10_000_000]
