"""What a Slot offers, kept beside it (contract 3.1), and the free-Slot scan built on it: own codings or the
Schedule's, following Schedule changes, in (start, id) order, free as readers see it now."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, select

from terminhub.clock import FixedClock, to_us
from terminhub.store import claims, schema, slot_offers
from terminhub.store.database import Database
from terminhub.store.free_slots import PAGE, Candidate, free_slot_ids, free_slots
from terminhub.store.free_slots import _pages as free_slots_pages
from terminhub.store.repository import Actor, Repository
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

BERLIN = ZoneInfo("Europe/Berlin")
ADMIN = Actor("th-admin", "admin", "Betrieb")
START = datetime(2030, 3, 4, 8, 0, tzinfo=UTC)
FG = "urn:test:fachgebiet"
NOW_AT = START - timedelta(days=1)
NOW = to_us(NOW_AT)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("offers")) as database:
        yield database


def coding(code: str, system: str | None = FG) -> dict:
    return {"coding": [{"system": system, "code": code}] if system else [{"code": code}]}


class World:
    """A Schedule (offering `schedule_codes`) and helpers to write Slots into it, under a fresh prefix."""

    def __init__(self, db: Database, *schedule_codes: str) -> None:
        self.db = db
        self.clock = FixedClock(NOW_AT)
        self.tag = uuid.uuid4().hex[:8]
        self.schedule = f"sched-{self.tag}"
        self.save(
            "Schedule", self.schedule, {"active": True, "specialty": [coding(c) for c in schedule_codes]}
        )

    def save(self, resource_type: str, resource_id: str, resource: dict) -> None:
        with self.db.transaction(write=True) as conn:
            Repository(conn, self.clock, BERLIN, ADMIN).save(resource_type, resource, resource_id=resource_id)

    def slot(self, n: int, minutes: int, **extra: object) -> str:
        slot_id, body = self.slot_body(n, minutes, **extra)
        self.save("Slot", slot_id, body)
        return slot_id

    def slot_body(self, n: int, minutes: int, **extra: object) -> tuple[str, dict]:
        """The id and body of a Slot of this Schedule, `minutes` after START."""
        start = START + timedelta(minutes=minutes)
        return f"slot-{self.tag}-{n}", {
            "schedule": {"reference": f"Schedule/{self.schedule}"},
            "status": "free",
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=15)).isoformat(),
            **extra,
        }

    def offers(self, slot_id: str) -> set[tuple[str, str, bool]]:
        offers = schema.slot_offers
        with self.db.transaction() as conn:
            rows = conn.execute(
                select(offers.c.system, offers.c.code, offers.c.inherited).where(offers.c.slot_id == slot_id)
            )
            return {tuple(r) for r in rows}

    def free(self, *codes: str, now: int = NOW, system: str = FG) -> list[str]:
        lo, hi = to_us(START - timedelta(days=1)), to_us(START + timedelta(days=30))
        with self.db.transaction() as conn:
            found = free_slot_ids(conn, [(system, c) for c in codes], lo, hi, now)
            return [i for i in found if self.tag in i]


def test_a_slot_without_codings_offers_its_schedules(db: Database) -> None:
    w = World(db, f"a-{uuid.uuid4().hex[:6]}")
    slot = w.slot(1, 0)
    [(system, code, inherited)] = w.offers(slot)
    assert (system, inherited) == (FG, True) and code.startswith("a-")


def test_own_codings_replace_the_schedules(db: Database) -> None:
    w = World(db, "x")
    slot = w.slot(1, 0, specialty=[coding("own")], serviceType=[coding("svc"), coding("nosys", None)])
    assert w.offers(slot) == {(FG, "own", False), (FG, "svc", False), ("", "nosys", False)}


def test_a_schedule_change_changes_what_its_inheriting_slots_offer(db: Database) -> None:
    w = World(db, "old")
    inheriting, own = w.slot(1, 0), w.slot(2, 15, specialty=[coding("own")])
    w.save("Schedule", w.schedule, {"active": True, "specialty": [coding("new"), coding("newer")]})
    assert w.offers(inheriting) == {(FG, "new", True), (FG, "newer", True)}
    assert w.offers(own) == {(FG, "own", False)}


def test_offer_rows_say_whether_the_slot_is_a_video_slot(db: Database) -> None:
    """A search by place keeps video Slots without reading a place: the rows carry the appointment type,
    own and inherited rows alike, and keep it when the Schedule changes what it offers."""
    w = World(db, f"v-{uuid.uuid4().hex[:6]}")
    video_type = {"coding": [{"system": slot_offers.TERMINTYP, "code": "video"}]}
    video, praesenz = w.slot(1, 0, appointmentType=video_type), w.slot(2, 15)
    own_video = w.slot(3, 30, appointmentType=video_type, specialty=[coding("own")])

    def flags() -> dict[str, set[bool]]:
        offers = schema.slot_offers
        with db.transaction() as conn:
            rows = conn.execute(
                select(offers.c.slot_id, offers.c.video).where(offers.c.slot_id.like(f"%{w.tag}%"))
            )
            found: dict[str, set[bool]] = {}
            for slot_id, flag in rows:
                found.setdefault(slot_id, set()).add(bool(flag))
            return found

    assert flags() == {video: {True}, praesenz: {False}, own_video: {True}}
    w.save("Schedule", w.schedule, {"active": True, "specialty": [coding("new"), coding("newer")]})
    assert flags() == {video: {True}, praesenz: {False}, own_video: {True}}


def test_a_deleted_slot_offers_nothing(db: Database) -> None:
    w = World(db, "x")
    slot = w.slot(1, 0)
    with db.transaction(write=True) as conn:
        Repository(conn, w.clock, BERLIN, ADMIN).delete("Slot", slot)
    assert w.offers(slot) == set()


def test_free_slots_come_by_start_then_id_each_once(db: Database) -> None:
    code = f"c-{uuid.uuid4().hex[:6]}"
    w = World(db, code)
    late, early = w.slot(1, 60), w.slot(2, 0)
    both = w.slot(3, 30, specialty=[coding(code), coding("other")])
    same_start = w.slot(0, 30)
    assert w.free(code, "other") == [early, same_start, both, late]


def test_free_slots_page_through_long_scans(db: Database) -> None:
    code = f"p-{uuid.uuid4().hex[:6]}"
    w = World(db, code)
    ids = [w.slot(n, n) for n in range(450)]
    assert w.free(code) == ids


def test_held_and_booked_slots_are_not_free_until_the_claim_runs_out(db: Database) -> None:
    code = f"h-{uuid.uuid4().hex[:6]}"
    w = World(db, code)
    held, booked, pending, unavailable, plain = (w.slot(n, 15 * n) for n in range(5))
    later = NOW + 10**9
    with db.transaction(write=True) as conn:
        for slot in (held, booked, pending, unavailable):
            claims.ensure(conn, slot, "free")
        assert claims.take_hold(conn, held, "client-a", NOW, until=later)
        assert claims.book(conn, booked, "appt-1", NOW, owner="client-b", claim_until=None)
        assert claims.book(conn, pending, "appt-2", NOW, owner="client-b", claim_until=later)
        claims.set_base_status(conn, unavailable, "busy-unavailable")
    assert w.free(code) == [plain]
    assert w.free(code, now=later) == [held, pending, plain]


def test_slots_written_with_their_schedules_change_in_one_transaction_offer_the_new_codings(
    db: Database,
) -> None:
    """A Bundle of Slots reads its Schedule's codings once; a Schedule change in the same Bundle is seen."""
    w = World(db, "before")
    with db.transaction(write=True) as conn:
        repo = Repository(conn, w.clock, BERLIN, ADMIN)
        first, second = w.slot_body(1, 0), w.slot_body(2, 15)
        repo.save("Slot", first[1], resource_id=first[0])
        repo.save("Schedule", {"active": True, "specialty": [coding("after")]}, resource_id=w.schedule)
        # the inheritance waits for the transaction's other rows, but a read in it sees it already
        lo, hi = to_us(START - timedelta(days=1)), to_us(START + timedelta(days=1))
        assert list(free_slot_ids(conn, [(FG, "after")], lo, hi, NOW)) == [first[0]]
        repo.save("Slot", second[1], resource_id=second[0])
    assert w.offers(first[0]) == w.offers(second[0]) == {(FG, "after", True)}


