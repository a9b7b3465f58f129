"""Expiries take effect at their instant (2.4): what readers see before the change is written down, and
the sweep job that writes it down (holds that ran out, pending bookings nobody confirmed)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Connection, select

from terminhub.booking.service import BookingService, reason
from terminhub.clock import Clock
from terminhub.config import Settings
from terminhub.store import claims, schema
from terminhub.store.repository import HUB, Repository, Stored

C = schema.slot_claims


def present(conn: Connection, now: int, items: list[Stored]) -> list[Stored]:
    """The stored versions as every reader must see them at `now`: a Slot whose hold or unconfirmed
    booking ran out is free again, such a booking is cancelled. Other resources pass untouched."""
    slots = [s for s in items if s.type == "Slot" and s.content and b'"busy' in s.content]
    pending = [s for s in items if s.type == "Appointment" and s.content and b'"pending"' in s.content]
    if not slots and not pending:
        return items
    changed: dict[tuple[str, str], Stored] = {}
    if slots:
        rows = conn.execute(select(C).where(C.c.slot_id.in_([s.id for s in slots])))
        claim_of = {row.slot_id: claims.Claim(**row._mapping) for row in rows}
        for stored in slots:
            claim = claim_of.get(stored.id)
            if claim and claim.lapsed_at(now):
                changed.update(_slot_view(stored, claim, now))
    if pending:
        rows = conn.execute(
            select(C.c.appointment_id).where(
                C.c.appointment_id.in_([s.id for s in pending]), C.c.claim_until <= now
            )
        )
        expired = {row[0] for row in rows}
        for stored in pending:
            if stored.id in expired:
                resource = orjson.loads(stored.content)
                resource["status"] = "cancelled"
                resource["cancelationReason"] = reason("other")
                changed[(stored.type, stored.id)] = _with(stored, resource)
    return [changed.get((s.type, s.id), s) for s in items]


def _slot_view(stored: Stored, claim: claims.Claim, now: int) -> dict[tuple[str, str], Stored]:
    resource = orjson.loads(stored.content)
    status = claim.status_at(now)
    if resource.get("status") == status:
        return {}
    resource["status"] = status
    return {(stored.type, stored.id): _with(stored, resource)}


def _with(stored: Stored, resource: dict) -> Stored:
    return Stored(
        stored.type,
        stored.id,
        stored.version_id,
        stored.last_updated,
        stored.deleted,
        orjson.dumps(resource),
        stored.created_by,
        stored.method,
    )


def sweep_job(conn: Connection, clock: Clock, settings: Settings) -> int:
    """Write down every hold and unconfirmed booking that ran out (agent: the hub)."""
    tz = ZoneInfo(settings.timezone)
    repo = Repository(conn, clock, tz, HUB)
    service = BookingService(
        repo,
        hold_minutes=settings.hold_minutes,
        max_holds=settings.max_holds,
        confirm_hours=settings.confirm_hours,
        tz=tz,
    )
    now = clock.now_us()
    due = set(claims.expired_holds(conn, now)) | {slot for slot, _ in claims.expired_claims(conn, now)}
    for slot_id in sorted(due):
        slot = repo.get("Slot", slot_id)
        if slot is not None and not slot.deleted:
            service.settle(slot)
    return len(due)
