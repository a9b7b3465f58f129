"""The change feed in the store (contract 5, DESIGN rule 7): Provenances written with the change, stamped
in order at the end of the transaction, owned by the practices that held the target, kept for the
retention."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import func, select

from terminhub.access.policy import practice_scope
from terminhub.clock import FixedClock, to_us
from terminhub.fhir.search_request import parse_search
from terminhub.store import feed, schema
from terminhub.store.database import Database
from terminhub.store.repository import Actor, Repository
from terminhub.store.search import SearchEngine
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

BERLIN = ZoneInfo("Europe/Berlin")
BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ADMIN = Actor("th-admin", "admin", "Betrieb")
START = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("feed")) as database:
        yield database


def write(db: Database, clock: FixedClock, work) -> list:  # noqa: ANN001 - work(repo) -> result
    with db.transaction(write=True) as conn:
        return work(Repository(conn, clock, BERLIN, ADMIN))


def provenances_of(db: Database, resource_type: str, resource_id: str) -> list[dict]:
    R, S = schema.resources, schema.search_index
    with db.transaction() as conn:
        ids = select(S.c.id).where(
            S.c.type == "Provenance",
            S.c.param == "target",
            S.c.ref_type == resource_type,
            S.c.ref_id == resource_id,
        )
        rows = conn.execute(
            select(R.c.content).where(R.c.type == "Provenance", R.c.id.in_(ids)).order_by(R.c.last_updated)
        )
        return [orjson.loads(row.content) for row in rows]


def owners_of(db: Database, provenance_id: str) -> set[str]:
    F = schema.feed_owners
    with db.transaction() as conn:
        return {row.bsnr for row in conn.execute(select(F.c.bsnr).where(F.c.provenance_id == provenance_id))}


def practice(db: Database, clock: FixedClock, bsnr: str) -> str:
    """An Organization with `bsnr`, its PractitionerRole and a Schedule; returns the Schedule id."""

    def build(repo: Repository) -> str:
        org = repo.save("Organization", {"identifier": [{"system": BSNR_SYSTEM, "value": bsnr}]})
        role = repo.save("PractitionerRole", {"organization": {"reference": f"Organization/{org.id}"}})
        schedule = repo.save("Schedule", {"actor": [{"reference": f"PractitionerRole/{role.id}"}]})
        return schedule.id

    return write(db, clock, build)


def slot(schedule: str) -> dict:
    return {
        "schedule": {"reference": f"Schedule/{schedule}"},
        "status": "free",
        "start": "2030-04-01T09:00:00+02:00",
        "end": "2030-04-01T09:15:00+02:00",
    }


def bsnr() -> str:
    return str(uuid.uuid4().int)[:9]


def test_every_change_of_a_synced_type_gets_one_provenance_in_its_transaction(db: Database) -> None:
    clock = FixedClock(START)
    schedule = practice(db, clock, bsnr())
    created = write(db, clock, lambda repo: repo.save("Slot", slot(schedule)))
    write(
        db, clock, lambda repo: repo.save("Slot", slot(schedule) | {"comment": "x"}, resource_id=created.id)
    )
    write(db, clock, lambda repo: repo.delete("Slot", created.id))
    found = provenances_of(db, "Slot", created.id)
    assert [p["activity"]["coding"][0]["code"] for p in found] == ["CREATE", "UPDATE", "DELETE"]
    assert [p["target"][0]["reference"] for p in found] == [
        f"Slot/{created.id}/_history/{v}" for v in (1, 2, 3)
    ]


def test_a_rolled_back_change_leaves_no_provenance(db: Database) -> None:
    clock = FixedClock(START)
    schedule = practice(db, clock, bsnr())
    kept: list[str] = []
    with pytest.raises(RuntimeError), db.transaction(write=True) as conn:
        kept.append(Repository(conn, clock, BERLIN, ADMIN).save("Slot", slot(schedule)).id)
        raise RuntimeError("the request failed")
    assert provenances_of(db, "Slot", kept[0]) == []


def test_stamps_increase_by_at_least_a_microsecond_even_when_the_clock_stands_still(db: Database) -> None:
    clock = FixedClock(START)
    schedule = practice(db, clock, bsnr())
    a = write(db, clock, lambda repo: [repo.save("Slot", slot(schedule)).id for _ in range(3)])
    b = write(db, clock, lambda repo: repo.save("Slot", slot(schedule)).id)
    stamps = [provenances_of(db, "Slot", i)[0]["recorded"] for i in [*a, b]]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4


def test_a_provenance_names_its_feed_position_in_body_row_and_index(db: Database) -> None:
    """All of a Provenance but its position is drafted before the feed's lock: the position still reaches
    `recorded`, `meta.lastUpdated`, the stored row and the index row of `recorded`."""
    clock = FixedClock(START)
    schedule = practice(db, clock, bsnr())
    ids = write(db, clock, lambda repo: [repo.save("Slot", slot(schedule)).id for _ in range(2)])
    R, S = schema.resources, schema.search_index
    for slot_id in ids:
        [found] = provenances_of(db, "Slot", slot_id)
        assert found["recorded"] == found["meta"]["lastUpdated"]
        with db.transaction() as conn:
            row = conn.execute(select(R.c.last_updated).where(R.c.id == found["id"])).one()
            index = conn.execute(
                select(S.c.lo, S.c.hi).where(S.c.id == found["id"], S.c.param == "recorded")
            ).one()
        assert to_us(datetime.fromisoformat(found["recorded"])) == row.last_updated == index.lo
        assert index.hi == index.lo + 1
        assert list(found) == ["resourceType", "id", "meta", "target", "recorded", "activity", "agent"]


def test_owners_are_the_practices_of_the_new_and_the_previous_version(db: Database) -> None:
    clock = FixedClock(START)
    first, second = bsnr(), bsnr()
    schedule_a, schedule_b = practice(db, clock, first), practice(db, clock, second)
    created = write(db, clock, lambda repo: repo.save("Slot", slot(schedule_a)))
    write(db, clock, lambda repo: repo.save("Slot", slot(schedule_b), resource_id=created.id))
    write(db, clock, lambda repo: repo.delete("Slot", created.id))
    create, move, gone = provenances_of(db, "Slot", created.id)
    assert owners_of(db, create["id"]) == {first}
    assert owners_of(db, move["id"]) == {first, second}
    assert owners_of(db, gone["id"]) == {second}


def test_owners_follow_the_directory_as_soon_as_it_changes(db: Database) -> None:
    """The owners of directory resources are kept per process, but only until the directory changes."""
    clock = FixedClock(START)
    first, second = bsnr(), bsnr()
    schedule = practice(db, clock, first)
    created = write(db, clock, lambda repo: repo.save("Slot", slot(schedule)))

    def move_role(repo: Repository) -> None:
        other = repo.save("Organization", {"identifier": [{"system": BSNR_SYSTEM, "value": second}]})
        actor = repo.get("Schedule", schedule).resource()["actor"][0]["reference"].split("/")[1]
        repo.save(
            "PractitionerRole", {"organization": {"reference": f"Organization/{other.id}"}}, resource_id=actor
        )

    write(db, clock, move_role)
    write(
        db,
        clock,
        lambda repo: repo.save("Slot", slot(schedule) | {"comment": "moved"}, resource_id=created.id),
    )
    create, update = provenances_of(db, "Slot", created.id)
    assert owners_of(db, create["id"]) == {first}
    assert owners_of(db, update["id"]) == {second}


def test_a_referral_request_belongs_to_the_practice_of_its_appointment(db: Database) -> None:
    """Written before its Appointment in the same transaction, it still reaches the practice."""
    clock = FixedClock(START)
    number = bsnr()
    schedule = practice(db, clock, number)

    def book(repo: Repository) -> str:
        request = repo.save(
            "ServiceRequest",
            {"status": "active", "identifier": [{"system": feed.REFERRAL_SYSTEM, "value": "ABCDFGHJKLMN"}]},
        )
        taken = repo.save("Slot", slot(schedule))
        repo.save(
            "Appointment",
            {
                "status": "booked",
                "slot": [{"reference": f"Slot/{taken.id}"}],
                "basedOn": [{"reference": f"ServiceRequest/{request.id}"}],
            },
        )
        return request.id

    request_id = write(db, clock, book)
    [provenance] = provenances_of(db, "ServiceRequest", request_id)
    assert owners_of(db, provenance["id"]) == {number}


def test_plain_service_requests_are_not_in_the_feed(db: Database) -> None:
    clock = FixedClock(START)
    plain = write(db, clock, lambda repo: repo.save("ServiceRequest", {"status": "active"}))
    assert provenances_of(db, "ServiceRequest", plain.id) == []


def test_provenances_older_than_the_retention_are_forgotten(db: Database) -> None:
    clock = FixedClock(START)
    schedule = practice(db, clock, bsnr())
    old = write(db, clock, lambda repo: repo.save("Slot", slot(schedule)))
    clock.advance(91 * 86_400)
    recent = write(db, clock, lambda repo: repo.save("Slot", slot(schedule)))
    with db.transaction(write=True) as conn:
        while feed.sweep(conn, clock.now_us(), 90):
            pass
    assert provenances_of(db, "Slot", old.id) == []
    assert len(provenances_of(db, "Slot", recent.id)) == 1
    F = schema.feed_owners
    with db.transaction() as conn:
        horizon = feed.horizon(clock.now_us(), 90)
        assert (
            conn.execute(select(func.count()).select_from(F).where(F.c.recorded < horizon)).scalar_one() == 0
        )
    assert feed.horizon(to_us(START), 90) < to_us(START)


def test_a_change_rolled_back_with_its_savepoint_leaves_no_provenance(db: Database) -> None:
    """A failed batch entry is undone by its savepoint; the rest of the transaction keeps its Provenances."""
    clock = FixedClock(START)
    schedule = practice(db, clock, bsnr())
    ids: dict[str, str] = {}
    with db.transaction(write=True) as conn:
        repo = Repository(conn, clock, BERLIN, ADMIN)
        ids["kept"] = repo.save("Slot", slot(schedule)).id
        with pytest.raises(RuntimeError), conn.begin_nested():
            ids["undone"] = repo.save("Slot", slot(schedule)).id
            raise RuntimeError("this entry failed")
    assert len(provenances_of(db, "Slot", ids["kept"])) == 1
    assert provenances_of(db, "Slot", ids["undone"]) == []


def feed_pages(db: Database, bsnr_: str, count: int) -> list[list[str]]:
    """A practice's whole feed, page by page through the cursor, as Provenance ids."""
    scope = lambda resource_type: practice_scope((bsnr_,), resource_type)  # noqa: E731
    pages, cursor = [], None
    while True:
        request = parse_search("Provenance", [("recorded", "gt2000-01-01T00:00:00Z")], strict=True)
        request.count, request.cursor = count, cursor
        with db.transaction() as conn:
            result = SearchEngine(conn, BERLIN, scope).run(request)
        pages.append([stored.id for stored in result.matches])
        if result.next_cursor is None:
            return pages
        cursor = result.next_cursor


def test_a_practices_feed_pages_hold_every_change_once_when_one_is_gone_meanwhile(db: Database) -> None:
    """A page is searched within the practice's next feed positions; where a Provenance of that window is
    gone (its owner row left behind) the page is read the ordinary way, and nothing is skipped."""
    clock = FixedClock(START)
    mine, theirs = bsnr(), bsnr()
    schedule, other = practice(db, clock, mine), practice(db, clock, theirs)
    for _ in range(4):
        write(db, clock, lambda repo: (repo.save("Slot", slot(schedule)), repo.save("Slot", slot(other))))
    [first] = feed_pages(db, mine, 100)
    R = schema.resources
    with db.transaction(write=True) as conn:
        conn.execute(R.update().where(R.c.type == "Provenance", R.c.id == first[2]).values(deleted=True))
    pages = feed_pages(db, mine, 2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [i for page in pages for i in page] == first[:2] + first[3:]
