"""Slot claims: one row per Slot on which the database decides races.

Every change of who has a Slot is a conditional UPDATE of its row (`… WHERE appointment_id IS NULL …`):
of several concurrent contenders, in any number of processes, exactly one sees `rowcount == 1`. On
PostgreSQL under READ COMMITTED the losers wait for the winner's commit, re-check the condition and
match nothing; on SQLite writers are serialised. Nobody gets a serialization failure, so no booking of a
free Slot fails spuriously.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

from terminhub.store import appends, schema
from terminhub.store.dialect import insert_for

C = schema.slot_claims


@dataclass(frozen=True)
class Claim:
    """A Slot's claim row as read at one instant."""

    slot_id: str
    base_status: str
    appointment_id: str | None
    claim_until: int | None
    hold_owner: str | None
    held_until: int | None
    hold_renewed: bool

    def booked_at(self, now: int) -> bool:
        return self.appointment_id is not None and (self.claim_until is None or self.claim_until > now)

    def held_at(self, now: int) -> bool:
        return self.hold_owner is not None and self.held_until is not None and self.held_until > now

    def lapsed_at(self, now: int) -> bool:
        """A hold or unconfirmed booking ran out and is not written down yet."""
        hold = self.hold_owner is not None and self.held_until is not None and self.held_until <= now
        booking = self.appointment_id is not None and self.claim_until is not None and self.claim_until <= now
        return hold or booking

    def status_at(self, now: int) -> str:
        """The Slot status every reader sees at `now` (expiries take effect at their instant)."""
        if self.booked_at(now):
            return "busy"
        if self.held_at(now):
            return "busy-tentative"
        return self.base_status


def ensure(conn: Connection, slot_id: str, base_status: str) -> None:
    """Create the claim row of a Slot if it has none (idempotent, race-free)."""
    create(conn, slot_id, base_status)


def create(conn: Connection, slot_id: str, base_status: str, *, new_slot: bool = False) -> bool:
    """Create the claim row of a Slot if it has none; True when this call created it (with `base_status`).

    `new_slot`: the Slot has never had a row, so neither has its claim; the row joins the transaction's
    other new rows (`appends`)."""
    values = {"slot_id": slot_id, "base_status": base_status, "hold_renewed": False}
    if new_slot:
        appends.add(conn, C, values)
        return True
    return conn.execute(_create_statement(conn), values).rowcount == 1


_CREATE: dict[str, PgInsert | SqliteInsert] = {}


def _create_statement(conn: Connection) -> PgInsert | SqliteInsert:
    """The INSERT of `create`, built once per dialect (building one costs more than running it)."""
    dialect = conn.dialect.name
    if dialect not in _CREATE:
        statement = insert_for(conn, C).on_conflict_do_nothing(index_elements=["slot_id"])
        _CREATE[dialect] = statement.execution_options(preserve_rowcount=True)  # rowcount kept only if asked
    return _CREATE[dialect]


_GET = select(C).where(C.c.slot_id == bindparam("slot_id"))
_GET_FOR_UPDATE = _GET.with_for_update()


def get(conn: Connection, slot_id: str, *, for_update: bool = False) -> Claim | None:
    row = conn.execute(_GET_FOR_UPDATE if for_update else _GET, {"slot_id": slot_id}).first()
    return Claim(**row._mapping) if row else None


def open_at(now, owner=None):  # noqa: ANN001, ANN202 - values or bind parameters; a SQL expression
    """Neither booked nor held by someone else at `now`, and free as its practice set it."""
    hold_ok = or_(C.c.hold_owner.is_(None), C.c.held_until <= now)
    if owner is not None:
        hold_ok = or_(hold_ok, C.c.hold_owner == owner)
    return and_(C.c.base_status == "free", or_(C.c.appointment_id.is_(None), C.c.claim_until <= now), hold_ok)


