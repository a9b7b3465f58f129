"""Holds, bookings, cancellations, postponements and status changes of Appointments (contract 3, 3.2).

The database decides every race through the Slot's claim row (`terminhub.store.claims`): the row is
locked first, expiries that fell due are written down, then the conditional update gives the Slot to
exactly one contender. Slot and Appointment change through the store's one write path, so each change
brings its version, AuditEvent and outbox row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import select

from terminhub.booking import events
from terminhub.booking.offer import Offer, offer, schedule_organization
from terminhub.fhir.dates import DateError, parse_instant
from terminhub.fhir.outcome import FhirError
from terminhub.store import claims, schema
from terminhub.store.indexer import split_reference
from terminhub.store.repository import HUB, Repository, Stored

ACTIVE = frozenset({"booked", "pending", "arrived", "checked-in", "fulfilled"})
CANCELLATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"
BOOKED_BY = "urn:terminhub:booked-by"
CLIENT_SYSTEM = "urn:terminhub:client"
REFERRAL_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode"
CANCEL_REASON = {
    "third-party": "pat",
    "scheduling-client": "pat",
    "practice": "prov",
    "admin": "other",
    "hub": "other",
}
# (from, to) -> roles that may make the change by PUT (3.2); "creator" is whoever booked it.
TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {}
for _from in ("pending", "booked"):
    for _to in ("cancelled", "entered-in-error"):
        TRANSITIONS[(_from, _to)] = frozenset({"creator", "practice", "admin"})
TRANSITIONS[("pending", "booked")] = frozenset({"practice", "admin"})
for _to in ("arrived", "checked-in", "fulfilled", "noshow"):
    TRANSITIONS[("booked", _to)] = frozenset({"practice", "admin"})
for _from in ("arrived", "checked-in"):
    for _to in ("fulfilled", "noshow"):
        TRANSITIONS[(_from, _to)] = frozenset({"practice", "admin"})
PRACTICE_STATUSES = ("free", "busy")  # what a practice may set a Slot to (contract 5)
FREE_TO_CHANGE = frozenset({"description", "comment", "patientInstruction", "priority", "meta", "text"})
POSTPONE_FIELDS = frozenset({"slot", "start", "end", "minutesDuration"})


@dataclass(frozen=True)
class Booker:
    """Who books: the client, its role (the face it books through) and its name."""

    client_id: str
    role: str

    @property
    def face(self) -> str:
        return "hub" if self.role == "admin" else self.role


@dataclass(frozen=True)
class Hold:
    slot: Stored
    held_until: int


class BookingService:
    """The booking core on one transaction (the repository's)."""

    def __init__(
        self, repo: Repository, *, hold_minutes: float, max_holds: int, confirm_hours: float, tz: ZoneInfo
    ) -> None:
        self.repo = repo
        self.conn = repo.conn
        self.hold_us = int(hold_minutes * 60 * 1_000_000)
        self.max_holds = max_holds
        self.confirm_us = int(confirm_hours * 3600 * 1_000_000)
        self.tz = tz

    @property
    def now(self) -> int:
        return self.repo.clock.now_us()

    # -- the claim row -------------------------------------------------------------------------------
    def settle(self, slot: Stored) -> claims.Claim:
        """Lock the Slot's claim row and write down expiries that fell due (hold, pending booking)."""
        claim = claims.get(self.conn, slot.id, for_update=True)
        if claim is None:  # a Slot written around the booking core has no claim row yet: it is made now
            claims.ensure(self.conn, slot.id, _base_status(slot.resource().get("status", "free")))
            claim = claims.get(self.conn, slot.id, for_update=True)
            assert claim is not None
        now = self.now
        if claim.appointment_id and claim.claim_until is not None and claim.claim_until <= now:
            self._expire_pending(slot.id, claim.appointment_id)
            claim = claims.get(self.conn, slot.id)
        if claim.hold_owner and claim.held_until is not None and claim.held_until <= now:
            claims.clear_hold(self.conn, slot.id)
            claim = claims.get(self.conn, slot.id)
            self._write_slot_status(slot.id, claim.status_at(now), self.repo.acting_as(HUB))
        return claim

    def _expire_pending(self, slot_id: str, appointment_id: str) -> None:
        """An unconfirmed booking past its time: cancelled by the hub (also when a caller's write finds
        it first: the change is the hub's), the Slot freed."""
        hub = self.repo.acting_as(HUB)
        stored = hub.get("Appointment", appointment_id, for_update=True)
        claims.free(self.conn, slot_id, appointment_id)
        if stored and not stored.deleted:
            appointment = stored.resource()
            if appointment.get("status") == "pending":
                appointment["status"] = "cancelled"
                appointment["cancelationReason"] = reason("other")
                hub.save("Appointment", appointment, resource_id=appointment_id)
        events.ended(hub, appointment_id, "hub")
        self._write_slot_status(slot_id, "free", hub)

    def _write_slot_status(self, slot_id: str, status: str, repo: Repository | None = None) -> Stored | None:
        repo = repo or self.repo
        stored = repo.get("Slot", slot_id, for_update=True)
        if stored is None or stored.deleted:
            return None
        resource = stored.resource()
        if resource.get("status") == status:
            return stored
        resource["status"] = status
        return repo.save("Slot", resource, resource_id=slot_id)

    def load_slot(self, slot_id: str) -> Stored:
        stored = self.repo.get("Slot", slot_id)
        if stored is None or stored.deleted:
            raise FhirError("not-found", f"Slot/{slot_id} is not known.")
        return stored

    # -- holds ---------------------------------------------------------------------------------------
    def hold(self, slot: Stored, booker: Booker) -> Hold:
        """Hold a free Slot for `booker` (or renew its own hold once)."""
        found = offer(self.repo, slot)
        if not found.schedule_active:
            raise FhirError("business-rule", "The Slot's Schedule is not active: it cannot be held.")
        if not found.bookable_by_face(booker.face):
            raise FhirError("slot-not-matching", "This Slot cannot be booked through your interface.")
        claim = self.settle(slot)
        now = self.now
        if claim.held_at(now) and claim.hold_owner == booker.client_id:
            if claim.hold_renewed:
                raise FhirError("business-rule", "A hold can be renewed once only.")
            claims.renew_hold(self.conn, slot.id, booker.client_id, now, now + self.hold_us)
            return Hold(self.repo.get("Slot", slot.id), now + self.hold_us)
        if claim.status_at(now) != "free" or _in_past(found, now, self.tz):
            raise FhirError("slot-unavailable", "The Slot is not free: it is booked, held or blocked.")
        if claims.running_holds(self.conn, booker.client_id, now) >= self.max_holds:
            raise FhirError(
                "rate-limited", f"You hold {self.max_holds} Slots already; release or book one first."
            )
        if not claims.take_hold(self.conn, slot.id, booker.client_id, now, now + self.hold_us):
            raise FhirError("slot-unavailable", "The Slot was taken meanwhile.")
        stored = self._write_slot_status(slot.id, "busy-tentative")
        return Hold(stored, now + self.hold_us)

    def release(self, slot: Stored, booker: Booker) -> Stored:
        claim = self.settle(slot)
        now = self.now
        if claim.booked_at(now):
            raise FhirError("slot-unavailable", "The Slot is booked; cancel the Appointment instead.")
        if claim.held_at(now):
            if claim.hold_owner != booker.client_id:
                raise FhirError("forbidden", "The Slot is held by another client.")
            claims.release_hold(self.conn, slot.id, booker.client_id, now)
            return self._write_slot_status(slot.id, claim.base_status) or slot
        return self.repo.get("Slot", slot.id) or slot

    # -- booking -------------------------------------------------------------------------------------
    def check_bookable(self, found: Offer, appointment: dict, booker: Booker) -> None:
        """The 422 checks of $book that concern the Slot, in the contract's order."""
        now = self.now
        if _in_past(found, now, self.tz):
            raise FhirError("business-rule", "The Slot lies in the past.")
        if not found.schedule_active:
            raise FhirError("business-rule", "The Slot's Schedule is not active.")
        if found.slot_resource.get("status") in ("busy-unavailable", "entered-in-error"):
            raise FhirError("business-rule", f"The Slot is {found.slot_resource['status']}.")
        for key in ("start", "end"):
            if appointment.get(key) and not _same_instant(
                appointment[key], found.slot_resource[key], self.tz
            ):
                raise FhirError("business-rule", f"The Appointment's {key} differs from the Slot's.")

    def check_matching(self, found: Offer, appointment: dict, booker: Booker) -> None:
        for concept in (appointment.get("serviceType") or []) + (appointment.get("specialty") or []):
            codings = [(c.get("system"), c.get("code")) for c in concept.get("coding") or []]
            if codings and not any(found.offers(c) for c in codings):
                raise FhirError(
                    "slot-not-matching", "The Slot does not offer the requested service or specialty."
                )
        if not found.bookable_by_face(booker.face):
            raise FhirError("slot-not-matching", "This Slot cannot be booked through your interface.")

    def book(
        self,
        slot: Stored,
        appointment: dict,
        booker: Booker,
        *,
        found: Offer | None = None,
        appointment_id: str | None = None,
    ) -> Stored:
        """Give the Slot to a new Appointment (booked, or pending where the Schedule wants confirmation).

        The caller has run the checks; this decides the race: 409 `slot-unavailable` for every loser, and
        nothing of its attempt is stored (the transaction rolls back).
        """
        found = found or offer(self.repo, slot)
        self._refuse_if_taken(slot.id, booker)
        claim = self.settle(slot)
        now = self.now
        if claim.status_at(now) != "free" and not (
            claim.held_at(now) and claim.hold_owner == booker.client_id
        ):
            raise FhirError("slot-unavailable", "The Slot is taken or held by another client.")
        new_id = appointment_id is None  # a fresh id has no row: it is not read before the write
        appointment_id = appointment_id or str(uuid.uuid4())
        pending = found.requires_confirmation
        claim_until = self._pending_deadline(found, now) if pending else None
        if not claims.book(
            self.conn, slot.id, appointment_id, now, owner=booker.client_id, claim_until=claim_until
        ):
            raise FhirError("slot-unavailable", "The Slot was taken meanwhile.")
        resource = self._booked_resource(appointment, found, booker, now, pending)
        stored = self.repo.save("Appointment", resource, resource_id=appointment_id, absent=new_id)
        self._write_slot_status(slot.id, "busy")
        return stored

    def _refuse_if_taken(self, slot_id: str, booker: Booker) -> None:
        """Fast refusal without waiting for the row lock: a Slot visibly booked or held by another is
        refused at once (the conditional update still decides every case this lets through)."""
        claim = claims.get(self.conn, slot_id)
        now = self.now
        if claim is None or claim.lapsed_at(now):
            return
        if claim.booked_at(now) or (claim.held_at(now) and claim.hold_owner != booker.client_id):
            raise FhirError("slot-unavailable", "The Slot is taken or held by another client.")

    def _pending_deadline(self, found: Offer, now: int) -> int:
        start = parse_instant(found.start, self.tz)
        return min(now + self.confirm_us, start)

    def _booked_resource(
        self, appointment: dict, found: Offer, booker: Booker, now: int, pending: bool
    ) -> dict:
        resource = {k: v for k, v in appointment.items() if k not in ("id", "meta")}
        resource["status"] = "pending" if pending else "booked"
        resource["start"] = found.start
        resource["end"] = found.end
        resource["slot"] = [{"reference": f"Slot/{found.slot.id}"}]
        resource["created"] = _date_in(now, self.tz)
        participants = []
        for participant in resource.get("participant") or []:
            participants.append({**participant, "status": "accepted"})
        resource["participant"] = participants
        set_booked_by(resource, booker)
        return resource

    def book_by_time(
        self, schedule_id: str, start: str, end: str, appointment: dict, booker: Booker
    ) -> Stored:
        """Book the Slot of a Schedule that starts and ends exactly so (the Swedish face books this way)."""
        from terminhub.fhir import searchparams
        from terminhub.fhir.search_request import Criterion, SearchRequest
        from terminhub.store.search import SearchEngine

        engine = SearchEngine(self.conn, self.tz, lambda _t: None)
        request = SearchRequest(
            "Slot",
            [
                Criterion(
                    "schedule", None, (f"Schedule/{schedule_id}",), searchparams.param("Slot", "schedule")
                ),
                Criterion("start", None, (start,), searchparams.param("Slot", "start")),
            ],
            count=10,
        )
        matches = [s for s in engine.run(request).matches if _same_instant(s.resource()["end"], end, self.tz)]
        if len(matches) != 1:
            raise FhirError("not-found", "No single Slot of this Schedule has this start and end.")
        slot = matches[0]
        found = offer(self.repo, slot)
        self.check_bookable(found, appointment, booker)
        self.check_matching(found, appointment, booker)
        return self.book(slot, appointment, booker, found=found)

    # -- changes by PUT (3.2) ------------------------------------------------------------------------
    def update(
        self,
        current: Stored,
        new: dict,
        booker: Booker,
        *,
        creator: str | None,
        practice_may: bool,
        if_match: int | None = None,
    ) -> Stored:
        """A non-admin PUT of an Appointment: a status change of the table, a postponement, or free fields."""
        old = current.resource()
        changed = {k for k in set(old) | set(new) if k not in ("meta", "text") and old.get(k) != new.get(k)}
        if not changed:
            return self.repo.save("Appointment", new, resource_id=current.id, if_match=if_match)
        status_changed = "status" in changed
        if status_changed:
            return self._change_status(current, old, new, changed, booker, creator, practice_may, if_match)
        if changed & POSTPONE_FIELDS:
            return self._postpone(current, old, new, changed, booker, if_match)
        self._check_free_fields(old, new, changed)
        return self.repo.save("Appointment", new, resource_id=current.id, if_match=if_match)

    def _who(self, booker: Booker, creator: str | None, practice_may: bool) -> set[str]:
        roles = {booker.role}
        if creator and creator == booker.client_id:
            roles.add("creator")
        if booker.role == "practice" and not practice_may:
            roles.discard("practice")
        return roles

    def _change_status(
        self,
        current: Stored,
        old: dict,
        new: dict,
        changed: set[str],
        booker: Booker,
        creator: str | None,
        practice_may: bool,
        if_match: int | None,
    ) -> Stored:
        transition = (old.get("status"), new.get("status"))
        allowed = TRANSITIONS.get(transition)
        if allowed is None:
            raise FhirError(
                "business-rule", f"An Appointment cannot go from {transition[0]} to {transition[1]}."
            )
        if not allowed & self._who(booker, creator, practice_may):
            raise FhirError(
                "forbidden", f"You may not change this Appointment from {transition[0]} to {transition[1]}."
            )
        extra = changed - {"status", "cancelationReason"}
        if extra:
            self._check_free_fields(old, new, extra)
        if new["status"] in ("cancelled", "noshow"):
            new = (
                {**new, "cancelationReason": reason(CANCEL_REASON.get(booker.role, "other"))}
                if new["status"] == "cancelled"
                else new
            )
        slot_id = _slot_id(old)
        if new["status"] not in ACTIVE:
            if slot_id:
                self._let_go(slot_id, current.id, old)
            events.ended(self.repo, current.id, booker.role)
        elif transition == ("pending", "booked") and slot_id:
            claims.confirm(self.conn, slot_id, current.id)
        return self.repo.save("Appointment", new, resource_id=current.id, if_match=if_match)

    def _let_go(self, slot_id: str, appointment_id: str, appointment: dict) -> None:
        """The Appointment stops being active: its claim ends; a future Slot becomes free again."""
        slot = self.repo.get("Slot", slot_id)
        if slot is None or slot.deleted:
            return
        self.settle(slot)
        claims.free(self.conn, slot_id, appointment_id)
        start = slot.resource().get("start")
        if start and parse_instant(start, self.tz) > self.now:
            claim = claims.get(self.conn, slot_id)
            self._write_slot_status(slot_id, claim.status_at(self.now) if claim else "free")

    def cancel(self, appointment_id: str, booker: Booker) -> Stored:
        """Cancellation by a face's own operation (the rules of the face were checked by the face)."""
        stored = self.repo.get("Appointment", appointment_id, for_update=True)
        if stored is None or stored.deleted:
            raise FhirError("not-found", f"Appointment/{appointment_id} is not known.")
        appointment = stored.resource()
        if appointment.get("status") not in ("pending", "booked"):
            raise FhirError(
                "business-rule", f"An Appointment that is {appointment.get('status')} cannot be cancelled."
            )
        slot_id = _slot_id(appointment)
        if slot_id:
            self._let_go(slot_id, appointment_id, appointment)
        events.ended(self.repo, appointment_id, booker.role)
        appointment["status"] = "cancelled"
        appointment["cancelationReason"] = reason(CANCEL_REASON.get(booker.role, "other"))
        return self.repo.save("Appointment", appointment, resource_id=appointment_id)

    def _check_free_fields(self, old: dict, new: dict, changed: set[str]) -> None:
        for key in changed:
            if key in FREE_TO_CHANGE:
                if key == "priority" and _is_referral(old):
                    raise FhirError("business-rule", "The priority of a referral booking follows its code.")
                continue
            if key == "participant" and self._participants_ok(old, new):
                continue
            raise FhirError("business-rule", f"{key} of an Appointment cannot be changed this way.")

    def _participants_ok(self, old: dict, new: dict) -> bool:
        """Only participants that are neither the Patient nor actors of the Slot's Schedule may change."""
        protected = self._protected_actors(old)
        kept_old = [p for p in old.get("participant") or [] if _actor(p) in protected]
        kept_new = [p for p in new.get("participant") or [] if _actor(p) in protected]
        return kept_old == kept_new

    def _protected_actors(self, appointment: dict) -> set[str]:
        protected = {
            _actor(p) for p in appointment.get("participant") or [] if _actor(p).startswith("Patient/")
        }
        slot_id = _slot_id(appointment)
        slot = self.repo.get("Slot", slot_id) if slot_id else None
        if slot and not slot.deleted:
            found = offer(self.repo, slot)
            for actor in (found.schedule or {}).get("actor") or []:
                protected.add(actor.get("reference", ""))
        return protected

    def _postpone(
        self, current: Stored, old: dict, new: dict, changed: set[str], booker: Booker, if_match: int | None
    ) -> Stored:
        """Move a booking to another Slot: old freed and new taken in this one transaction; id kept."""
        if "slot" not in changed:
            raise FhirError("business-rule", "To postpone, change slot, start and end together.")
        extra = changed - POSTPONE_FIELDS
        if extra:
            self._check_free_fields(old, new, extra)
        if old.get("status") not in ACTIVE:
            raise FhirError("business-rule", f"An Appointment that is {old.get('status')} cannot be moved.")
        new_slot_id = _slot_id(new)
        if not new_slot_id or len(new.get("slot") or []) != 1:
            raise FhirError("business-rule", "A postponed Appointment refers to exactly one new Slot.")
        target = self.repo.get("Slot", new_slot_id)
        if target is None or target.deleted:
            raise FhirError("business-rule", "The new Slot does not exist or is not visible to you.")
        found = offer(self.repo, target)
        old_slot = self.repo.get("Slot", _slot_id(old) or "")
        old_offer = offer(self.repo, old_slot) if old_slot and not old_slot.deleted else None
        same_org = schedule_organization(self.repo, found.schedule) == (
            schedule_organization(self.repo, old_offer.schedule) if old_offer else None
        )
        if not same_org:
            raise FhirError("business-rule", "The new Slot belongs to another Organization.")
        for key in ("start", "end"):
            if not new.get(key) or not _same_instant(new[key], found.slot_resource[key], self.tz):
                raise FhirError("business-rule", f"The Appointment's {key} must equal the new Slot's.")
        codings = _appointment_codings(old)
        if codings and not any(found.offers(c) for c in codings):
            raise FhirError("slot-not-matching", "The new Slot does not offer this Appointment's service.")
        if not found.schedule_active or _in_past(found, self.now, self.tz):
            raise FhirError("business-rule", "The new Slot cannot be booked (inactive Schedule or past).")
        claim = self.settle(target)
        now = self.now
        if claim.status_at(now) != "free" and not (
            claim.held_at(now) and claim.hold_owner == booker.client_id
        ):
            raise FhirError("slot-unavailable", "The new Slot is not free.")
        pending = old.get("status") == "pending"
        claim_until = self._pending_deadline(found, now) if pending else None
        if not claims.book(
            self.conn, target.id, current.id, now, owner=booker.client_id, claim_until=claim_until
        ):
            raise FhirError("slot-unavailable", "The new Slot was taken meanwhile.")
        if old_slot and not old_slot.deleted:
            self._let_go(old_slot.id, current.id, old)
        self._write_slot_status(target.id, "busy")
        return self.repo.save("Appointment", new, resource_id=current.id, if_match=if_match)

    # -- admin writes keep the invariant -------------------------------------------------------------
    def admin_appointment(self, new: dict, previous: dict | None, appointment_id: str) -> None:
        """Before an admin's Appointment is stored as sent: claim its Slot if it becomes active, free the
        Slot if it stops being active; 409 when another active Appointment holds the Slot."""
        was_active = bool(previous) and previous.get("status") in ACTIVE
        old_slot = _slot_id(previous) if previous else None
        new_slot = _slot_id(new)
        active = new.get("status") in ACTIVE
        if was_active and old_slot and (not active or old_slot != new_slot):
            self._let_go(old_slot, appointment_id, previous or {})
        if was_active and not active:
            events.ended(self.repo, appointment_id, "admin")
        if active and new_slot:
            slot = self.repo.get("Slot", new_slot)
            if slot is None or slot.deleted:
                return
            claim = self.settle(slot)
            now = self.now
            if claim.booked_at(now) and claim.appointment_id == appointment_id:
                return
            if claim.booked_at(now):
                raise FhirError("slot-unavailable", "Another active Appointment refers to this Slot.")
            claim_until = None
            if new.get("status") == "pending":
                claim_until = self._pending_deadline(offer(self.repo, slot), now)
            claims.set_base_status(self.conn, new_slot, "free")
            if not claims.book(
                self.conn, new_slot, appointment_id, now, owner="admin", claim_until=claim_until
            ):
                raise FhirError("slot-unavailable", "Another active Appointment refers to this Slot.")
            self._write_slot_status(new_slot, "busy")

    def before_delete(self, stored: Stored) -> None:
        """A Schedule with Slots or a booked or held Slot cannot be deleted; a deleted active Appointment
        frees its Slot."""
        if stored.type == "Schedule":
            if self._has_slots(stored.id):
                raise FhirError("conflict", "The Schedule still has Slots; delete them first.")
        elif stored.type == "Slot":
            claim = self.settle(stored)
            if claim.booked_at(self.now) or claim.held_at(self.now):
                raise FhirError("slot-unavailable", "The Slot is booked or held; it cannot be deleted.")
        elif stored.type == "Appointment":
            appointment = stored.resource()
            slot_id = _slot_id(appointment)
            if appointment.get("status") in ACTIVE and slot_id:
                self._let_go(slot_id, stored.id, appointment)
            if appointment.get("status") in ACTIVE:
                events.ended(self.repo, stored.id, "admin")

    def _has_slots(self, schedule_id: str) -> bool:
        """Whether a Slot that is not deleted refers to the Schedule (deleted ones leave no index rows)."""
        s = schema.search_index
        query = select(s.c.id).where(
            s.c.type == "Slot", s.c.param == "schedule", s.c.ref_type == "Schedule", s.c.ref_id == schedule_id
        )
        return self.conn.execute(query.limit(1)).first() is not None

    # -- the practice's own word on its Slots (contract 5) ---------------------------------------------
    def set_practice_status(self, slot: Stored, status: str) -> Stored:
        """The practice sets its Slot `free` or `busy`: the claim row's base status, so a busy Slot is neither
        held nor booked until the practice frees it again. A Slot with an active Appointment or a running
        hold cannot be set free (409); setting it busy ends a running hold. The Slot gets a new version
        only when the status every reader sees changes."""
        if status not in PRACTICE_STATUSES:
            raise FhirError("invalid", "A practice sets a Slot free or busy.", diagnostics=status)
        claim = self.settle(slot)
        now = self.now
        if status == "free" and (claim.booked_at(now) or claim.held_at(now)):
            raise FhirError("slot-unavailable", "The Slot is booked or held; it cannot be set free.")
        if status == "busy" and claim.held_at(now):
            claims.clear_hold(self.conn, slot.id)
        claims.set_base_status(self.conn, slot.id, status)
        claim = claims.get(self.conn, slot.id)
        assert claim is not None
        return self._write_slot_status(slot.id, claim.status_at(now)) or slot

    def admin_slot(self, slot_id: str, resource: dict, *, new_slot: bool) -> dict:
        """An admin's Slot write: its status becomes the practice-set base, the invariant is kept.
        `new_slot`: the Slot has never had a row (not even a deleted one)."""
        status = resource.get("status", "free")
        if claims.create(self.conn, slot_id, _base_status(status), new_slot=new_slot):
            return resource  # a new claim row, with this base status: nobody has booked or held the Slot
        claim = claims.get(self.conn, slot_id, for_update=True)
        now = self.now
        if claim and claim.booked_at(now):
            if status != "busy":
                raise FhirError("slot-unavailable", "The Slot has an active Appointment; it stays busy.")
            return resource
        claims.set_base_status(self.conn, slot_id, _base_status(status))
        return resource


def set_booked_by(resource: dict, booker: Booker) -> None:
    extensions = [e for e in resource.get("extension") or [] if e.get("url") != BOOKED_BY]
    extensions.append(
        {
            "url": BOOKED_BY,
            "extension": [
                {"url": "client", "valueIdentifier": {"system": CLIENT_SYSTEM, "value": booker.client_id}},
                {"url": "role", "valueCode": booker.face},
            ],
        }
    )
    resource["extension"] = extensions


def _base_status(status: str) -> str:
    """The status a Slot has of its own (as its practice set it); a hold is never its own."""
    return "free" if status == "busy-tentative" else status


def reason(code: str) -> dict:
    return {"coding": [{"system": CANCELLATION_SYSTEM, "code": code}]}


def _slot_id(appointment: dict | None) -> str | None:
    for slot in (appointment or {}).get("slot") or []:
        ref = split_reference(slot.get("reference", "")) if isinstance(slot, dict) else None
        if ref and ref[0] == "Slot":
            return ref[1]
    return None


def _actor(participant: dict) -> str:
    return (participant.get("actor") or {}).get("reference", "")


def _is_referral(appointment: dict) -> bool:
    return any(
        (b.get("identifier") or {}).get("system") == REFERRAL_SYSTEM for b in appointment.get("basedOn") or []
    )


def _appointment_codings(appointment: dict) -> list[tuple[str | None, str]]:
    return [
        (c.get("system"), c.get("code"))
        for concept in (appointment.get("serviceType") or []) + (appointment.get("specialty") or [])
        for c in concept.get("coding") or []
        if c.get("code")
    ]


def _same_instant(a: str, b: str, tz: ZoneInfo) -> bool:
    try:
        return parse_instant(a, tz) == parse_instant(b, tz)
    except DateError:
        return False


def _in_past(found: Offer, now: int, tz: ZoneInfo) -> bool:
    return parse_instant(found.start, tz) <= now


def _date_in(now: int, tz: ZoneInfo) -> str:
    from terminhub.clock import from_us

    return (from_us(now).astimezone(tz)).isoformat(timespec="seconds")
