"""The benchmark's data and requests: the demo directory at a larger size, thinned to the wanted number of
Slots over all 12 weeks, split into two scales; searches as third parties make them."""

from __future__ import annotations

import datetime
from collections import Counter

import orjson

from bench import data, search
from bench.__main__ import default_scale

DEMO = data.settings(practices=4)


def chosen(step: int, stages: range) -> list[dict]:
    return list(data._slots(DEMO, step, stages))


def test_the_directory_comes_whole_before_any_slot() -> None:
    kinds = Counter(r["resourceType"] for r in data._directory(DEMO))
    assert kinds["Organization"] == 4 and kinds["Schedule"] >= 4 and "Slot" not in kinds


def test_directory_bundles_hold_whole_practices_so_they_can_be_posted_side_by_side() -> None:
    demo = data.settings(practices=300)
    batches = list(data._directory_batches(demo))
    assert len(batches) > 1
    assert [r["id"] for b in batches for r in b] == [r["id"] for r in data._directory(demo)]
    for batch in batches:
        own = {f"{r['resourceType']}/{r['id']}" for r in batch}
        assert {ref for r in batch for ref in _references(r)} <= own
    assert sum(r["resourceType"] == "Organization" for b in batches for r in b) == 300


def _references(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for value in node.values() for r in _references(value)]
    if isinstance(node, list):
        return [r for item in node for r in _references(item)]
    return []


def test_every_kth_slot_is_kept_over_all_twelve_weeks_and_every_schedule() -> None:
    total = data.demo_slot_count(DEMO)
    every = chosen(1, range(data.STAGES))
    thin = chosen(10, range(data.STAGES))
    assert len(every) == total and len(thin) == -(-total // 10)
    days = {datetime.datetime.fromisoformat(s["start"]).date() for s in thin}
    assert max(days) - min(days) > datetime.timedelta(weeks=11)
    assert {s["schedule"]["reference"] for s in thin} == {s["schedule"]["reference"] for s in every}
    assert min(days) > datetime.date.today()  # nothing booked in the run lies in the past


def test_the_two_scales_split_the_chosen_slots_one_to_nine() -> None:
    first, rest = chosen(3, range(0, 1)), chosen(3, range(1, data.STAGES))
    assert {s["id"] for s in first}.isdisjoint(s["id"] for s in rest)
    assert len(first) + len(rest) == len(chosen(3, range(data.STAGES)))
    assert abs(len(rest) - 9 * len(first)) <= 9


def test_schedules_closed_to_scheduling_clients_are_known() -> None:
    schedules = [r for r in data._directory(data.settings(practices=30)) if r["resourceType"] == "Schedule"]
    closed = [s for s in schedules if data._not_for_scheduling_clients(s)]
    assert closed and len(closed) < len(schedules)


def test_searches_carry_a_code_and_a_postal_prefix_where_practices_of_its_fachgebiet_are() -> None:
    places = [("01", "10115"), ("01", "80331"), ("05", "50667")]
    made = search.requests({"01": ["CODE01"], "05": ["CODE05"]}, places)
    bodies = [{p["name"]: list(p.values())[1] for p in orjson.loads(b)["parameter"]} for _, _, b in made]
    assert all(m == "POST" and path == "/fhir/$termine_suchen" for m, path, _ in made)
    assert {(b["vermittlungscode"], b["plz"]) for b in bodies} == {
        ("CODE01", "1"),
        ("CODE01", "8"),
        ("CODE05", "5"),
    }
    assert all(b["_count"] == 20 for b in bodies)


def test_every_fachgebiet_is_referral_free_on_the_bench_server() -> None:
    free = search.REFERRAL_FREE.split(",")
    assert all(f"{search.FACHGEBIET_SYSTEM}|{p.fachgebiet.code}" in free for p in data.practice_plans(50))


def test_the_default_scale_is_a_million_slots() -> None:
    assert default_scale(quick=False) == 1_000_000 and default_scale(quick=True) == 5_000


def test_a_login_renews_its_token_before_it_runs_out(monkeypatch) -> None:  # noqa: ANN001
    issued = iter(["first", "second"])
    login = data.Login("http://bench.invalid", "id", "secret")

    class Answer:
        def raise_for_status(self) -> None: ...

        def json(self) -> dict:
            return {"access_token": next(issued), "expires_in": data.Login.RENEW_S + 60}

    monkeypatch.setattr(data.httpx.Client, "post", lambda *_a, **_k: Answer())
    clock = iter([0.0, 0.0, 30.0, 61.0, 61.0])
    monkeypatch.setattr(data.time, "monotonic", lambda: next(clock))
    assert [login.bearer(), login.bearer(), login.bearer()] == ["first", "first", "second"]
