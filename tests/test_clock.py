"""The injected clock (DESIGN rule 5, contract 2.4): real time, shifted by the test offset from the database;
a FixedClock for unit tests; stored instants as exact microseconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, func, select

from terminhub.clock import OFFSET_KEY, Clock, FixedClock, from_us, instant, to_us
from terminhub.store import schema
from terminhub.store.database import Database
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

KV = schema.settings_kv


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("clock")) as database:
        yield database


def _real_us() -> int:
    return time.time_ns() // 1000


# -- Clock -----------------------------------------------------------------------------------------------
def test_clock_reads_the_system_time() -> None:
    before = _real_us()
    now = Clock().now_us()
    assert before <= now <= _real_us()


def test_clock_offset_shifts_now() -> None:
    """`offset_s` moves the clock by whole and fractional seconds, forwards or back."""
    assert abs(Clock(3600).now_us() - _real_us() - 3_600_000_000) < 1_000_000
    assert abs(Clock(-0.5).now_us() - _real_us() + 500_000) < 1_000_000


def test_now_is_an_aware_utc_datetime() -> None:
    now = Clock(86400).now()
    assert now.tzinfo is UTC
    assert abs((now - datetime.now(UTC)) - timedelta(days=1)) < timedelta(seconds=1)


def test_refresh_without_a_stored_offset_is_zero(db: Database) -> None:
    clock = Clock(99)
    with db.transaction(write=True) as conn:
        conn.execute(delete(KV).where(KV.c.key == OFFSET_KEY))
        clock.refresh(conn)
    assert clock.offset_s == 0


def test_refresh_adopts_the_offset_stored_in_the_database(db: Database) -> None:
    """What one process stores, every clock refreshed from the database adopts."""
    with db.transaction(write=True) as conn:
        Clock.store_offset(conn, 1234.5)
    clock = Clock()
    with db.transaction() as conn:
        clock.refresh(conn)
    assert clock.offset_s == 1234.5
    assert abs(clock.now_us() - _real_us() - 1_234_500_000) < 1_000_000


def test_storing_an_offset_replaces_the_previous_one(db: Database) -> None:
    """The offset is absolute: storing twice keeps one row with the second value."""
    with db.transaction(write=True) as conn:
        Clock.store_offset(conn, 60)
    with db.transaction(write=True) as conn:
        Clock.store_offset(conn, -30)
    clock = Clock()
    with db.transaction() as conn:
        clock.refresh(conn)
        rows = conn.execute(select(func.count()).select_from(KV).where(KV.c.key == OFFSET_KEY)).scalar_one()
    assert (clock.offset_s, rows) == (-30, 1)


# -- FixedClock ------------------------------------------------------------------------------------------
def test_fixed_clock_stands_still_until_advanced() -> None:
    at = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)
    clock = FixedClock(at)
    assert clock.now() == at
    time.sleep(0.001)
    assert clock.now() == at
    clock.advance(90.25)
    assert clock.now() == at + timedelta(seconds=90, milliseconds=250)
    clock.advance(-3600)
    assert clock.now() == at + timedelta(seconds=90.25 - 3600)


def test_fixed_clock_takes_an_offset_on_top() -> None:
    at = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)
    clock = FixedClock(at)
    clock.offset_s = 60
    assert clock.now() == at + timedelta(minutes=1)


def test_fixed_clock_accepts_any_time_zone() -> None:
    berlin = datetime(2030, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert FixedClock(berlin).now() == datetime(2030, 7, 1, 10, 0, tzinfo=UTC)


# -- instants --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("moment", "us"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (datetime(2030, 3, 4, 10, 0, 0, 123456, tzinfo=UTC), 1_898_848_800_123_456),
        (datetime(2030, 3, 4, 11, 0, 0, 1, tzinfo=timezone(timedelta(hours=1))), 1_898_848_800_000_001),
        (datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC), -500_000),
        (datetime(1964, 8, 12, 0, 0, tzinfo=ZoneInfo("Europe/Berlin")), -170_038_800_000_000),
    ],
)
def test_to_us_counts_exact_microseconds_since_the_epoch(moment: datetime, us: int) -> None:
    """Exact integers, also before 1970 and with fractions of a second."""
    assert to_us(moment) == us
    assert from_us(us) == moment


def test_from_us_and_to_us_round_trip() -> None:
    for us in (0, 1, -1, 999_999, -1_000_001, 1_898_848_800_123_456, -2_208_988_800_000_000):
        assert to_us(from_us(us)) == us


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (1_898_848_800_123_456, "2030-03-04T10:00:00.123456Z"),
        (1_898_848_800_000_000, "2030-03-04T10:00:00.000000Z"),
        (-500_000, "1969-12-31T23:59:59.500000Z"),
    ],
)
def test_instants_are_utc_with_microseconds_and_z(us: int, text: str) -> None:
    """A FHIR instant: always microseconds, always `Z`, so that stored instants sort as text too."""
    assert instant(us) == text
