"""The Austrian scheduling face (contract 3, 3.1, 3.2, 2.5): `$hold`, `$book`, `$findHSP`, black-box over
HTTP on SQLite and PostgreSQL.

The module builds its directory as admin under a fresh prefix, with code systems of its own, so that
`$findHSP` only ever meets this module's services on the shared session server. Holds are taken by
clients registered for one test (a client holds at most TERMINHUB_MAX_HOLDS Slots), and every Slot a
test changes is made for that test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.api.rest_helpers import (
    FHIR_NS,
    FHIR_XML,
    XML_CONTENT_TYPE,
    assert_error,
    assert_xml_error,
    fresh_client,
    patient,
    xml_root,
    xml_value,
)
from tests.support.server import Server

AT = "http://hl7.at/fhir/TC-FHIR-AG-Scheduling-R5/R5/OperationDefinition/"
BOOKABLE_BY = "urn:terminhub:bookable-by"
REQUIRES_CONFIRMATION = "urn:terminhub:requires-confirmation"
BOOKED_BY = "urn:terminhub:booked-by"
CLIENT_SYSTEM = "urn:terminhub:client"
XML_BODY = {"Content-Type": "application/fhir+xml"}
HOLD_MINUTES = 10
MAX_HOLDS = 5
NS = {"f": FHIR_NS}
Pair = tuple[httpx.Client, str]  # a client registered for one test, and its client id


# -- the module's world -------------------------------------------------------------------------------------
def concept(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def at(days: float, minutes: int = 0) -> datetime:
    """A whole minute `days` from now (UTC)."""
    moment = datetime.now(UTC) + timedelta(days=days, minutes=minutes)
    return moment.replace(second=0, microsecond=0)


def fhir_time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Provider:
    """A practice offering one service: its ids and the codings of that service."""

    organization: str
    location: str | None
    practitioner: str
    role: str
    service: str
    schedule: str
    type: tuple[str, str]
    specialty: tuple[str, str]
    category: tuple[str, str]

    def token(self, kind: str) -> str:
        system, code = getattr(self, kind)
        return f"{system}|{code}"


@dataclass
class World:
    """What this module wrote, with fresh ids under `prefix`."""

    admin: httpx.Client
    prefix: str = field(default_factory=lambda: "s" + uuid.uuid4().hex[:12])
    counter: int = 0

    def id(self, name: str) -> str:
        self.counter += 1
        return f"{self.prefix}-{name}-{self.counter}"

    def put(self, resource_type: str, name: str, body: dict) -> str:
        resource_id = self.id(name)
        resource = {"resourceType": resource_type, "id": resource_id, **body}
        reply = self.admin.put(f"{resource_type}/{resource_id}", json=resource)
        assert reply.status_code in (200, 201), reply.text
        return resource_id

    def provider(
        self,
        *,
        org_postal: str = "1010",
        location_postal: str | None = "1020",
        with_location: bool = True,
        service: dict | None = None,
        schedule: dict | None = None,
    ) -> Provider:
        """Organization, Location, Practitioner, PractitionerRole, HealthcareService and a Schedule of
        the role, all offering codings of their own."""
        tag = uuid.uuid4().hex[:8]
        type_, specialty, category = (
            (f"urn:test:{self.prefix}:{kind}", f"{kind}-{tag}") for kind in ("type", "specialty", "category")
        )
        org = self.put(
            "Organization", "org", {"name": f"Praxis {tag}", "address": [{"postalCode": org_postal}]}
        )
        location = None
        if with_location:
            address = {"address": {"postalCode": location_postal}} if location_postal else {}
            location = self.put(
                "Location",
                "loc",
                {"status": "active", "name": f"Ort {tag}", "managingOrganization": ref("Organization", org)}
                | address,
            )
        practitioner = self.put("Practitioner", "prac", {"name": [{"family": f"Ärztin {tag}"}]})
        role = self.put(
            "PractitionerRole",
            "role",
            {
                "active": True,
                "organization": ref("Organization", org),
                "practitioner": ref("Practitioner", practitioner),
                "specialty": [concept(*specialty)],
            },
        )
        service_id = self.put(
            "HealthcareService",
            "hs",
            {
                "active": True,
                "providedBy": ref("Organization", org),
                "category": [concept(*category)],
                "type": [concept(*type_)],
                "specialty": [concept(*specialty)],
                "name": f"Untersuchung {tag}",
            }
            | ({"location": [ref("Location", location)]} if location else {})
            | (service or {}),
        )
        schedule_id = self.schedule(role, type_, **(schedule or {}))
        return Provider(
            org, location, practitioner, role, service_id, schedule_id, type_, specialty, category
        )

    def schedule(self, role: str, type_: tuple[str, str], **elements: object) -> str:
        body = {"active": True, "actor": [ref("PractitionerRole", role)], "serviceType": [concept(*type_)]}
        return self.put("Schedule", "sched", body | elements)

    def slot(
        self, schedule: str, start: datetime | None = None, *, status: str = "free", **elements: object
    ) -> str:
        begin = start or at(3, minutes=self.counter)
        body = {
            "schedule": ref("Schedule", schedule),
            "status": status,
            "start": fhir_time(begin),
            "end": fhir_time(begin + timedelta(minutes=15)),
        }
        return self.put("Slot", "slot", body | elements)


def ref(resource_type: str, resource_id: str) -> dict:
    return {"reference": f"{resource_type}/{resource_id}"}


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client("admin") as client:
        yield client


@pytest.fixture(scope="module")
def world(admin: httpx.Client) -> World:
    return World(admin)


@pytest.fixture(scope="module")
def home(world: World) -> Provider:
    """The practice most Slots of this module belong to."""
    return world.provider()


@pytest.fixture
def me(server: Server) -> Iterator[Pair]:
    """A scheduling client of this test alone (and its client id)."""
    with fresh_client(server, "scheduling-client") as pair:
        yield pair


@pytest.fixture
def other(server: Server) -> Iterator[Pair]:
    """Another scheduling client of this test alone."""
    with fresh_client(server, "scheduling-client") as pair:
        yield pair


@pytest.fixture
def clock(server: Server) -> Iterator[httpx.Client]:
    """An admin client for /admin/clock; the offset is back at 0 after the test, whatever happened."""
    headers = {"Authorization": f"Bearer {server.token('admin')}"}
    with httpx.Client(base_url=server.base_url, timeout=60, headers=headers) as client:
        try:
            yield client
        finally:
            assert client.post("/admin/clock", json={"offset_s": 0}).status_code == 200


# -- Parameters in and out ----------------------------------------------------------------------------------
def parameters(*parts: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(parts)}


def hold_body(slot: str, status: str = "busy-tentative") -> dict:
    return parameters(
        {"name": "slot-reference", "valueReference": ref("Slot", slot)},
        {"name": "slot-status", "valueCode": status},
    )


def book_body(appointment: dict) -> dict:
    return parameters({"name": "appointment-resource", "resource": appointment})


def appointment(slot: str | list[str], patient_id: str | None, **elements: object) -> dict:
    slots = [slot] if isinstance(slot, str) else slot
    participants = [{"actor": ref("Patient", patient_id), "status": "needs-action"}] if patient_id else []
    body = {
        "resourceType": "Appointment",
        "status": "proposed",
        "slot": [ref("Slot", s) for s in slots],
        "participant": participants,
    }
    return body | elements


def out(reply: httpx.Response) -> dict[str, object]:
    """The output parameters by name (a resource, or the value[x])."""
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["resourceType"] == "Parameters"
    found = {}
    for p in body["parameter"]:
        value = p.get("resource", next((v for k, v in p.items() if k.startswith("value")), None))
        found[p["name"]] = value
    return found


def hold(client: httpx.Client, slot: str, status: str = "busy-tentative", **headers: str) -> httpx.Response:
    return client.post("Slot/$hold", json=hold_body(slot, status), headers=headers)


def book(client: httpx.Client, body: dict, **headers: str) -> httpx.Response:
    return client.post("Appointment/$book", json=book_body(body), headers=headers)


def new_patient(client: httpx.Client) -> str:
    reply = client.post("Patient", json=patient())
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def read(client: httpx.Client, resource_type: str, resource_id: str) -> dict:
    reply = client.get(f"{resource_type}/{resource_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()


def seconds_from_now(instant: str) -> float:
    return datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp() - time.time()


def assert_outcome_information(outcome: object) -> None:
    assert isinstance(outcome, dict) and outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "information"


# -- $hold --------------------------------------------------------------------------------------------------
def test_hold_makes_the_slot_busy_tentative_until_held_until(world: World, home: Provider, me: Pair) -> None:
    client, _ = me
    slot = world.slot(home.schedule)
    found = out(hold(client, slot))
    assert found["slot"]["id"] == slot and found["slot"]["status"] == "busy-tentative"
    assert HOLD_MINUTES * 60 - 30 < seconds_from_now(found["held-until"]) <= HOLD_MINUTES * 60 + 5
    assert_outcome_information(found["outcome"])
    assert read(client, "Slot", slot)["status"] == "busy-tentative"


def test_the_holder_may_renew_once(world: World, home: Provider, me: Pair) -> None:
    """A renewal counts from the renewal; a second renewal → 422 business-rule."""
    client, _ = me
    slot = world.slot(home.schedule)
    first = out(hold(client, slot))["held-until"]
    renewed = out(hold(client, slot))
    assert renewed["held-until"] > first and renewed["slot"]["status"] == "busy-tentative"
    assert_error(hold(client, slot), 422, "business-rule")


def test_a_slot_held_by_another_client_is_refused_and_nothing_changes(
    server: Server, world: World, home: Provider, me: Pair, other: Pair
) -> None:
    slot = world.slot(home.schedule)
    out(hold(me[0], slot))
    before, version = server.counts(), read(me[0], "Slot", slot)["meta"]["versionId"]
    assert_error(hold(other[0], slot), 409, "slot-unavailable")
    assert server.counts() == before
    assert read(me[0], "Slot", slot)["meta"]["versionId"] == version
    assert out(hold(me[0], slot, "free"))["slot"]["status"] == "free"  # still mine to release


def test_release_by_the_owner_frees_the_slot(world: World, home: Provider, me: Pair) -> None:
    client, _ = me
    slot = world.slot(home.schedule)
    out(hold(client, slot))
    found = out(hold(client, slot, "free"))
    assert found["slot"]["status"] == "free" and "held-until" not in found
    assert_outcome_information(found["outcome"])
    assert read(client, "Slot", slot)["status"] == "free"


def test_release_by_another_client_is_forbidden(world: World, home: Provider, me: Pair, other: Pair) -> None:
    slot = world.slot(home.schedule)
    out(hold(me[0], slot))
    assert_error(hold(other[0], slot, "free"), 403, "forbidden")
    assert read(me[0], "Slot", slot)["status"] == "busy-tentative"


def test_release_of_a_free_slot_changes_nothing(world: World, home: Provider, me: Pair) -> None:
    client, _ = me
    slot = world.slot(home.schedule)
    before = read(client, "Slot", slot)
    found = out(hold(client, slot, "free"))
    assert found["slot"]["status"] == "free"
    assert found["slot"]["meta"]["versionId"] == before["meta"]["versionId"]


def test_release_of_a_booked_slot_is_refused(world: World, home: Provider, me: Pair) -> None:
    client, _ = me
    slot = world.slot(home.schedule)
    out(book(client, appointment(slot, new_patient(client))))
    assert_error(hold(client, slot, "free"), 409, "slot-unavailable")
    assert_error(hold(client, slot), 409, "slot-unavailable")


def test_a_client_holds_at_most_max_holds_slots(world: World, home: Provider, me: Pair) -> None:
    client, _ = me
    slots = [world.slot(home.schedule) for _ in range(MAX_HOLDS + 1)]
    for slot in slots[:MAX_HOLDS]:
        out(hold(client, slot))
    assert_error(hold(client, slots[-1]), 429, "rate-limited")
    out(hold(client, slots[0], "free"))
    out(hold(client, slots[-1]))  # room again after a release


def test_a_hold_ends_at_held_until(
    world: World, home: Provider, me: Pair, other: Pair, clock: httpx.Client
) -> None:
    """After TERMINHUB_HOLD_MINUTES another client may hold the Slot, and book it."""
    held, booked = world.slot(home.schedule), world.slot(home.schedule)
    out(hold(me[0], held))
    out(hold(me[0], booked))
    assert clock.post("/admin/clock", json={"offset_s": (HOLD_MINUTES + 1) * 60}).status_code == 200
    assert out(hold(other[0], held))["slot"]["status"] == "busy-tentative"
    found = out(book(other[0], appointment(booked, new_patient(other[0]))))
    assert found["appointment"]["status"] == "booked"
    assert_error(hold(me[0], held, "free"), 403, "forbidden")


def test_a_slot_named_by_its_identifier(world: World, home: Provider, me: Pair) -> None:
    """slot-identifier must resolve to exactly one Slot: none → 404, several → 400."""
    client, _ = me
    system, value = f"urn:test:{world.prefix}:slot", uuid.uuid4().hex
    slot = world.slot(home.schedule, identifier=[{"system": system, "value": value}])
    by_identifier = parameters(
        {"name": "slot-identifier", "valueIdentifier": {"system": system, "value": value}},
        {"name": "slot-status", "valueCode": "busy-tentative"},
    )
    found = out(client.post("Slot/$hold", json=by_identifier))
    assert found["slot"]["id"] == slot and found["slot"]["status"] == "busy-tentative"

    unknown = parameters(
        {"name": "slot-identifier", "valueIdentifier": {"system": system, "value": "nobody"}},
        {"name": "slot-status", "valueCode": "busy-tentative"},
    )
    assert_error(client.post("Slot/$hold", json=unknown), 404, "not-found")
    twice = uuid.uuid4().hex
    for _ in range(2):
        world.slot(home.schedule, identifier=[{"system": system, "value": twice}])
    several = parameters(
        {"name": "slot-identifier", "valueIdentifier": {"system": system, "value": twice}},
        {"name": "slot-status", "valueCode": "busy-tentative"},
    )
    assert_error(client.post("Slot/$hold", json=several), 400, "invalid")
    disagreeing = parameters(
        {"name": "slot-reference", "valueReference": ref("Slot", world.slot(home.schedule))},
        {"name": "slot-identifier", "valueIdentifier": {"system": system, "value": value}},
        {"name": "slot-status", "valueCode": "free"},
    )
    assert_error(client.post("Slot/$hold", json=disagreeing), 400, "invalid")


def _named(slot: str, *parts: dict) -> dict:
    return parameters({"name": "slot-reference", "valueReference": ref("Slot", slot)}, *parts)


MALFORMED_HOLDS = {
    "slot-status busy": lambda slot: hold_body(slot, "busy"),
    "slot-status busy-unavailable": lambda slot: hold_body(slot, "busy-unavailable"),
    "slot-status as valueString": lambda slot: _named(slot, {"name": "slot-status", "valueString": "free"}),
    "slot-status missing": lambda slot: _named(slot),
    "slot-status twice": lambda slot: _named(
        slot, {"name": "slot-status", "valueCode": "free"}, {"name": "slot-status", "valueCode": "free"}
    ),
    "no Slot named": lambda slot: parameters({"name": "slot-status", "valueCode": "busy-tentative"}),
    "unknown parameter": lambda slot: _named(
        slot, {"name": "slot-status", "valueCode": "busy-tentative"}, {"name": "slot", "valueString": "x"}
    ),
    "NUL in an identifier": lambda slot: _named(
        slot,
        {"name": "slot-identifier", "valueIdentifier": {"value": "a\x00b"}},
        {"name": "slot-status", "valueCode": "busy-tentative"},
    ),
    "not Parameters": lambda slot: {"resourceType": "Basic", "code": {"text": slot}},
    "reference to a Patient": lambda slot: parameters(
        {"name": "slot-reference", "valueReference": ref("Patient", slot)},
        {"name": "slot-status", "valueCode": "busy-tentative"},
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_HOLDS))
def test_malformed_hold_requests_are_invalid(world: World, home: Provider, me: Pair, case: str) -> None:
    """400 invalid, and the Slot stays free; an unknown parameter's refusal lists the expected ones."""
    client, _ = me
    slot = world.slot(home.schedule)
    outcome = assert_error(client.post("Slot/$hold", json=MALFORMED_HOLDS[case](slot)), 400, "invalid")
    assert read(client, "Slot", slot)["status"] == "free"
    if case == "unknown parameter":
        text = outcome["issue"][0]["details"]["text"]
        assert all(name in text for name in ("slot", "slot-reference", "slot-identifier", "slot-status"))


