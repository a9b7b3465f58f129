"""The booking core without HTTP, on a real database and an injected clock: expiries take effect at their
instant and are written down by the sweep with their change records; booking by Schedule and time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from terminhub.booking.expiry import present, sweep_job
from terminhub.booking.offer import offer, slot_location
from terminhub.booking.service import Booker, BookingService
from terminhub.clock import FixedClock
from terminhub.config import Settings
from terminhub.fhir.outcome import FhirError
from terminhub.store import schema
from terminhub.store.database import Database
from terminhub.store.repository import Actor, Repository
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

TZ = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
ALICE = Booker("alice", "scheduling-client")
BOB = Booker("bob", "scheduling-client")
SETTINGS = Settings(hold_minutes=10, max_holds=2, confirm_hours=48)


@pytest.fixture(params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


def _repo(conn, clock: FixedClock) -> Repository:  # noqa: ANN001
    return Repository(conn, clock, TZ, Actor("admin", "admin", "admin"))


def _service(repo: Repository) -> BookingService:
    return BookingService(repo, hold_minutes=10, max_holds=2, confirm_hours=48, tz=TZ)


def _directory(db: Database, clock: FixedClock, *, confirm: bool = False) -> None:
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        repo.save("Organization", {"resourceType": "Organization", "name": "Praxis"}, resource_id="org")
        repo.save(
            "Location",
            {
                "resourceType": "Location",
                "name": "Praxis",
                "status": "active",
                "managingOrganization": {"reference": "Organization/org"},
            },
            resource_id="loc",
        )
        repo.save(
            "PractitionerRole",
            {"resourceType": "PractitionerRole", "organization": {"reference": "Organization/org"}},
            resource_id="role",
        )
        extension = [{"url": "urn:terminhub:requires-confirmation", "valueBoolean": True}] if confirm else []
        repo.save(
            "Schedule",
            {
                "resourceType": "Schedule",
                "active": True,
                "extension": extension,
                "actor": [{"reference": "PractitionerRole/role"}],
            },
            resource_id="sched",
        )
        for n in range(3):
            repo.save(
                "Slot",
                {
                    "resourceType": "Slot",
                    "status": "free",
                    "schedule": {"reference": "Schedule/sched"},
                    "start": f"2026-11-24T{8 + n:02d}:00:00+01:00",
                    "end": f"2026-11-24T{8 + n:02d}:15:00+01:00",
                },
                resource_id=f"slot-{n}",
            )


def _appointment() -> dict:
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "participant": [{"actor": {"reference": "Patient/p"}, "status": "needs-action"}],
    }


def test_a_hold_ends_at_its_instant_for_every_reader(db: Database, clock: FixedClock) -> None:
    _directory(db, clock)
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        hold = _service(repo).hold(repo.get("Slot", "slot-0"), ALICE)
        assert hold.slot.resource()["status"] == "busy-tentative"
    clock.advance(10 * 60 - 1)
    with db.transaction() as conn:
        [seen] = present(conn, clock.now_us(), [_repo(conn, clock).get("Slot", "slot-0")])
        assert seen.resource()["status"] == "busy-tentative"
    clock.advance(1)
    with db.transaction() as conn:
        [seen] = present(conn, clock.now_us(), [_repo(conn, clock).get("Slot", "slot-0")])
        assert seen.resource()["status"] == "free"
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        _service(repo).book(repo.get("Slot", "slot-0"), _appointment(), BOB)


def test_the_sweep_writes_an_expired_hold_down_with_its_change_records(
    db: Database, clock: FixedClock
) -> None:
    _directory(db, clock)
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        _service(repo).hold(repo.get("Slot", "slot-1"), ALICE)
    clock.advance(11 * 60)
    with db.transaction(write=True) as conn:
        outbox_before = conn.execute(select(func.count()).select_from(schema.outbox)).scalar_one()
        assert sweep_job(conn, clock, SETTINGS) == 1
        stored = _repo(conn, clock).get("Slot", "slot-1")
        assert stored.resource()["status"] == "free"
        assert stored.version_id == 3
        assert conn.execute(select(func.count()).select_from(schema.outbox)).scalar_one() == outbox_before + 1
    with db.transaction(write=True) as conn:
        assert sweep_job(conn, clock, SETTINGS) == 0


def test_an_unconfirmed_booking_is_cancelled_after_the_confirmation_time(
    db: Database, clock: FixedClock
) -> None:
    _directory(db, clock, confirm=True)
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        booked = _service(repo).book(repo.get("Slot", "slot-2"), _appointment(), ALICE)
        assert booked.resource()["status"] == "pending"
    clock.advance(26 * 3600)  # the Slot starts 26 h after booking, before the 48 h: its start decides
    with db.transaction(write=True) as conn:
        assert sweep_job(conn, clock, SETTINGS) == 1
        repo = _repo(conn, clock)
        appointment = repo.get("Appointment", booked.id).resource()
        assert appointment["status"] == "cancelled"
        assert appointment["cancelationReason"]["coding"][0]["code"] == "other"
        assert repo.get("Slot", "slot-2").resource()["status"] == "free"


def test_the_hold_limit_counts_running_holds_only(db: Database, clock: FixedClock) -> None:
    _directory(db, clock)
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        service = _service(repo)
        service.hold(repo.get("Slot", "slot-0"), ALICE)
        service.hold(repo.get("Slot", "slot-1"), ALICE)
        with pytest.raises(FhirError) as refused:
            service.hold(repo.get("Slot", "slot-2"), ALICE)
        assert refused.value.code == "rate-limited"
    clock.advance(11 * 60)
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        assert _service(repo).hold(repo.get("Slot", "slot-2"), ALICE).held_until > clock.now_us()


def test_booking_by_schedule_and_time_finds_the_one_slot(db: Database, clock: FixedClock) -> None:
    _directory(db, clock)
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        booked = _service(repo).book_by_time(
            "sched", "2026-11-24T09:00:00+01:00", "2026-11-24T09:15:00+01:00", _appointment(), ALICE
        )
        assert booked.resource()["slot"] == [{"reference": "Slot/slot-1"}]
        with pytest.raises(FhirError) as missing:
            _service(repo).book_by_time(
                "sched", "2026-11-24T09:05:00+01:00", "2026-11-24T09:15:00+01:00", _appointment(), ALICE
            )
        assert missing.value.code == "not-found"


def test_a_slots_location_falls_back_to_the_only_active_location_of_the_organization(
    db: Database, clock: FixedClock
) -> None:
    _directory(db, clock)
    with db.transaction() as conn:
        repo = _repo(conn, clock)
        found = offer(repo, repo.get("Slot", "slot-0"))
        assert slot_location(repo, found.schedule)["id"] == "loc"


def test_two_contenders_one_winner(db: Database, clock: FixedClock) -> None:
    _directory(db, clock)
    with db.transaction(write=True) as conn:
        repo = _repo(conn, clock)
        _service(repo).book(repo.get("Slot", "slot-0"), _appointment(), ALICE)
    with db.transaction(write=True) as conn, pytest.raises(FhirError) as lost:
        repo = _repo(conn, clock)
        _service(repo).book(repo.get("Slot", "slot-0"), _appointment(), BOB)
    assert lost.value.code == "slot-unavailable"
