"""The injected clock. Production reads the system time; with TERMINHUB_TEST_CLOCK it is shifted by an
offset kept in the database, so every process of one deployment sees the same time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select

from terminhub.store import schema

OFFSET_KEY = "clock_offset_s"


class Clock:
    """`now()` for datetimes, `now_us()` for stored instants; `offset_s` is shifted only in test mode."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def now_us(self) -> int:
        return time.time_ns() // 1000 + int(self.offset_s * 1_000_000)

    def now(self) -> datetime:
        return from_us(self.now_us())

    def refresh(self, conn: Connection) -> None:
        """Adopt the offset stored in the database (test clock only)."""
        table = schema.settings_kv
        row = conn.execute(select(table.c.value).where(table.c.key == OFFSET_KEY)).first()
        self.offset_s = float(row[0]) if row else 0.0

    @staticmethod
    def store_offset(conn: Connection, offset_s: float) -> None:
        table = schema.settings_kv
        updated = conn.execute(table.update().where(table.c.key == OFFSET_KEY).values(value=repr(offset_s)))
        if updated.rowcount == 0:
            conn.execute(table.insert().values(key=OFFSET_KEY, value=repr(offset_s)))


class FixedClock(Clock):
    """A clock that stands still until moved: for unit tests."""

    def __init__(self, at: datetime) -> None:
        super().__init__()
        self.at_us = to_us(at)

    def now_us(self) -> int:
        return self.at_us + int(self.offset_s * 1_000_000)

    def advance(self, seconds: float) -> None:
        self.at_us += int(seconds * 1_000_000)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (also before 1970); a naive datetime is local time."""
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def instant(us: int) -> str:
    """An FHIR instant with microseconds and an explicit UTC offset."""
    return from_us(us).isoformat(timespec="microseconds").replace("+00:00", "Z")