def test_hold_of_an_unknown_slot_is_not_found(me: Pair) -> None:
    client, _ = me
    assert_error(hold(client, "no-such-slot-" + uuid.uuid4().hex[:8]), 404, "not-found")


def test_hold_is_refused_for_slots_that_offer_nothing_to_hold(world: World, home: Provider, me: Pair) -> None:
    """A practice-set busy Slot → 409; an inactive Schedule → 422; bookable by others only → 422."""
    client, _ = me
    assert_error(hold(client, world.slot(home.schedule, status="busy")), 409, "slot-unavailable")
    assert_error(hold(client, world.slot(home.schedule, status="busy-unavailable")), 409, "slot-unavailable")
    inactive = world.schedule(home.role, home.type, active=False)
    assert_error(hold(client, world.slot(inactive)), 422, "business-rule")
    practice_only = world.slot(home.schedule, extension=[{"url": BOOKABLE_BY, "valueCode": "practice"}])
    assert_error(hold(client, practice_only), 422, "slot-not-matching")


# -- $book --------------------------------------------------------------------------------------------------
def test_book_stores_a_booked_appointment_and_the_slot_becomes_busy(
    world: World, home: Provider, me: Pair
) -> None:
    client, client_id = me
    slot = world.slot(home.schedule)
    slot_resource = read(client, "Slot", slot)
    patient_id = new_patient(client)
    role = {"actor": ref("PractitionerRole", home.role), "status": "needs-action"}
    body = appointment(slot, patient_id, serviceType=[concept(*home.type)], description="Kontrolle")
    body["participant"].append(role)
    found = out(book(client, body))
    stored = found["appointment"]
    assert stored["status"] == "booked" and stored["id"]
    assert (stored["start"], stored["end"]) == (slot_resource["start"], slot_resource["end"])
    assert [p["status"] for p in stored["participant"]] == ["accepted", "accepted"]
    assert stored["slot"] == [ref("Slot", slot)] and stored["description"] == "Kontrolle"
    booked_by = next(e for e in stored["extension"] if e["url"] == BOOKED_BY)
    assert {"url": "client", "valueIdentifier": {"system": CLIENT_SYSTEM, "value": client_id}} in booked_by[
        "extension"
    ]
    assert {"url": "role", "valueCode": "scheduling-client"} in booked_by["extension"]
    assert_outcome_information(found["outcome"])
    assert read(client, "Slot", slot)["status"] == "busy"
    assert read(client, "Appointment", stored["id"]) == stored


