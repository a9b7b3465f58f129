"""The Appointment lifecycle of contract 3.2 over HTTP: status changes by PUT, cancellation, postponement,
expiry of holds and unconfirmed bookings, and the invariant kept for admin writes (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.server import PRACTICE_BSNR, Server

BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
FACHGEBIET = "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_BAS_FACHGEBIET_GROB"
CANCELLATION = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"


@dataclass
class World:
    server: Server
    admin: httpx.Client
    client: httpx.Client
    practice: httpx.Client
    org: str
    other_org: str
    schedule: str
    confirm_schedule: str
    other_schedule: str
    patient: str
    tag: str
    counter: int = 0

    def slot(self, schedule: str | None = None, **extra: object) -> str:
        """A new free Slot in the future."""
        self.counter += 1
        n = self.counter
        slot_id = f"lc-{self.tag}-{n}"
        start = f"2031-06-{1 + n // 40:02d}T{8 + (n % 40) // 4:02d}:{(n % 4) * 15:02d}:00+02:00"
        end = f"2031-06-{1 + n // 40:02d}T{8 + (n % 40) // 4:02d}:{(n % 4) * 15 + 10:02d}:00+02:00"
        resource = {
            "resourceType": "Slot",
            "id": slot_id,
            "status": "free",
            "start": start,
            "end": end,
            "schedule": {"reference": f"Schedule/{schedule or self.schedule}"},
            **extra,
        }
        reply = self.admin.put(f"Slot/{slot_id}", json=resource)
        assert reply.status_code == 201, reply.text
        return slot_id

    def book(self, slot_id: str, client: httpx.Client | None = None, **extra: object) -> httpx.Response:
        appointment = {
            "resourceType": "Appointment",
            "status": "proposed",
            "slot": [{"reference": f"Slot/{slot_id}"}],
            "participant": [{"actor": {"reference": f"Patient/{self.patient}"}, "status": "needs-action"}],
            **extra,
        }
        return (client or self.client).post(
            "Appointment/$book",
            json={
                "resourceType": "Parameters",
                "parameter": [{"name": "appointment-resource", "resource": appointment}],
            },
        )

    def booked(self, slot_id: str) -> dict:
        reply = self.book(slot_id)
        assert reply.status_code == 200, reply.text
        return next(p["resource"] for p in reply.json()["parameter"] if p["name"] == "appointment")

    def status_of(self, slot_id: str) -> str:
        reply = self.admin.get(f"Slot/{slot_id}")
        assert reply.status_code == 200, reply.text
        return reply.json()["status"]

    def put(self, client: httpx.Client, appointment: dict) -> httpx.Response:
        return client.put(f"Appointment/{appointment['id']}", json=appointment)

    def clock(self, offset_s: float) -> None:
        reply = httpx.post(
            self.server.base_url + "/admin/clock",
            json={"offset_s": offset_s},
            headers={"Authorization": f"Bearer {self.server.token('admin')}"},
        )
        assert reply.status_code == 200, reply.text


def _create(client: httpx.Client, resource: dict) -> str:
    reply = client.post(resource["resourceType"], json=resource)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def _practice_org(admin: httpx.Client) -> str:
    """The Organization of the test server's practice client (created once per server)."""
    found = admin.get("Organization", params={"identifier": f"{BSNR_SYSTEM}|{PRACTICE_BSNR}"}).json()
    if found.get("entry"):
        return found["entry"][0]["resource"]["id"]
    return _create(
        admin,
        {
            "resourceType": "Organization",
            "name": "Testpraxis",
            "identifier": [{"system": BSNR_SYSTEM, "value": PRACTICE_BSNR}],
        },
    )


def _schedule(admin: httpx.Client, org: str, tag: str, **extra: object) -> str:
    role = _create(
        admin, {"resourceType": "PractitionerRole", "organization": {"reference": f"Organization/{org}"}}
    )
    return _create(
        admin,
        {
            "resourceType": "Schedule",
            "active": True,
            "actor": [{"reference": f"PractitionerRole/{role}"}],
            "specialty": [{"coding": [{"system": FACHGEBIET, "code": "01"}]}],
            "identifier": [{"system": "urn:test:lifecycle", "value": tag}],
            **extra,
        },
    )


@pytest.fixture(scope="module")
def world(server: Server) -> Iterator[World]:
    tag = uuid.uuid4().hex[:10]
    with (
        server.client("admin") as admin,
        server.client("scheduling-client") as client,
        server.client("practice") as practice,
    ):
        org = _practice_org(admin)
        other_org = _create(
            admin,
            {
                "resourceType": "Organization",
                "name": "Andere Praxis",
                "identifier": [{"system": BSNR_SYSTEM, "value": f"9{uuid.uuid4().int % 10**8:08d}"}],
            },
        )
        schedule = _schedule(admin, org, tag)
        confirm = _schedule(
            admin, org, tag, extension=[{"url": "urn:terminhub:requires-confirmation", "valueBoolean": True}]
        )
        other = _schedule(admin, other_org, tag)
        patient = _create(client, {"resourceType": "Patient", "name": [{"family": "Lebenslauf"}]})
        yield World(server, admin, client, practice, org, other_org, schedule, confirm, other, patient, tag)
        world_clock_reset(server)