def test_a_schedule_change_rolled_back_with_its_savepoint_is_not_offered(db: Database) -> None:
    w = World(db, "kept")
    with db.transaction(write=True) as conn:
        repo = Repository(conn, w.clock, BERLIN, ADMIN)
        first, second, third = w.slot_body(1, 0), w.slot_body(2, 15), w.slot_body(3, 30)
        repo.save("Slot", first[1], resource_id=first[0])
        with pytest.raises(RuntimeError), conn.begin_nested():
            repo.save("Schedule", {"active": True, "specialty": [coding("dropped")]}, resource_id=w.schedule)
            repo.save("Slot", second[1], resource_id=second[0])
            raise RuntimeError("the entry failed")
        repo.save("Slot", third[1], resource_id=third[0])
    assert w.offers(first[0]) == w.offers(third[0]) == {(FG, "kept", True)}
    assert w.offers(second[0]) == set()


def test_a_narrowed_page_leaves_only_the_kept_offers_in_order(db: Database) -> None:
    code = f"k-{uuid.uuid4().hex[:6]}"
    w = World(db, code)
    ids = [w.slot(n, n) for n in range(450)]
    pages: list[int] = []

    def even(page: list[Candidate]) -> list[Candidate]:
        pages.append(len(page))
        return [c for c in page if int(c.slot_id.rsplit("-", 1)[1]) % 2 == 0]

    lo, hi = to_us(START - timedelta(days=1)), to_us(START + timedelta(days=30))
    with db.transaction() as conn:
        found = [c.slot_id for c in free_slots(conn, [(FG, code)], lo, hi, NOW, keep=even)]
    assert found == ids[::2]
    assert pages == [PAGE, PAGE, 50]