def test_book_is_pending_where_the_schedule_needs_confirmation(
    world: World, home: Provider, me: Pair
) -> None:
    client, _ = me
    confirming = world.schedule(
        home.role, home.type, extension=[{"url": REQUIRES_CONFIRMATION, "valueBoolean": True}]
    )
    slot = world.slot(confirming)
    stored = out(book(client, appointment(slot, new_patient(client))))["appointment"]
    assert stored["status"] == "pending"
    assert read(client, "Slot", slot)["status"] == "busy"


def test_book_refusals_come_in_the_contracts_order_and_store_nothing(
    server: Server, world: World, home: Provider, me: Pair, other: Pair, admin: httpx.Client
) -> None:
    """Each request carries every later fault too, so the first failure named is the one that wins."""
    client, _ = me
    restricted = world.schedule(
        home.role, home.type, extension=[{"url": BOOKABLE_BY, "valueCode": "practice"}]
    )
    inactive = world.schedule(home.role, home.type, active=False)
    past = world.slot(inactive, at(-1), status="busy-unavailable")
    inactive_slot = world.slot(inactive, status="busy-unavailable")
    unavailable = world.slot(restricted, status="busy-unavailable")
    not_for_me = world.slot(restricted)
    held = world.slot(home.schedule)
    out(hold(other[0], held))
    mine = new_patient(client)
    invisible = new_patient(admin)
    wrong_service = [concept("urn:test:nothing", "offered")]
    start_elsewhere = fhir_time(at(9))
    steps = [
        (400, "invalid", appointment(past, mine, status="no-such-status")),
        (404, "not-found", appointment("unknown-" + uuid.uuid4().hex[:8], mine, status="booked")),
        (422, "business-rule", appointment(past, mine, status="booked")),
        (422, "business-rule", appointment([past, inactive_slot], mine)),
        (
            422,
            "business-rule",
            appointment(
                past,
                None,
                participant=[{"actor": ref("PractitionerRole", home.role), "status": "needs-action"}],
            ),
        ),
        (422, "business-rule", appointment(past, "no-such-patient")),
        (422, "business-rule", appointment(past, invisible)),
        (422, "business-rule", appointment(past, mine)),
        (422, "business-rule", appointment(inactive_slot, mine)),
        (422, "business-rule", appointment(unavailable, mine)),
        (422, "business-rule", appointment(not_for_me, mine, start=start_elsewhere)),
        (422, "slot-not-matching", appointment(not_for_me, mine)),
        (422, "slot-not-matching", appointment(held, mine, serviceType=wrong_service)),
        (409, "slot-unavailable", appointment(held, mine, serviceType=[concept(*home.type)])),
    ]
    before = server.counts()
    for status, code, body in steps:
        assert_error(book(client, body), status, code)
    assert server.counts() == before
    assert read(client, "Slot", held)["status"] == "busy-tentative"