def world_clock_reset(server: Server) -> None:
    httpx.post(
        server.base_url + "/admin/clock",
        json={"offset_s": 0},
        headers={"Authorization": f"Bearer {server.token('admin')}"},
    )


# -- booking ------------------------------------------------------------------------------------------
def test_a_booking_makes_the_slot_busy_and_says_who_booked(world: World) -> None:
    slot = world.slot()
    appointment = world.booked(slot)
    assert appointment["status"] == "booked"
    assert world.status_of(slot) == "busy"
    booked_by = next(e for e in appointment["extension"] if e["url"] == "urn:terminhub:booked-by")
    parts = {p["url"]: p for p in booked_by["extension"]}
    assert parts["role"]["valueCode"] == "scheduling-client"
    assert (
        parts["client"]["valueIdentifier"]["value"] == world.server.credentials["scheduling-client"].client_id
    )
    assert appointment["created"]
    assert all(p["status"] == "accepted" for p in appointment["participant"])


# -- cancellation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("role", "reason"), [("scheduling-client", "pat"), ("practice", "prov"), ("admin", "other")]
)
def test_a_cancellation_frees_the_slot_and_records_who_cancelled(
    world: World, role: str, reason: str
) -> None:
    slot = world.slot()
    appointment = world.booked(slot)
    client = {"scheduling-client": world.client, "practice": world.practice, "admin": world.admin}[role]
    reply = world.put(client, {**appointment, "status": "cancelled"})
    assert reply.status_code == 200, reply.text
    if role != "admin":  # admin writes are stored as sent
        assert reply.json()["cancelationReason"]["coding"][0] == {"system": CANCELLATION, "code": reason}
    assert world.status_of(slot) == "free"


def test_a_freed_slot_can_be_booked_again(world: World) -> None:
    slot = world.slot()
    appointment = world.booked(slot)
    assert world.put(world.client, {**appointment, "status": "cancelled"}).status_code == 200
    assert world.book(slot).status_code == 200