def take_hold(conn: Connection, slot_id: str, owner: str, now: int, until: int) -> bool:
    """Hold a Slot that is open at `now`; True when this caller won it."""
    done = conn.execute(
        update(C)
        .where(C.c.slot_id == slot_id, open_at(now), or_(C.c.hold_owner.is_(None), C.c.held_until <= now))
        .values(hold_owner=owner, held_until=until, hold_renewed=False, appointment_id=None, claim_until=None)
    )
    return done.rowcount == 1


def renew_hold(conn: Connection, slot_id: str, owner: str, now: int, until: int) -> bool:
    done = conn.execute(
        update(C)
        .where(
            C.c.slot_id == slot_id, C.c.hold_owner == owner, C.c.held_until > now, C.c.hold_renewed.is_(False)
        )
        .values(held_until=until, hold_renewed=True)
    )
    return done.rowcount == 1


def release_hold(conn: Connection, slot_id: str, owner: str, now: int) -> bool:
    done = conn.execute(
        update(C)
        .where(C.c.slot_id == slot_id, C.c.hold_owner == owner, C.c.held_until > now)
        .values(hold_owner=None, held_until=None, hold_renewed=False)
    )
    return done.rowcount == 1


def clear_hold(conn: Connection, slot_id: str) -> None:
    """Forget a hold (it expired)."""
    conn.execute(
        update(C).where(C.c.slot_id == slot_id).values(hold_owner=None, held_until=None, hold_renewed=False)
    )


def running_holds(conn: Connection, owner: str, now: int) -> int:
    query = select(func.count()).select_from(C).where(C.c.hold_owner == owner, C.c.held_until > now)
    return conn.execute(query).scalar_one()


def book(
    conn: Connection, slot_id: str, appointment_id: str, now: int, *, owner: str, claim_until: int | None
) -> bool:
    """Give an open Slot (or one held by `owner`) to an Appointment; True for the one winner."""
    values = {"slot": slot_id, "now": now, "owner": owner, "appointment": appointment_id}
    done = conn.execute(_BOOK, values | {"until": claim_until})
    return done.rowcount == 1


# Built once: every booking runs it (its bind parameters may not share a name with a column of the table).
_BOOK = (
    update(C)
    .where(C.c.slot_id == bindparam("slot"), open_at(bindparam("now"), bindparam("owner")))
    .values(
        appointment_id=bindparam("appointment"),
        claim_until=bindparam("until"),
        hold_owner=None,
        held_until=None,
        hold_renewed=False,
    )
)


def confirm(conn: Connection, slot_id: str, appointment_id: str) -> bool:
    """A pending booking confirmed: its claim no longer expires."""
    done = conn.execute(
        update(C).where(C.c.slot_id == slot_id, C.c.appointment_id == appointment_id).values(claim_until=None)
    )
    return done.rowcount == 1


def free(conn: Connection, slot_id: str, appointment_id: str) -> bool:
    """The Appointment lets go of its Slot (cancellation, postponement, expiry)."""
    done = conn.execute(
        update(C)
        .where(C.c.slot_id == slot_id, C.c.appointment_id == appointment_id)
        .values(appointment_id=None, claim_until=None)
    )
    return done.rowcount == 1


def set_base_status(conn: Connection, slot_id: str, status: str) -> None:
    conn.execute(update(C).where(C.c.slot_id == slot_id).values(base_status=status))


def expired_holds(conn: Connection, now: int, limit: int = 500) -> list[str]:
    query = select(C.c.slot_id).where(C.c.hold_owner.is_not(None), C.c.held_until <= now).limit(limit)
    return [row[0] for row in conn.execute(query)]


def expired_claims(conn: Connection, now: int, limit: int = 500) -> list[tuple[str, str]]:
    query = (
        select(C.c.slot_id, C.c.appointment_id)
        .where(C.c.appointment_id.is_not(None), C.c.claim_until <= now)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in conn.execute(query)]