def test_a_slot_held_by_another_cannot_be_booked_but_ones_own_hold_can(
    world: World, home: Provider, me: Pair, other: Pair
) -> None:
    slot = world.slot(home.schedule)
    out(hold(other[0], slot))
    assert_error(book(me[0], appointment(slot, new_patient(me[0]))), 409, "slot-unavailable")
    stored = out(book(other[0], appointment(slot, new_patient(other[0]))))["appointment"]
    assert stored["status"] == "booked"
    assert read(other[0], "Slot", slot)["status"] == "busy"
    assert_error(book(me[0], appointment(slot, new_patient(me[0]))), 409, "slot-unavailable")


def test_of_concurrent_bookings_of_one_slot_exactly_one_wins(
    server: Server, world: World, home: Provider
) -> None:
    """The loser of a race always gets 409 slot-unavailable, never a silent success (3.2)."""
    slot = world.slot(home.schedule)
    with ExitStack() as stack:
        pairs = [stack.enter_context(fresh_client(server, "scheduling-client")) for _ in range(6)]
        bodies = [appointment(slot, new_patient(client)) for client, _ in pairs]
        with ThreadPoolExecutor(len(pairs)) as pool:
            replies = list(pool.map(lambda i: book(pairs[i][0], bodies[i]), range(len(pairs))))
    assert sorted(r.status_code for r in replies) == [200] + [409] * (len(pairs) - 1)
    for reply in replies:
        if reply.status_code == 409:
            assert_error(reply, 409, "slot-unavailable")
    booked = world.admin.get("Appointment", params={"slot": f"Slot/{slot}"}).json()
    assert [e["resource"]["status"] for e in booked["entry"]] == ["booked"]