def test_a_slot_without_a_claim_row_is_free_by_its_stored_status(db: Database) -> None:
    code = f"u-{uuid.uuid4().hex[:6]}"
    w = World(db, code)
    free, unavailable = w.slot(1, 0), w.slot(2, 15, status="busy-unavailable")
    with db.transaction(write=True) as conn:
        conn.execute(delete(schema.slot_claims).where(schema.slot_claims.c.slot_id.in_([free, unavailable])))
    assert w.free(code) == [free]


def test_a_page_of_offers_is_read_from_the_index_alone(db: Database) -> None:
    """The index holds every column a page reads: no visit to the table for each offer (migration 0010)."""
    world = World(db, "covered")
    for n in range(3):
        world.slot(n, 10 * n)
    values = {"system": FG, "code": "covered", "lo": 0, "hi": NOW * 2, "after_start": 0, "after_id": ""}
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if db.sqlite:
            explain, expected = "EXPLAIN QUERY PLAN ", "COVERING INDEX ix_slot_offers_coding_start"
        else:
            conn.exec_driver_sql("VACUUM slot_offers")  # as autovacuum would: the table's pages all-visible
            conn.exec_driver_sql("SET enable_seqscan = off")  # a few rows: the index's plan, not a table scan
            conn.exec_driver_sql("SET enable_bitmapscan = off")
            explain, expected = "EXPLAIN ", "Index Only Scan using ix_slot_offers_coding_start"
        for page in free_slots_pages():
            compiled = page.compile(dialect=conn.dialect)
            params = compiled.construct_params(values)
            if compiled.positiontup:  # SQLite's ? placeholders
                params = tuple(params[name] for name in compiled.positiontup)
            plan = "\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + str(compiled), params))
            assert expected in plan, plan