# -- the status table ---------------------------------------------------------------------------------
def test_the_practice_confirms_a_pending_booking(world: World) -> None:
    appointment = world.booked(world.slot(world.confirm_schedule))
    assert appointment["status"] == "pending"
    assert world.put(world.client, {**appointment, "status": "booked"}).status_code == 403
    reply = world.put(world.practice, {**appointment, "status": "booked"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "booked"


@pytest.mark.parametrize("target", ["arrived", "checked-in", "fulfilled", "noshow"])
def test_only_the_practice_records_what_happened(world: World, target: str) -> None:
    appointment = world.booked(world.slot())
    refused = world.put(world.client, {**appointment, "status": target})
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["details"]["coding"][0]["code"] == "forbidden"
    assert world.put(world.practice, {**appointment, "status": target}).status_code == 200


@pytest.mark.parametrize("target", ["proposed", "waitlist"])
def test_a_change_outside_the_table_is_refused(world: World, target: str) -> None:
    appointment = world.booked(world.slot())
    reply = world.put(world.practice, {**appointment, "status": target})
    assert reply.status_code == 422
    assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == "business-rule"


def test_free_fields_may_change_but_nothing_else(world: World) -> None:
    appointment = world.booked(world.slot())
    changed = world.put(world.client, {**appointment, "comment": "Bitte Versichertenkarte mitbringen"})
    assert changed.status_code == 200, changed.text
    current = changed.json()
    reply = world.put(world.client, {**current, "serviceType": [{"text": "anders"}]})
    assert reply.status_code == 422
    patient = world.put(
        world.client,
        {**current, "participant": [{"actor": {"reference": "Patient/someone-else"}, "status": "accepted"}]},
    )
    assert patient.status_code in (422,)


# -- postponement -------------------------------------------------------------------------------------
def _moved(appointment: dict, world: World, slot_id: str) -> dict:
    slot = world.admin.get(f"Slot/{slot_id}").json()
    return {
        **appointment,
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "start": slot["start"],
        "end": slot["end"],
    }


def test_postponing_moves_the_booking_and_keeps_its_id(world: World) -> None:
    old, new = world.slot(), world.slot()
    appointment = world.booked(old)
    reply = world.put(world.client, _moved(appointment, world, new))
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == appointment["id"]
    assert world.status_of(old) == "free"
    assert world.status_of(new) == "busy"


def test_postponing_to_a_taken_slot_is_409_and_changes_nothing(world: World) -> None:
    old, taken = world.slot(), world.slot()
    appointment = world.booked(old)
    world.booked(taken)
    before = world.server.counts()
    reply = world.put(world.client, _moved(appointment, world, taken))
    assert reply.status_code == 409
    assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == "slot-unavailable"
    assert world.server.counts() == before
    assert world.status_of(old) == "busy"


def test_postponing_to_another_organization_is_422(world: World) -> None:
    appointment = world.booked(world.slot())
    reply = world.put(world.client, _moved(appointment, world, world.slot(world.other_schedule)))
    assert reply.status_code == 422
    assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == "business-rule"


def test_postponing_with_times_other_than_the_new_slots_is_422(world: World) -> None:
    appointment = world.booked(world.slot())
    moved = _moved(appointment, world, world.slot())
    moved["start"] = appointment["start"]
    assert world.put(world.client, moved).status_code == 422


def test_postponing_to_a_slot_not_offering_the_service_is_slot_not_matching(world: World) -> None:
    slot = world.slot()
    reply = world.book(slot, serviceType=[{"coding": [{"system": FACHGEBIET, "code": "01"}]}])
    assert reply.status_code == 200, reply.text
    appointment = next(p["resource"] for p in reply.json()["parameter"] if p["name"] == "appointment")
    elsewhere = world.slot(specialty=[{"coding": [{"system": FACHGEBIET, "code": "26"}]}])
    moved = world.put(world.client, _moved(appointment, world, elsewhere))
    assert moved.status_code == 422
    assert moved.json()["issue"][0]["details"]["coding"][0]["code"] == "slot-not-matching"


# -- expiry -------------------------------------------------------------------------------------------
def test_an_unconfirmed_booking_is_cancelled_by_the_hub_after_the_confirmation_time(world: World) -> None:
    slot = world.slot(world.confirm_schedule)
    appointment = world.booked(slot)
    try:
        world.clock(49 * 3600)
        seen = world.client.get(f"Appointment/{appointment['id']}").json()
        assert seen["status"] == "cancelled"
        assert world.status_of(slot) == "free"
        free = world.admin.get("Slot", params={"_id": slot, "status": "free"}).json()
        assert [e["resource"]["id"] for e in free.get("entry", [])] == [slot]
        assert world.book(slot).status_code == 200
    finally:
        world.clock(0)


def test_an_expired_hold_frees_the_slot_for_everyone(world: World) -> None:
    slot = world.slot()
    hold = world.client.post(
        "Slot/$hold",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "slot-reference", "valueReference": {"reference": f"Slot/{slot}"}},
                {"name": "slot-status", "valueCode": "busy-tentative"},
            ],
        },
    )
    assert hold.status_code == 200, hold.text
    assert world.status_of(slot) == "busy-tentative"
    try:
        world.clock(11 * 60)
        assert world.status_of(slot) == "free"
        free = world.admin.get("Slot", params={"_id": slot, "status": "free"}).json()
        assert len(free.get("entry", [])) == 1
        assert world.book(slot, client=world.admin).status_code == 200
    finally:
        world.clock(0)


# -- admin writes keep the invariant ------------------------------------------------------------------
def test_an_admin_appointment_takes_its_slot_and_a_second_one_is_refused(world: World) -> None:
    slot = world.slot()
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{slot}"}],
        "start": "2031-06-01T08:00:00+02:00",
        "end": "2031-06-01T08:10:00+02:00",
        "participant": [{"actor": {"reference": f"Patient/{world.patient}"}, "status": "accepted"}],
    }
    assert world.admin.post("Appointment", json=appointment).status_code == 201
    assert world.status_of(slot) == "busy"
    before = world.server.counts()
    second = world.admin.post("Appointment", json=appointment)
    assert second.status_code == 409
    assert world.server.counts() == before


def test_a_booked_slot_cannot_be_deleted(world: World) -> None:
    slot = world.slot()
    world.booked(slot)
    reply = world.admin.delete(f"Slot/{slot}")
    assert reply.status_code == 409
    assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == "slot-unavailable"


# -- patients -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("system", "good", "bad"),
    [
        ("http://fhir.de/sid/gkv/kvid-10", "A123456789", "1234567890"),
        ("urn:oid:1.2.40.0.10.1.4.3.1", "1234010180", "12340101"),
        ("urn:oid:1.2.752.129.2.1.3.1", "197001011234", "19700101-1234"),
    ],
)
def test_patient_identifiers_are_checked_for_format(world: World, system: str, good: str, bad: str) -> None:
    def patient(value: str) -> dict:
        return {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}

    assert world.client.post("Patient", json=patient(bad)).status_code == 400
    unique = good[:-3] + f"{uuid.uuid4().int % 1000:03d}"
    created = world.client.post("Patient", json=patient(unique))
    assert created.status_code == 201, created.text
    again = world.client.post(
        "Patient", json=patient(unique), headers={"If-None-Exist": f"identifier={system}|{unique}"}
    )
    assert again.status_code == 200
    assert again.json()["id"] == created.json()["id"]