def test_bookable_by_excluding_scheduling_clients_is_slot_not_matching(
    world: World, home: Provider, me: Pair
) -> None:
    client, _ = me
    on_schedule = world.schedule(
        home.role, home.type, extension=[{"url": BOOKABLE_BY, "valueCode": "third-party"}]
    )
    for slot in (
        world.slot(on_schedule),
        world.slot(home.schedule, extension=[{"url": BOOKABLE_BY, "valueCode": "practice"}]),
    ):
        assert_error(book(client, appointment(slot, new_patient(client))), 422, "slot-not-matching")
    allowed = world.slot(home.schedule, extension=[{"url": BOOKABLE_BY, "valueCode": "scheduling-client"}])
    assert out(book(client, appointment(allowed, new_patient(client))))["appointment"]["status"] == "booked"


def test_an_inactive_schedule_cannot_be_booked(world: World, home: Provider, me: Pair) -> None:
    client, _ = me
    slot = world.slot(world.schedule(home.role, home.type, active=False))
    assert_error(book(client, appointment(slot, new_patient(client))), 422, "business-rule")
    assert read(client, "Slot", slot)["status"] == "free"


def test_book_replays_its_first_answer_for_the_same_idempotency_key(
    server: Server, world: World, home: Provider, me
) -> None:
    client, _ = me
    slot = world.slot(home.schedule)
    body = appointment(slot, new_patient(client))
    key = "book-" + uuid.uuid4().hex
    first = out(book(client, body, **{"Idempotency-Key": key}))["appointment"]
    before = server.counts()
    again = out(book(client, body, **{"Idempotency-Key": key}))["appointment"]
    assert (again["id"], again["status"]) == (first["id"], first["status"]) == (first["id"], "booked")
    assert server.counts() == before
    changed = appointment(slot, new_patient(client), description="another request")
    assert_error(book(client, changed, **{"Idempotency-Key": key}), 422, "business-rule")
    assert_error(book(client, body, **{"Idempotency-Key": "with space"}), 400, "invalid")
    assert_error(book(client, body), 409, "slot-unavailable")  # without the key: a new attempt


def test_hold_replays_its_first_answer_for_the_same_idempotency_key(
    world: World, home: Provider, me: Pair
) -> None:
    client, _ = me
    slot = world.slot(home.schedule)
    key = "hold-" + uuid.uuid4().hex
    first = out(hold(client, slot, **{"Idempotency-Key": key}))
    again = out(hold(client, slot, **{"Idempotency-Key": key}))
    assert again == first  # a renewal would have moved held-until
    out(hold(client, slot))  # the one renewal is still there
    assert_error(hold(client, slot, "free", **{"Idempotency-Key": key}), 422, "business-rule")


# -- XML ----------------------------------------------------------------------------------------------------
def xml_hold(slot: str, status: str = "busy-tentative") -> bytes:
    return (
        f'<Parameters xmlns="{FHIR_NS}"><parameter><name value="slot-reference"/><valueReference>'
        f'<reference value="Slot/{slot}"/></valueReference></parameter><parameter><name value="slot-status"/>'
        f'<valueCode value="{status}"/></parameter></Parameters>'
    ).encode()


def xml_book(slot: str, patient_id: str) -> bytes:
    return (
        f'<Parameters xmlns="{FHIR_NS}"><parameter><name value="appointment-resource"/><resource>'
        f'<Appointment><status value="proposed"/><slot><reference value="Slot/{slot}"/></slot><participant>'
        f'<actor><reference value="Patient/{patient_id}"/></actor><status value="needs-action"/>'
        "</participant></Appointment></resource></parameter></Parameters>"
    ).encode()


def xml_parameter(root, name: str):  # noqa: ANN001, ANN201 - lxml elements
    return next(p for p in root.findall("f:parameter", NS) if p.find("f:name", NS).get("value") == name)


def test_hold_and_book_speak_xml(world: World, home: Provider, me: Pair) -> None:
    client, _ = me
    xml = {"Accept": FHIR_XML, **XML_BODY}
    slot = world.slot(home.schedule)
    reply = client.post("Slot/$hold", content=xml_hold(slot), headers=xml)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == XML_CONTENT_TYPE
    root = xml_root(reply)
    assert root.tag == f"{{{FHIR_NS}}}Parameters"
    assert xml_value(xml_parameter(root, "slot"), "resource/Slot/status") == "busy-tentative"
    assert xml_value(xml_parameter(root, "held-until"), "valueDateTime")
    assert (
        xml_value(xml_parameter(root, "outcome"), "resource/OperationOutcome/issue/severity") == "information"
    )

    reply = client.post("Appointment/$book", content=xml_book(slot, new_patient(client)), headers=xml)
    assert reply.status_code == 200, reply.text
    stored = xml_parameter(xml_root(reply), "appointment")
    assert xml_value(stored, "resource/Appointment/status") == "booked"
    assert xml_value(stored, "resource/Appointment/participant/status") == "accepted"

    refused = client.post("Slot/$hold", content=xml_hold(slot, "busy"), headers=xml)
    assert_xml_error(refused, 400, "invalid")
    taken = client.post("Slot/$hold", content=xml_hold(slot), headers=xml)
    assert_xml_error(taken, 409, "slot-unavailable")


def test_an_xml_request_is_the_same_request_for_idempotency(world: World, home: Provider, me: Pair) -> None:
    """The same Parameters as JSON and as XML are one request: the replay answers in the asked format."""
    client, _ = me
    slot = world.slot(home.schedule)
    key = "xml-" + uuid.uuid4().hex
    first = out(hold(client, slot, **{"Idempotency-Key": key}))
    headers = {"Accept": FHIR_XML, **XML_BODY, "Idempotency-Key": key}
    reply = client.post("Slot/$hold", content=xml_hold(slot), headers=headers)
    assert reply.status_code == 200, reply.text
    assert xml_value(xml_parameter(xml_root(reply), "held-until"), "valueDateTime") == first["held-until"]


# -- $findHSP -----------------------------------------------------------------------------------------------
def find(client: httpx.Client, *parts: dict, **query: str) -> dict:
    """POST $findHSP; returns the result Bundle."""
    reply = client.post("HealthcareService/$findHSP", json=parameters(*parts), params=query)
    return result_bundle(reply)


def find_get(client: httpx.Client, params: list[tuple[str, str]]) -> dict:
    return result_bundle(client.get("HealthcareService/$findHSP", params=params))


def result_bundle(reply: httpx.Response) -> dict:
    found = out(reply)
    assert set(found) == {"result"}
    bundle = found["result"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def entries(bundle: dict, mode: str) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def token(name: str, value: str) -> dict:
    return {"name": f"healthcareService-{name}", "valueString": value}


@dataclass
class Directory:
    """Three practices sharing one service type: with a Location in 1020 (Organization in 1010), with a
    Location without a postal code, and without a Location (both Organizations in 8010)."""

    located: Provider
    unlocated: Provider
    plain: Provider
    shared: str  # the token of the shared type

    def services(self, *names: str) -> set[str]:
        return {f"HealthcareService/{getattr(self, name).service}" for name in names}


@pytest.fixture(scope="module")
def directory(world: World) -> Directory:
    located = world.provider(org_postal="1010", location_postal="1020")
    unlocated = world.provider(org_postal="8010", location_postal=None)
    plain = world.provider(org_postal="8010", with_location=False)
    shared = (f"urn:test:{world.prefix}:shared", "shared")
    for provider in (located, unlocated, plain):
        resource = read(world.admin, "HealthcareService", provider.service)
        resource["type"].append(concept(*shared))
        assert world.admin.put(f"HealthcareService/{provider.service}", json=resource).status_code == 200
    return Directory(located, unlocated, plain, "|".join(shared))


@pytest.fixture(scope="module")
def scheduler(server: Server) -> Iterator[httpx.Client]:
    with server.client("scheduling-client") as client:
        yield client


def test_find_by_reference_brings_the_providers_once(
    scheduler: httpx.Client, home: Provider, world: World
) -> None:
    other_role = world.put(
        "PractitionerRole",
        "role",
        {"organization": ref("Organization", home.organization), "specialty": [concept("urn:test:x", "y")]},
    )
    by_post = find(
        scheduler,
        {"name": "healthcareService-reference", "valueReference": ref("HealthcareService", home.service)},
    )
    by_get = find_get(scheduler, [("healthcareService-reference", f"HealthcareService/{home.service}")])
    for bundle in (by_post, by_get):
        assert entries(bundle, "match") == [f"HealthcareService/{home.service}"]
        included = entries(bundle, "include")
        assert sorted(included) == sorted(
            [
                f"Organization/{home.organization}",
                f"Location/{home.location}",
                f"PractitionerRole/{home.role}",
                f"Practitioner/{home.practitioner}",
            ]
        )
        assert f"PractitionerRole/{other_role}" not in included
        assert all(
            e["fullUrl"].endswith(f"{e['resource']['resourceType']}/{e['resource']['id']}")
            for e in bundle["entry"]
        )


def test_providers_shared_by_two_services_are_included_once(world: World, scheduler: httpx.Client) -> None:
    provider = world.provider()
    second = world.put(
        "HealthcareService",
        "hs",
        {
            "providedBy": ref("Organization", provider.organization),
            "location": [ref("Location", provider.location)],
            "type": [concept(*provider.type)],
            "specialty": [concept(*provider.specialty)],
        },
    )
    bundle = find(scheduler, token("type", provider.token("type")))
    assert sorted(entries(bundle, "match")) == sorted(
        [f"HealthcareService/{provider.service}", f"HealthcareService/{second}"]
    )
    assert sorted(entries(bundle, "include")) == sorted(
        [
            f"Organization/{provider.organization}",
            f"Location/{provider.location}",
            f"PractitionerRole/{provider.role}",
            f"Practitioner/{provider.practitioner}",
        ]
    )


@pytest.mark.parametrize("kind", ["category", "type", "specialty"])
def test_find_by_each_token(scheduler: httpx.Client, home: Provider, kind: str) -> None:
    expected = [f"HealthcareService/{home.service}"]
    assert entries(find(scheduler, token(kind, home.token(kind))), "match") == expected
    assert (
        entries(find_get(scheduler, [(f"healthcareService-{kind}", home.token(kind))]), "match") == expected
    )
    assert entries(find(scheduler, token(kind, home.token(kind) + "-not")), "match") == []


def test_find_needs_a_service_criterion(scheduler: httpx.Client, home: Provider) -> None:
    """Without reference, category, type and specialty → 400; tokens need system and code."""
    location = {"name": "healthcareService-location", "valueReference": ref("Location", home.location)}
    assert_error(scheduler.post("HealthcareService/$findHSP", json=parameters(location)), 400, "invalid")
    assert_error(
        scheduler.get("HealthcareService/$findHSP", params={"healthcareService-zipCodeArea": "10"}),
        400,
        "invalid",
    )
    assert_error(scheduler.get("HealthcareService/$findHSP"), 400, "invalid")
    nul = {"healthcareService-type": home.token("type"), "healthcareService-zipCodeArea": "1\x00"}
    assert_error(scheduler.get("HealthcareService/$findHSP", params=nul), 400, "invalid")
    code_only = home.token("type").split("|")[1]
    assert_error(
        scheduler.post("HealthcareService/$findHSP", json=parameters(token("type", code_only))),
        400,
        "invalid",
    )
    unknown = scheduler.get(
        "HealthcareService/$findHSP", params={"healthcareService-type": home.token("type"), "nope": "1"}
    )
    assert (
        "healthcareService-zipCodeArea"
        in assert_error(unknown, 400, "invalid")["issue"][0]["details"]["text"]
    )


def test_find_by_location(scheduler: httpx.Client, directory: Directory) -> None:
    located = directory.located
    shared = token("type", directory.shared)
    here = {"name": "healthcareService-location", "valueReference": ref("Location", located.location)}
    assert set(entries(find(scheduler, shared, here), "match")) == directory.services("located")
    params = [
        ("healthcareService-type", directory.shared),
        ("healthcareService-location", f"Location/{located.location}"),
    ]
    assert set(entries(find_get(scheduler, params), "match")) == directory.services("located")
    elsewhere = {"name": "healthcareService-location", "valueReference": ref("Location", "nowhere")}
    assert entries(find(scheduler, shared, elsewhere), "match") == []
    everywhere = directory.services("located", "unlocated", "plain")
    assert set(entries(find(scheduler, shared), "match")) == everywhere


def test_find_by_zip_code_area(scheduler: httpx.Client, directory: Directory) -> None:
    """The Locations' postal codes count; the Organization's only for a service whose Locations have none."""
    shared = token("type", directory.shared)

    def area(*prefixes: str) -> set[str]:
        zips = [{"name": "healthcareService-zipCodeArea", "valueString": p} for p in prefixes]
        return set(entries(find(scheduler, shared, *zips), "match"))

    assert area("102") == directory.services("located")
    assert area("101") == set()  # the located service's Organization is in 1010, its Location is not
    assert area("80") == directory.services("unlocated", "plain")
    assert area("102", "8010") == directory.services("located", "unlocated", "plain")
    assert area("9") == set()
    params = [("healthcareService-type", directory.shared), ("healthcareService-zipCodeArea", "1020")]
    assert set(entries(find_get(scheduler, params), "match")) == directory.services("located")


def test_find_returns_active_services_only(scheduler: httpx.Client, world: World) -> None:
    retired = world.provider(service={"active": False})
    reference = {
        "name": "healthcareService-reference",
        "valueReference": ref("HealthcareService", retired.service),
    }
    assert entries(find(scheduler, reference), "match") == []
    assert entries(find(scheduler, token("type", retired.token("type"))), "match") == []


def test_find_by_availability_window(world: World, server: Server, scheduler: httpx.Client) -> None:
    """Only services with a free Slot starting in the window, bookable by the caller, of an active
    Schedule, offering the service's codings."""
    provider = world.provider()
    base = at(20)

    def moment(minutes: int) -> dict:
        return {"valueDateTime": fhir_time(base + timedelta(minutes=minutes))}

    window = [{"name": "available-from"} | moment(0), {"name": "available-until"} | moment(24 * 60)]
    service = [f"HealthcareService/{provider.service}"]
    by_type = token("type", provider.token("type"))

    def available(*bounds: dict) -> list[str]:
        return entries(find(scheduler, by_type, *(bounds or window)), "match")

    def slot(minutes: int, schedule: str = provider.schedule, **elements: object) -> str:
        return world.slot(schedule, base + timedelta(minutes=minutes), **elements)

    assert available() == []
    slot(25 * 60)  # after the window
    slot(30, world.schedule(provider.role, provider.type, active=False))
    slot(40, extension=[{"url": BOOKABLE_BY, "valueCode": "third-party"}])
    slot(50, serviceType=[concept("urn:test:other", "service")])
    slot(60, status="busy-unavailable")
    assert available() == []
    held = slot(70)
    with fresh_client(server, "scheduling-client") as (holder, _):
        out(hold(holder, held))
        assert available() == []
        out(hold(holder, held, "free"))
    assert available() == service
    assert available({"name": "available-from"} | moment(71), {"name": "available-until"} | moment(600)) == []
    assert available({"name": "available-until"} | moment(70)) == []
    assert available({"name": "available-until"} | moment(71)) == service
    params = [
        ("healthcareService-type", provider.token("type")),
        ("available-from", fhir_time(base)),
        ("available-until", fhir_time(base + timedelta(days=1))),
    ]
    assert entries(find_get(scheduler, params), "match") == service
    form = scheduler.post("HealthcareService/$findHSP", data=dict(params))
    assert entries(result_bundle(form), "match") == service
    local_time = {"name": "available-from", "valueDateTime": "2030-01-01T10:00"}
    assert_error(
        scheduler.post("HealthcareService/$findHSP", json=parameters(by_type, local_time)), 400, "invalid"
    )


def test_find_in_a_service_schedule_and_by_specialty_coding(world: World, scheduler: httpx.Client) -> None:
    """A Schedule whose actor is the service counts, and a Slot offering the service's specialty too."""
    provider = world.provider()
    own = world.put(
        "Schedule",
        "sched",
        {
            "active": True,
            "actor": [ref("HealthcareService", provider.service)],
            "specialty": [concept(*provider.specialty)],
        },
    )
    world.slot(own, at(30))
    window = [
        token("specialty", provider.token("specialty")),
        {"name": "available-from", "valueDateTime": fhir_time(at(29))},
        {"name": "available-until", "valueDateTime": fhir_time(at(31))},
    ]
    assert entries(find(scheduler, *window), "match") == [f"HealthcareService/{provider.service}"]


def test_find_speaks_xml(scheduler: httpx.Client, home: Provider) -> None:
    body = (
        f'<Parameters xmlns="{FHIR_NS}"><parameter><name value="healthcareService-type"/>'
        f'<valueString value="{home.token("type")}"/></parameter></Parameters>'
    ).encode()
    for reply in (
        scheduler.post("HealthcareService/$findHSP", content=body, headers={"Accept": FHIR_XML, **XML_BODY}),
        scheduler.get(
            "HealthcareService/$findHSP",
            params={"healthcareService-type": home.token("type"), "_format": "xml"},
        ),
    ):
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == XML_CONTENT_TYPE
        bundle = xml_parameter(xml_root(reply), "result").find("f:resource/f:Bundle", NS)
        assert xml_value(bundle, "type") == "searchset"
        ids = [e.find("f:resource/f:HealthcareService/f:id", NS) for e in bundle.findall("f:entry", NS)]
        assert [i.get("value") for i in ids if i is not None] == [home.service]


def test_find_count_limits_the_services(scheduler: httpx.Client, directory: Directory) -> None:
    shared = token("type", directory.shared)
    assert len(entries(find(scheduler, shared), "match")) == 3
    assert len(entries(find(scheduler, shared, _count="2"), "match")) == 2


# -- roles and the CapabilityStatement ----------------------------------------------------------------------
@pytest.mark.parametrize("role", ["third-party", "referrer", "practice"])
def test_other_roles_may_not_call_the_scheduling_operations(
    server: Server, world: World, home: Provider, role: str
) -> None:
    slot = world.slot(home.schedule)
    with server.client(role) as client:
        assert_error(hold(client, slot), 403, "forbidden")
        assert_error(book(client, appointment(slot, "anyone")), 403, "forbidden")
        by_type = parameters(token("type", home.token("type")))
        assert_error(client.post("HealthcareService/$findHSP", json=by_type), 403, "forbidden")
        assert_error(
            client.get("HealthcareService/$findHSP", params={"healthcareService-type": "a|b"}),
            403,
            "forbidden",
        )
    with server.client("admin") as admin:
        assert read(admin, "Slot", slot)["status"] == "free"


def test_admin_may_hold_book_and_find(world: World, home: Provider, admin: httpx.Client) -> None:
    slot = world.slot(home.schedule)
    assert out(hold(admin, slot))["slot"]["status"] == "busy-tentative"
    stored = out(book(admin, appointment(slot, new_patient(admin))))["appointment"]
    booked_by = next(e for e in stored["extension"] if e["url"] == BOOKED_BY)
    assert {"url": "role", "valueCode": "hub"} in booked_by["extension"]
    assert entries(find(admin, token("type", home.token("type"))), "match") == [
        f"HealthcareService/{home.service}"
    ]


def test_operations_are_post_only_where_they_change_state(world: World, home: Provider, me: Pair) -> None:
    client, _ = me
    assert_error(client.get("Slot/$hold"), 405, "method-not-allowed")
    assert_error(client.get("Appointment/$book"), 405, "method-not-allowed")
    slot = world.slot(home.schedule)
    assert_error(client.post(f"Slot/{slot}/$hold", json=hold_body(slot)), 405, "method-not-allowed")


def test_the_capability_statement_declares_the_operations(server: Server) -> None:
    """Each with its Austrian canonical URL, each OperationDefinition readable without a token."""
    with server.client(None) as anonymous:
        statement = anonymous.get("metadata").json()
        rest = statement["rest"][0]
        expected = {
            "Slot": ("hold", AT + "slot-hold"),
            "Appointment": ("book", AT + "appointment-book"),
            "HealthcareService": ("findHSP", AT + "healthcareService-provider-find"),
        }
        for resource_type, (code, url) in expected.items():
            entry = next(r for r in rest["resource"] if r["type"] == resource_type)
            assert {"name": code, "definition": url} in [
                {"name": o["name"], "definition": o["definition"]} for o in entry.get("operation", [])
            ]
            definition = anonymous.get(f"OperationDefinition/{code}")
            assert definition.status_code == 200, definition.text
            resource = definition.json()
            assert (resource["url"], resource["code"], resource["type"], resource["instance"]) == (
                url,
                code,
                True,
                False,
            )
            assert all({"name", "use", "min", "max", "type"} <= set(p) for p in resource["parameter"])
            by_url = anonymous.get("OperationDefinition", params={"url": url}).json()
            assert [e["resource"]["id"] for e in by_url["entry"]] == [code]
        hold_definition = anonymous.get("OperationDefinition/hold").json()
        params = {
            (p["name"], p["use"]): (p["min"], p["max"], p["type"]) for p in hold_definition["parameter"]
        }
        assert params[("slot-status", "in")] == (1, "1", "code")
        assert params[("held-until", "out")] == (0, "1", "dateTime")
        find_definition = anonymous.get("OperationDefinition/findHSP").json()
        assert find_definition["affectsState"] is False
        assert {p["name"] for p in find_definition["parameter"] if p["use"] == "in"} >= {
            "healthcareService-reference",
            "healthcareService-zipCodeArea",
            "available-from",
            "available-until",
        }
