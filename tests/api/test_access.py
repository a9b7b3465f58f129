"""Who may see and do what (contract 2.1–2.3), black-box over HTTP on SQLite and PostgreSQL.

The module builds, as admin, two practices with the same kinds of resources: `own`, the practice of the
test server's `practice` client (BSNR 721234500), and `other`, with a BSNR unique to this module. The session
server is shared with other modules, so results are checked for what they must and must not contain, never
for being exactly this module's data.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import httpx
import jwt
import pytest
from sqlalchemy import select

from terminhub.access.clients import disable_client
from terminhub.clock import Clock
from terminhub.store import schema
from terminhub.store.database import Database
from terminhub.store.migrate import SIGNING_KEY
from terminhub.store.repository import Actor, Repository
from tests.support.databases import fresh_database
from tests.support.server import PRACTICE_BSNR, Credentials, Server, start_server

BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
REFERRAL_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode"
ERROR_SYSTEM = "urn:terminhub:error"
TEST_SYSTEM = "urn:terminhub:test:access"
DIRECTORY = ("Organization", "Location", "Practitioner", "PractitionerRole", "HealthcareService")
SCHEDULING = ("Schedule", "Slot")
KINDS = (*DIRECTORY, *SCHEDULING, "Appointment", "Patient", "ServiceRequest")
NON_ADMIN = ("practice", "referrer", "third-party", "scheduling-client")
ROLES = ("admin", *NON_ADMIN)


def unique_bsnr() -> str:
    """A 9-digit BSNR no other module uses (the session server is shared)."""
    return "9" + "".join(secrets.choice("0123456789") for _ in range(8))


# -- the contract's table, as data -----------------------------------------------------------------------
# all: both practices' resources; scope: the own practice's only; none: neither (admin-written resources
# a scheduling client did not create); "-": 403 forbidden. The ServiceRequests are plain ones that the
# Appointments are `basedOn` (referral ServiceRequests are written by the operations of section 4 only).
def _row(directory: str, scheduling: str, appointment: str, patient: str, request: str) -> dict[str, str]:
    return {
        **dict.fromkeys(DIRECTORY, directory),
        **dict.fromkeys(SCHEDULING, scheduling),
        "Appointment": appointment,
        "Patient": patient,
        "ServiceRequest": request,
    }


READ_BY_ID = {
    "admin": _row("all", "all", "all", "all", "all"),
    "practice": _row("scope", "scope", "scope", "scope", "scope"),
    "referrer": _row("-", "-", "-", "-", "-"),
    "third-party": _row("all", "all", "-", "-", "-"),
    "scheduling-client": _row("all", "all", "none", "none", "-"),
}
SEARCH = {**READ_BY_ID, "third-party": _row("-", "-", "-", "-", "-")}


# -- helpers ---------------------------------------------------------------------------------------------
def assert_refused(reply: httpx.Response, status: int, code: str) -> dict:
    """An OperationOutcome with the contract's status and error code; returns its first issue."""
    assert reply.status_code == status, reply.text
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error"
    assert {"system": ERROR_SYSTEM, "code": code} in issue["details"]["coding"]
    return issue


def created_id(reply: httpx.Response) -> str:
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def matches(reply: httpx.Response) -> set[str]:
    assert reply.status_code == 200, reply.text
    return {e["resource"]["id"] for e in reply.json().get("entry", []) if e["search"]["mode"] == "match"}


def included(reply: httpx.Response) -> set[str]:
    assert reply.status_code == 200, reply.text
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in reply.json().get("entry", [])
        if e["search"]["mode"] == "include"
    }


def as_client(server: Server, cred: Credentials) -> httpx.Client:
    """An HTTP client for a client registered by the test itself."""
    return httpx.Client(base_url=server.fhir, headers={"Authorization": f"Bearer {server.token_for(cred)}"})


def marker() -> dict:
    return {"system": TEST_SYSTEM, "value": uuid.uuid4().hex}


# -- the dataset -----------------------------------------------------------------------------------------
@dataclass
class Practice:
    """One practice's resources, by type (the ids this module created or found)."""

    bsnr: str
    ids: dict[str, str] = field(default_factory=dict)
    free_slot: str = ""

    def ref(self, resource_type: str) -> dict:
        return {"reference": f"{resource_type}/{self.ids[resource_type]}"}


def _organization(admin: httpx.Client, bsnr: str) -> str:
    """The Organization carrying this BSNR: found if another module made it, else created (once a server)."""
    found = matches(admin.get("Organization", params={"identifier": f"{BSNR_SYSTEM}|{bsnr}"}))
    if found:
        assert len(found) == 1, f"several Organizations carry BSNR {bsnr}"
        return found.pop()
    return created_id(
        admin.post(
            "Organization",
            json={
                "resourceType": "Organization",
                "active": True,
                "name": f"Praxis {bsnr}",
                "identifier": [{"system": BSNR_SYSTEM, "value": bsnr}],
                "address": [{"postalCode": "10115", "city": "Berlin"}],
            },
        )
    )


def build_practice(admin: httpx.Client, bsnr: str, stranger: str | None = None) -> Practice:
    """Organization, Location, Practitioner, PractitionerRole, HealthcareService, Schedule, two Slots, a
    Patient, a (non-referral) ServiceRequest and an admin-written Appointment on the first Slot.

    `stranger`: a Practitioner of another practice, added as a further Appointment participant (admin writes
    are stored as sent), so that an include can reach something this practice may not see."""
    p = Practice(bsnr)
    p.ids["Organization"] = _organization(admin, bsnr)
    org = p.ref("Organization")

    def make(resource: dict) -> str:
        resource.setdefault("identifier", [marker()])
        return created_id(admin.post(resource["resourceType"], json=resource))

    p.ids["Location"] = make(
        {
            "resourceType": "Location",
            "name": f"Standort {bsnr}",
            "status": "active",
            "managingOrganization": org,
        }
    )
    p.ids["Practitioner"] = make({"resourceType": "Practitioner", "name": [{"family": f"Arzt {bsnr}"}]})
    p.ids["PractitionerRole"] = make(
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "organization": org,
            "practitioner": p.ref("Practitioner"),
            "location": [p.ref("Location")],
        }
    )
    p.ids["HealthcareService"] = make(
        {
            "resourceType": "HealthcareService",
            "active": True,
            "providedBy": org,
            "location": [p.ref("Location")],
            "name": f"Sprechstunde {bsnr}",
        }
    )
    p.ids["Schedule"] = make(
        {"resourceType": "Schedule", "active": True, "actor": [p.ref("PractitionerRole")]}
    )
    slot = {
        "resourceType": "Slot",
        "schedule": p.ref("Schedule"),
        "status": "busy",
        "start": "2031-05-05T09:00:00+02:00",
        "end": "2031-05-05T09:15:00+02:00",
    }
    p.ids["Slot"] = make(slot)
    p.free_slot = make(
        slot
        | {
            "status": "free",
            "start": "2031-05-05T09:15:00+02:00",
            "end": "2031-05-05T09:30:00+02:00",
            "identifier": [marker()],
        }
    )
    p.ids["Patient"] = make({"resourceType": "Patient", "name": [{"family": f"Patientin {bsnr}"}]})
    p.ids["ServiceRequest"] = make(
        {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": p.ref("Patient")}
    )
    participants = [
        {"actor": p.ref("Patient"), "status": "accepted"},
        {"actor": p.ref("PractitionerRole"), "status": "accepted"},
    ]
    if stranger:
        participants.append({"actor": {"reference": f"Practitioner/{stranger}"}, "status": "accepted"})
    p.ids["Appointment"] = make(
        {
            "resourceType": "Appointment",
            "status": "booked",
            "slot": [p.ref("Slot")],
            "start": slot["start"],
            "end": slot["end"],
            "participant": participants,
            "basedOn": [p.ref("ServiceRequest")],
        }
    )
    return p


@dataclass
class World:
    server: Server
    own: Practice
    other: Practice
    # what the test server's scheduling client owns: a Patient it created, an Appointment it "booked"
    # (seeded through the repository as the booking core would), and the admin-made Patient of that booking
    sc_patient: str = ""
    sc_appointment: str = ""
    sc_booked_patient: str = ""

    def id(self, which: str, resource_type: str) -> str:
        return getattr(self, which).ids[resource_type]


def seed(server: Server, resource_type: str, resource: dict, cred: Credentials) -> str:
    """Store a resource as if an operation of `cred`'s client had written it (for what REST cannot write)."""
    db = Database(server.database_url)
    try:
        with db.transaction(write=True) as conn:
            repo = Repository(
                conn,
                Clock(),
                ZoneInfo("Europe/Berlin"),
                Actor(cred.client_id, cred.role, f"test {cred.role}"),
            )
            return repo.save(resource_type, resource).id
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def clients(server: Server) -> Iterator[dict[str, httpx.Client]]:
    made = {role: server.client(role) for role in ROLES}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def world(server: Server, clients: dict[str, httpx.Client]) -> World:
    admin = clients["admin"]
    other = build_practice(admin, unique_bsnr())
    own = build_practice(admin, PRACTICE_BSNR, stranger=other.ids["Practitioner"])
    w = World(server, own, other)
    sc = clients["scheduling-client"]
    w.sc_patient = created_id(
        sc.post(
            "Patient",
            json={"resourceType": "Patient", "identifier": [marker()], "name": [{"family": "Selbst"}]},
        )
    )
    w.sc_booked_patient = created_id(
        admin.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Gebucht"}]})
    )
    w.sc_appointment = seed(
        server,
        "Appointment",
        {
            "resourceType": "Appointment",
            "status": "booked",
            "slot": [{"reference": f"Slot/{own.free_slot}"}],
            "participant": [{"actor": {"reference": f"Patient/{w.sc_booked_patient}"}, "status": "accepted"}],
        },
        server.credentials["scheduling-client"],
    )
    return w


CELLS = [(role, kind) for role in ROLES for kind in KINDS]


# == 2.2: reading, cell by cell ==========================================================================
@pytest.mark.parametrize(("role", "resource_type"), CELLS)
def test_read_by_id_follows_the_role_table(
    world: World, clients: dict, role: str, resource_type: str
) -> None:
    """Read by id: allowed where the table says so, 403 for a type the role may never read, 404 for a
    resource of a readable type that the caller may not see."""
    rule = READ_BY_ID[role][resource_type]
    own = clients[role].get(f"{resource_type}/{world.id('own', resource_type)}")
    other = clients[role].get(f"{resource_type}/{world.id('other', resource_type)}")
    if rule == "-":
        assert_refused(own, 403, "forbidden")
        assert_refused(other, 403, "forbidden")
        return
    expected = {"all": (200, 200), "scope": (200, 404), "none": (404, 404)}[rule]
    assert (own.status_code, other.status_code) == expected, (own.text, other.text)
    for reply, status in ((own, expected[0]), (other, expected[1])):
        if status == 404:
            assert_refused(reply, 404, "not-found")


@pytest.mark.parametrize(("role", "resource_type"), CELLS)
def test_search_follows_the_role_table(world: World, clients: dict, role: str, resource_type: str) -> None:
    """Searches match only what the caller may see; a type the role may not search is 403."""
    rule = SEARCH[role][resource_type]
    both = f"{world.id('own', resource_type)},{world.id('other', resource_type)}"
    reply = clients[role].get(resource_type, params={"_id": both})
    if rule == "-":
        assert_refused(reply, 403, "forbidden")
        return
    expected = {
        "all": {world.id("own", resource_type), world.id("other", resource_type)},
        "scope": {world.id("own", resource_type)},
        "none": set(),
    }[rule]
    assert matches(reply) == expected


@pytest.mark.parametrize("role", ROLES)
def test_post_search_is_refused_or_scoped_like_get(world: World, clients: dict, role: str) -> None:
    """`POST T/_search` obeys the same table as `GET T?…`."""
    ids = f"{world.id('own', 'Slot')},{world.id('other', 'Slot')}"
    reply = clients[role].post("Slot/_search", data={"_id": ids})
    get = clients[role].get("Slot", params={"_id": ids})
    assert reply.status_code == get.status_code
    if reply.status_code == 200:
        assert matches(reply) == matches(get)


@pytest.mark.parametrize("role", ROLES)
def test_audit_events_are_for_admin_only(world: World, clients: dict, role: str) -> None:
    """AuditEvent: admin reads and searches; every other role gets 403."""
    event_id = next(iter(matches(clients["admin"].get("AuditEvent", params={"_count": "1"}))))
    read = clients[role].get(f"AuditEvent/{event_id}")
    found = clients[role].get("AuditEvent", params={"_count": "1"})
    if role == "admin":
        assert read.status_code == 200 and found.status_code == 200
    else:
        assert_refused(read, 403, "forbidden")
        assert_refused(found, 403, "forbidden")


@pytest.mark.parametrize(
    ("role", "status"),
    [("admin", 200), ("practice", 200), ("referrer", 403), ("third-party", 403), ("scheduling-client", 403)],
)
def test_provenance_is_for_admin_and_the_practice_feed(
    world: World, clients: dict, role: str, status: int
) -> None:
    """Provenance: admin and practices (their own feed) may search it, the other roles get 403."""
    reply = clients[role].get("Provenance", params={"_count": "1"})
    assert reply.status_code == status, reply.text
    if status == 403:
        assert_refused(reply, 403, "forbidden")


# -- the practice scope ----------------------------------------------------------------------------------
@pytest.mark.parametrize("resource_type", KINDS)
def test_practice_search_without_filter_returns_its_scope_only(
    world: World, clients: dict, resource_type: str
) -> None:
    """A practice's unfiltered search holds its own resources and none of another practice's."""
    found = matches(clients["practice"].get(resource_type, params={"_count": "1000"}))
    assert world.id("own", resource_type) in found
    assert world.id("other", resource_type) not in found


def test_practice_organizations_are_those_carrying_its_bsnr(world: World, clients: dict) -> None:
    """Every Organization a practice finds carries one of its numbers."""
    reply = clients["practice"].get("Organization", params={"_count": "1000"})
    assert reply.status_code == 200
    for entry in reply.json()["entry"]:
        assert {"system": BSNR_SYSTEM, "value": PRACTICE_BSNR} in entry["resource"]["identifier"]


def test_practice_scope_includes_the_patients_and_requests_of_bookings_on_its_slots(
    world: World, clients: dict
) -> None:
    """Patients and ServiceRequests of Appointments on the practice's Slots are in scope, whoever booked."""
    practice = clients["practice"]
    assert practice.get(f"Appointment/{world.sc_appointment}").status_code == 200
    assert practice.get(f"Patient/{world.sc_booked_patient}").status_code == 200
    assert practice.get(f"Patient/{world.sc_patient}").status_code == 404


def test_practice_sees_the_other_practice_with_its_bsnr(server: Server, world: World) -> None:
    """Scope follows the client's numbers: a client with the other BSNR sees the other practice only."""
    cred = server.add_client("practice", f"access other {world.other.bsnr}", (world.other.bsnr,))
    with as_client(server, cred) as c:
        assert c.get(f"Schedule/{world.id('other', 'Schedule')}").status_code == 200
        assert c.get(f"Schedule/{world.id('own', 'Schedule')}").status_code == 404


def test_practice_scope_covers_every_number_of_the_client(
    server: Server, world: World, clients: dict
) -> None:
    """A practice bound to a main site and a further site sees the Organizations of both."""
    site_bsnr = unique_bsnr()
    site = created_id(
        clients["admin"].post(
            "Organization",
            json={
                "resourceType": "Organization",
                "name": "Nebenbetriebsstätte",
                "identifier": [{"system": BSNR_SYSTEM, "value": site_bsnr}],
            },
        )
    )
    cred = server.add_client("practice", "access two sites", (world.other.bsnr, site_bsnr))
    with as_client(server, cred) as c:
        found = matches(c.get("Organization"))
    assert found == {site, world.id("other", "Organization")}


def test_practice_number_without_organization_gives_an_empty_scope(server: Server, world: World) -> None:
    """A BSNR that no Organization carries: searches find nothing, reads are 404."""
    cred = server.add_client("practice", "access empty", (unique_bsnr(),))
    with as_client(server, cred) as c:
        for resource_type in KINDS:
            assert matches(c.get(resource_type)) == set(), resource_type
        assert_refused(c.get(f"Organization/{world.id('own', 'Organization')}"), 404, "not-found")


def test_include_leaves_out_what_the_practice_may_not_see(world: World, clients: dict) -> None:
    """`_include` adds visible targets and silently leaves out the other practice's Practitioner."""
    params = {"_id": world.id("own", "Appointment"), "_include": "Appointment:actor"}
    stranger = f"Practitioner/{world.id('other', 'Practitioner')}"
    mine = {
        f"Patient/{world.id('own', 'Patient')}",
        f"PractitionerRole/{world.id('own', 'PractitionerRole')}",
    }
    as_practice = included(clients["practice"].get("Appointment", params=params))
    as_admin = included(clients["admin"].get("Appointment", params=params))
    assert as_admin == mine | {stranger}
    assert as_practice == mine


def test_include_iterate_stays_in_scope(world: World, clients: dict) -> None:
    """Includes followed with :iterate reach the practice's own chain, Slot → Schedule → PractitionerRole."""
    reply = clients["practice"].get(
        "Slot",
        params={
            "_id": world.id("own", "Slot"),
            "_include": "Slot:schedule",
            "_include:iterate": "Schedule:actor",
        },
    )
    assert included(reply) == {
        f"Schedule/{world.id('own', 'Schedule')}",
        f"PractitionerRole/{world.id('own', 'PractitionerRole')}",
    }


def test_history_of_an_invisible_resource_is_not_found(world: World, clients: dict) -> None:
    """Instance history and vread of another practice's resource are 404; of its own, 200."""
    practice = clients["practice"]
    org = world.id("other", "Organization")
    assert_refused(practice.get(f"Organization/{org}/_history"), 404, "not-found")
    assert_refused(practice.get(f"Organization/{org}/_history/1"), 404, "not-found")
    assert practice.get(f"Location/{world.id('own', 'Location')}/_history").status_code == 200
    assert practice.get(f"Location/{world.id('own', 'Location')}/_history/1").status_code == 200


def test_type_history_holds_only_the_practice_scope(world: World, clients: dict) -> None:
    """Type history of a practice lists versions of its own resources only."""
    reply = clients["practice"].get("Location/_history", params={"_count": "1000"})
    assert reply.status_code == 200, reply.text
    ids = {e["resource"]["id"] for e in reply.json().get("entry", []) if "resource" in e}
    assert world.id("own", "Location") in ids
    assert world.id("other", "Location") not in ids


@pytest.mark.parametrize("role", NON_ADMIN)
def test_system_history_is_for_admin_only(world: World, clients: dict, role: str) -> None:
    """`GET /fhir/_history` lists every change of every client: admin only."""
    assert_refused(clients[role].get("_history"), 403, "forbidden")


# -- third-party and scheduling client ------------------------------------------------------------------
@pytest.mark.parametrize("resource_type", [*DIRECTORY, *SCHEDULING])
def test_third_party_reads_by_id_but_never_searches(world: World, clients: dict, resource_type: str) -> None:
    """A third party reads directory, Schedule and Slot by id; every search (also with _id) is 403."""
    third = clients["third-party"]
    assert third.get(f"{resource_type}/{world.id('other', resource_type)}").status_code == 200
    assert_refused(third.get(resource_type), 403, "forbidden")
    assert_refused(third.post(f"{resource_type}/_search", data={}), 403, "forbidden")


def test_scheduling_client_sees_its_own_patients_and_appointments(world: World, clients: dict) -> None:
    """A scheduling client reads the Patients it created or booked for and the Appointments it created."""
    sc = clients["scheduling-client"]
    for path in (
        f"Patient/{world.sc_patient}",
        f"Patient/{world.sc_booked_patient}",
        f"Appointment/{world.sc_appointment}",
    ):
        assert sc.get(path).status_code == 200, path
    patients = matches(sc.get("Patient", params={"_count": "1000"}))
    assert {world.sc_patient, world.sc_booked_patient} <= patients
    assert world.id("own", "Patient") not in patients
    appointments = matches(sc.get("Appointment", params={"_count": "1000"}))
    assert world.sc_appointment in appointments
    assert world.id("own", "Appointment") not in appointments


def test_scheduling_client_does_not_see_another_clients_bookings(server: Server, world: World) -> None:
    """Another scheduling client sees neither the first one's Appointment nor the Patients in it."""
    cred = server.add_client("scheduling-client", "access second app")
    with as_client(server, cred) as c:
        assert_refused(c.get(f"Appointment/{world.sc_appointment}"), 404, "not-found")
        assert_refused(c.get(f"Patient/{world.sc_patient}"), 404, "not-found")
        assert_refused(c.get(f"Patient/{world.sc_booked_patient}"), 404, "not-found")
        assert matches(c.get("Appointment")) == set()


# == 2.2 / 2.3: writing ==================================================================================
def _directory_body(resource_type: str, world: World) -> dict:
    org = {"reference": f"Organization/{world.id('own', 'Organization')}"}
    return {
        "Organization": {"resourceType": "Organization", "name": "Neu"},
        "Location": {"resourceType": "Location", "name": "Neu", "managingOrganization": org},
        "Practitioner": {"resourceType": "Practitioner", "name": [{"family": "Neu"}]},
        "PractitionerRole": {"resourceType": "PractitionerRole", "organization": org},
        "HealthcareService": {"resourceType": "HealthcareService", "providedBy": org},
    }[resource_type]


@pytest.mark.parametrize("role", NON_ADMIN)
@pytest.mark.parametrize("resource_type", DIRECTORY)
def test_only_admin_writes_the_directory(
    server: Server, world: World, clients: dict, role: str, resource_type: str
) -> None:
    """Create, update and delete of directory resources by any role but admin → 403, nothing stored."""
    client = clients[role]
    body = _directory_body(resource_type, world)
    existing = world.id("own", resource_type)
    before = server.counts()
    assert_refused(client.post(resource_type, json=body), 403, "forbidden")
    assert_refused(client.put(f"{resource_type}/{existing}", json=body | {"id": existing}), 403, "forbidden")
    assert_refused(client.delete(f"{resource_type}/{existing}"), 403, "forbidden")
    assert server.counts() == before


@pytest.mark.parametrize("resource_type", DIRECTORY)
def test_admin_writes_the_directory(world: World, clients: dict, resource_type: str) -> None:
    """Admin creates, updates and deletes directory resources."""
    admin = clients["admin"]
    new = created_id(admin.post(resource_type, json=_directory_body(resource_type, world)))
    updated = admin.put(f"{resource_type}/{new}", json=_directory_body(resource_type, world) | {"id": new})
    assert updated.status_code == 200, updated.text
    assert admin.delete(f"{resource_type}/{new}").status_code == 204


def _appointment(world: World) -> dict:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{world.own.free_slot}"}],
        "participant": [{"actor": {"reference": f"Patient/{world.sc_patient}"}, "status": "accepted"}],
    }


@pytest.mark.parametrize("role", NON_ADMIN)
def test_post_appointment_is_not_allowed_but_for_admin(
    server: Server, world: World, clients: dict, role: str
) -> None:
    """Non-admin roles book through $book or $termin_buchen: `POST Appointment` → 405."""
    before = server.counts()
    assert_refused(clients[role].post("Appointment", json=_appointment(world)), 405, "method-not-allowed")
    assert server.counts() == before


@pytest.mark.parametrize("role", ("practice", "scheduling-client", "third-party", "referrer"))
def test_put_slot_is_not_allowed_but_for_admin(world: World, clients: dict, role: str) -> None:
    """Slots change through the operations only: `PUT Slot` → 405, also for the practice owning it."""
    slot_id = world.id("own", "Slot")
    slot = clients["admin"].get(f"Slot/{slot_id}").json()
    reply = clients[role].put(f"Slot/{slot_id}", json=slot | {"comment": "x"})
    assert_refused(reply, 405, "method-not-allowed")


def test_admin_may_put_a_slot(world: World, clients: dict) -> None:
    """Admin writes any served type as sent, Slots included."""
    slot_id = world.id("other", "Slot")
    slot = clients["admin"].get(f"Slot/{slot_id}").json()
    assert clients["admin"].put(f"Slot/{slot_id}", json=slot | {"comment": "admin"}).status_code == 200


@pytest.mark.parametrize(
    ("role", "resource_type"),
    [
        ("practice", "Schedule"),
        ("practice", "Slot"),
        ("scheduling-client", "Patient"),
        ("third-party", "Patient"),
        ("referrer", "Patient"),
    ],
)
def test_update_as_create_is_admin_only(
    server: Server, world: World, clients: dict, role: str, resource_type: str
) -> None:
    """PUT to an id that does not exist yet → 405 for every role but admin."""
    new = f"access-{uuid.uuid4().hex[:20]}"
    body = {
        "Schedule": {"resourceType": "Schedule", "actor": [world.own.ref("PractitionerRole")]},
        "Slot": {
            "resourceType": "Slot",
            "schedule": world.own.ref("Schedule"),
            "status": "free",
            "start": "2031-06-01T09:00:00+02:00",
            "end": "2031-06-01T09:10:00+02:00",
        },
        "Patient": {"resourceType": "Patient"},
    }[resource_type] | {"id": new}
    before = server.counts()
    assert_refused(clients[role].put(f"{resource_type}/{new}", json=body), 405, "method-not-allowed")
    assert server.counts() == before


def test_admin_may_update_as_create(clients: dict) -> None:
    """Admin chooses ids: PUT to a new id → 201."""
    new = f"access-{uuid.uuid4().hex[:20]}"
    reply = clients["admin"].put(f"Patient/{new}", json={"resourceType": "Patient", "id": new})
    assert reply.status_code == 201, reply.text
    assert reply.json()["id"] == new


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("resource_type", ("Provenance", "AuditEvent"))
def test_server_written_types_are_never_written_by_clients(
    server: Server, world: World, clients: dict, role: str, resource_type: str
) -> None:
    """Provenance and AuditEvent are written by the server only: create, update, delete → 405, admin too."""
    body = {
        "Provenance": {
            "resourceType": "Provenance",
            "recorded": "2030-01-01T00:00:00Z",
            "target": [{"reference": f"Patient/{world.id('own', 'Patient')}"}],
            "agent": [{"who": {"display": "x"}}],
        },
        "AuditEvent": {
            "resourceType": "AuditEvent",
            "recorded": "2030-01-01T00:00:00Z",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "agent": [{"requestor": True}],
            "source": {"observer": {"display": "x"}},
        },
    }[resource_type]
    client = clients[role]
    event = next(iter(matches(clients["admin"].get("AuditEvent", params={"_count": "1"}))))
    target = event if resource_type == "AuditEvent" else f"access-{uuid.uuid4().hex[:20]}"
    assert_refused(client.post(resource_type, json=body), 405, "method-not-allowed")
    reply = client.put(f"{resource_type}/{target}", json=body | {"id": target})
    assert_refused(reply, 405, "method-not-allowed")
    if resource_type == "AuditEvent":
        assert_refused(client.delete(f"AuditEvent/{event}"), 405, "method-not-allowed")
        assert clients["admin"].get(f"AuditEvent/{event}").status_code == 200


def _referral(code: str | None = None) -> dict:
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "identifier": [
            {
                "system": REFERRAL_SYSTEM,
                "value": code or "".join(secrets.choice("ABCDFGHJKLMNPQRSTUVWXYZ2456789") for _ in range(12)),
            }
        ],
        "subject": {"display": "unbekannt"},
    }


@pytest.mark.parametrize("role", ROLES)
def test_referral_service_requests_are_not_created_by_rest(server: Server, clients: dict, role: str) -> None:
    """A ServiceRequest with the Vermittlungscode system: REST create → 405 for every role, admin included."""
    before = server.counts()
    assert_refused(clients[role].post("ServiceRequest", json=_referral()), 405, "method-not-allowed")
    assert server.counts() == before


def test_referral_service_requests_are_not_changed_by_rest(server: Server, clients: dict) -> None:
    """A stored referral ServiceRequest: admin PUT (also to a new id) and DELETE → 405, it stays as it was."""
    admin = clients["admin"]
    stored_id = seed(server, "ServiceRequest", _referral(), server.credentials["admin"])
    stored = admin.get(f"ServiceRequest/{stored_id}").json()
    assert_refused(
        admin.put(f"ServiceRequest/{stored_id}", json=stored | {"status": "revoked"}),
        405,
        "method-not-allowed",
    )
    assert_refused(admin.delete(f"ServiceRequest/{stored_id}"), 405, "method-not-allowed")
    new = f"access-{uuid.uuid4().hex[:20]}"
    reply = admin.put(f"ServiceRequest/{new}", json=_referral() | {"id": new})
    assert_refused(reply, 405, "method-not-allowed")
    assert admin.get(f"ServiceRequest/{stored_id}").json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize(
    ("role", "status"),
    [("admin", 201), ("scheduling-client", 201), ("practice", 403), ("referrer", 403), ("third-party", 403)],
)
def test_patients_are_created_by_admin_and_scheduling_clients(clients: dict, role: str, status: int) -> None:
    """Patient create: admin and scheduling clients; a third party only inside its operations; others 403."""
    reply = clients[role].post("Patient", json={"resourceType": "Patient", "identifier": [marker()]})
    assert reply.status_code == status, reply.text
    if status == 403:
        assert_refused(reply, 403, "forbidden")


def test_scheduling_client_updates_its_own_patient_but_not_others(world: World, clients: dict) -> None:
    """A scheduling client updates the Patient it created; another's is invisible to it (404)."""
    sc = clients["scheduling-client"]
    mine = sc.get(f"Patient/{world.sc_patient}").json()
    assert sc.put(f"Patient/{world.sc_patient}", json=mine | {"gender": "female"}).status_code == 200
    theirs = clients["admin"].get(f"Patient/{world.id('own', 'Patient')}").json()
    assert_refused(sc.put(f"Patient/{theirs['id']}", json=theirs), 404, "not-found")


def test_practice_does_not_update_patients(world: World, clients: dict) -> None:
    """A practice reads the Patients of its Appointments but does not write them."""
    patient = clients["practice"].get(f"Patient/{world.id('own', 'Patient')}").json()
    assert_refused(clients["practice"].put(f"Patient/{patient['id']}", json=patient), 403, "forbidden")


@pytest.mark.parametrize(
    ("role", "which", "status"),
    [
        ("practice", "sc", 200),
        ("practice", "other", 404),
        ("scheduling-client", "sc", 200),
        ("scheduling-client", "own", 404),
        ("third-party", "own", 403),
        ("referrer", "own", 403),
    ],
)
def test_appointment_put_follows_the_role_table(
    world: World, clients: dict, role: str, which: str, status: int
) -> None:
    """PUT Appointment: the practice on its own Slots (here a scheduling client's booking), a scheduling
    client on its own bookings (a change 3.2 allows: the comment); invisible ones are 404; third parties
    and referrers 403."""
    appointment_id = world.sc_appointment if which == "sc" else world.id(which, "Appointment")
    current = clients["admin"].get(f"Appointment/{appointment_id}").json()
    reply = clients[role].put(f"Appointment/{appointment_id}", json=current | {"comment": f"by {role}"})
    assert reply.status_code == status, reply.text
    if status >= 400:
        assert_refused(reply, status, {403: "forbidden", 404: "not-found"}[status])


# -- references in request bodies -----------------------------------------------------------------------
def test_practice_may_create_schedules_and_slots_in_its_scope(world: World, clients: dict) -> None:
    """Schedule create/update and Slot create/delete are the practice's own (section 5)."""
    practice = clients["practice"]
    schedule = {
        "resourceType": "Schedule",
        "active": True,
        "actor": [{"reference": f"PractitionerRole/{world.id('own', 'PractitionerRole')}"}],
    }
    schedule_id = created_id(practice.post("Schedule", json=schedule))
    assert (
        practice.put(
            f"Schedule/{schedule_id}", json=schedule | {"id": schedule_id, "active": False}
        ).status_code
        == 200
    )
    slot_id = created_id(
        practice.post(
            "Slot",
            json={
                "resourceType": "Slot",
                "schedule": {"reference": f"Schedule/{schedule_id}"},
                "status": "free",
                "start": "2031-07-01T09:00:00+02:00",
                "end": "2031-07-01T09:10:00+02:00",
            },
        )
    )
    assert practice.delete(f"Slot/{slot_id}").status_code == 204


# What each caller writes, around one reference: (role, body around `ref`, the invisible target).
REFERRING = {
    "practice: Schedule.actor": (
        "practice",
        lambda ref: {"resourceType": "Schedule", "actor": [ref]},
        ("other", "PractitionerRole"),
    ),
    "practice: Slot.schedule": (
        "practice",
        lambda ref: {
            "resourceType": "Slot",
            "schedule": ref,
            "status": "free",
            "start": "2031-06-02T09:00:00+02:00",
            "end": "2031-06-02T09:10:00+02:00",
        },
        ("other", "Schedule"),
    ),
    "scheduling-client: Patient.link.other": (
        "scheduling-client",
        lambda ref: {"resourceType": "Patient", "link": [{"other": ref, "type": "seealso"}]},
        ("own", "Patient"),
    ),
}


@pytest.mark.parametrize("case", list(REFERRING))
def test_reference_to_missing_or_invisible_is_the_same_422(
    server: Server, world: World, clients: dict, case: str
) -> None:
    """A non-admin body that refers to a resource that does not exist, or that the caller may not see, is
    422 business-rule with the same text in both cases, so that existence does not leak."""
    role, body, (which, target_type) = REFERRING[case]
    missing = {"reference": f"{target_type}/does-not-exist-{uuid.uuid4().hex[:12]}"}
    hidden = {"reference": f"{target_type}/{world.id(which, target_type)}"}
    before = server.counts()
    first = assert_refused(
        clients[role].post(body(missing)["resourceType"], json=body(missing)), 422, "business-rule"
    )
    second = assert_refused(
        clients[role].post(body(hidden)["resourceType"], json=body(hidden)), 422, "business-rule"
    )
    assert (first["code"], first["details"]["text"]) == (second["code"], second["details"]["text"])
    assert server.counts() == before


def test_reference_to_a_type_the_role_may_not_read_is_the_same_422(world: World, clients: dict) -> None:
    """A scheduling client naming a ServiceRequest (a type it may never read) gets the same 422."""
    sc = clients["scheduling-client"]
    hidden = sc.post(
        "Patient",
        json={
            "resourceType": "Patient",
            "extension": [{"url": "urn:terminhub:test", "valueReference": world.own.ref("ServiceRequest")}],
        },
    )
    missing = sc.post(
        "Patient",
        json={
            "resourceType": "Patient",
            "generalPractitioner": [{"reference": "Practitioner/does-not-exist"}],
        },
    )
    assert (
        assert_refused(hidden, 422, "business-rule")["details"]["text"]
        == assert_refused(missing, 422, "business-rule")["details"]["text"]
    )


def test_admin_references_are_stored_as_sent(clients: dict) -> None:
    """Admin writes are not checked for references (except an Appointment's Slot)."""
    reply = clients["admin"].post(
        "Patient",
        json={
            "resourceType": "Patient",
            "generalPractitioner": [{"reference": "Practitioner/does-not-exist"}],
        },
    )
    assert reply.status_code == 201, reply.text


def test_admin_appointment_needs_an_existing_slot(server: Server, world: World, clients: dict) -> None:
    """Even admin cannot write an Appointment on a Slot that does not exist."""
    body = _appointment(world) | {"slot": [{"reference": "Slot/does-not-exist"}]}
    before = server.counts()
    assert_refused(clients["admin"].post("Appointment", json=body), 422, "business-rule")
    assert server.counts() == before


def test_conditional_create_matches_only_what_the_caller_sees(world: World, clients: dict) -> None:
    """If-None-Exist ignores a matching Patient the scheduling client may not see, and finds its own."""
    identifier = marker()
    admin_made = created_id(
        clients["admin"].post("Patient", json={"resourceType": "Patient", "identifier": [identifier]})
    )
    sc = clients["scheduling-client"]
    query = {"If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}"}
    body = {"resourceType": "Patient", "identifier": [identifier]}
    first = sc.post("Patient", json=body, headers=query)
    assert first.status_code == 201, first.text
    assert first.json()["id"] != admin_made
    again = sc.post("Patient", json=body, headers=query)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]


def test_conditional_create_by_a_practice_ignores_other_practices(world: World, clients: dict) -> None:
    """A practice's If-None-Exist does not match the other practice's Slot with the same identifier."""
    identifier = marker()
    admin = clients["admin"]
    other_slot = admin.get(f"Slot/{world.other.free_slot}").json()
    other_slot["identifier"] = [identifier]
    assert admin.put(f"Slot/{world.other.free_slot}", json=other_slot).status_code == 200
    reply = clients["practice"].post(
        "Slot",
        headers={"If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}"},
        json={
            "resourceType": "Slot",
            "schedule": {"reference": f"Schedule/{world.id('own', 'Schedule')}"},
            "status": "free",
            "identifier": [identifier],
            "start": "2031-06-03T09:00:00+02:00",
            "end": "2031-06-03T09:10:00+02:00",
        },
    )
    assert reply.status_code == 201, reply.text


# -- one Organization per BSNR ---------------------------------------------------------------------------
def _org(bsnr: str, **elements: object) -> dict:
    return {
        "resourceType": "Organization",
        "name": f"Praxis {bsnr}",
        "identifier": [{"system": BSNR_SYSTEM, "value": bsnr}],
        **elements,
    }


def test_second_organization_with_an_existing_bsnr_is_a_conflict(
    server: Server, world: World, clients: dict
) -> None:
    """Creating another Organization with a BSNR that one already carries → 409 conflict, nothing stored."""
    before = server.counts()
    assert_refused(clients["admin"].post("Organization", json=_org(world.other.bsnr)), 409, "conflict")
    assert server.counts() == before


def test_adding_an_existing_bsnr_to_another_organization_is_a_conflict(world: World, clients: dict) -> None:
    """An update that gives an Organization a BSNR another one carries → 409."""
    admin = clients["admin"]
    org_id = created_id(admin.post("Organization", json=_org(unique_bsnr())))
    body = _org(world.other.bsnr, id=org_id)
    assert_refused(admin.put(f"Organization/{org_id}", json=body), 409, "conflict")
    new = f"access-{uuid.uuid4().hex[:16]}"
    assert_refused(admin.put(f"Organization/{new}", json=body | {"id": new}), 409, "conflict")
    assert admin.get(f"Organization/{org_id}").json()["meta"]["versionId"] == "1"


def test_updating_an_organization_keeps_its_own_bsnr(clients: dict) -> None:
    """An Organization may keep its own BSNR through updates."""
    admin = clients["admin"]
    bsnr = unique_bsnr()
    org_id = created_id(admin.post("Organization", json=_org(bsnr)))
    reply = admin.put(f"Organization/{org_id}", json=_org(bsnr, id=org_id, alias=["Neu"]))
    assert reply.status_code == 200, reply.text


def test_a_bsnr_is_free_again_once_its_organization_is_deleted(clients: dict) -> None:
    """After deleting the Organization that carried a BSNR, another may carry it."""
    admin = clients["admin"]
    bsnr = unique_bsnr()
    first = created_id(admin.post("Organization", json=_org(bsnr)))
    assert admin.delete(f"Organization/{first}").status_code == 204
    created_id(admin.post("Organization", json=_org(bsnr)))


def _carriers(admin: httpx.Client, bsnr: str) -> set[str]:
    return matches(admin.get("Organization", params={"identifier": f"{BSNR_SYSTEM}|{bsnr}"}))


def _transaction(*resources: dict) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": r,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for r in resources
        ],
    }


def test_transaction_with_two_organizations_of_one_bsnr_is_a_conflict(server: Server, clients: dict) -> None:
    """Two new Organizations with the same BSNR in one transaction → 409, neither stored."""
    bsnr = unique_bsnr()
    before = server.counts()
    assert_refused(clients["admin"].post("", json=_transaction(_org(bsnr), _org(bsnr))), 409, "conflict")
    assert server.counts() == before
    assert _carriers(clients["admin"], bsnr) == set()


def test_transaction_creating_one_organization_per_bsnr_succeeds(clients: dict) -> None:
    """A transaction registering a practice with its own new BSNR is not mistaken for a duplicate."""
    bsnr = unique_bsnr()
    reply = clients["admin"].post("", json=_transaction(_org(bsnr), _org(unique_bsnr())))
    assert reply.status_code == 200, reply.text
    assert len(_carriers(clients["admin"], bsnr)) == 1


# == 2.1: identity =======================================================================================
def _signing_key(server: Server) -> str:
    db = Database(server.database_url)
    try:
        with db.transaction() as conn:
            kv = schema.settings_kv
            return conn.execute(select(kv.c.value).where(kv.c.key == SIGNING_KEY)).scalar_one()
    finally:
        db.dispose()


def _claims(server: Server, **changes: object) -> dict:
    now = int(time.time())
    return {
        "iss": server.base_url,
        "sub": server.credentials["admin"].client_id,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "role": "admin",
        "scope": "system/*.*",
    } | changes


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    return f"{header}.{payload}.{flipped}"


BAD_TOKENS = {
    "missing": lambda s: None,
    "empty bearer": lambda s: "",
    "garbage": lambda s: "not-a-token",
    "tampered signature": lambda s: _tamper(s.token("admin")),
    "wrong key": lambda s: jwt.encode(_claims(s), "x" * 48, algorithm="HS256"),
    "expired": lambda s: jwt.encode(
        _claims(s, iat=int(time.time()) - 3600, exp=int(time.time()) - 60), _signing_key(s), algorithm="HS256"
    ),
    "other issuer": lambda s: jwt.encode(
        _claims(s, iss="https://elsewhere.example"), _signing_key(s), algorithm="HS256"
    ),
    "unknown client": lambda s: jwt.encode(_claims(s, sub="th-nobody"), _signing_key(s), algorithm="HS256"),
    "alg none": lambda s: jwt.encode(_claims(s), None, algorithm="none"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_fhir_calls_need_a_valid_bearer_token(server: Server, case: str) -> None:
    """Missing, invalid, expired or tampered token → 401 unauthorized with `WWW-Authenticate: Bearer`."""
    token = BAD_TOKENS[case](server)
    headers = {} if token is None else {"Authorization": f"Bearer {token}".strip()}
    reply = httpx.get(f"{server.fhir}/Organization", headers=headers)
    assert_refused(reply, 401, "unauthorized")
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_signed_with_the_servers_key_is_accepted(server: Server) -> None:
    """The counterpart of the refusals above: the same claims, correctly signed, are accepted."""
    token = jwt.encode(_claims(server), _signing_key(server), algorithm="HS256")
    reply = httpx.get(
        f"{server.fhir}/Organization", params={"_count": "1"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 200, reply.text


def test_basic_credentials_are_no_bearer_token(server: Server) -> None:
    """Client credentials go to /auth/token; on /fhir they are refused like a missing token."""
    cred = server.credentials["admin"]
    reply = httpx.get(f"{server.fhir}/Organization", auth=(cred.client_id, cred.secret))
    assert_refused(reply, 401, "unauthorized")
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


def test_metadata_and_definitions_need_no_token(server: Server) -> None:
    """The CapabilityStatement and the server's OperationDefinitions and SearchParameters are public."""
    assert httpx.get(f"{server.fhir}/metadata").json()["resourceType"] == "CapabilityStatement"
    for resource_type in ("OperationDefinition", "SearchParameter"):
        bundle = httpx.get(f"{server.fhir}/{resource_type}")
        assert bundle.status_code == 200, bundle.text
        for entry in bundle.json().get("entry", []):
            one = httpx.get(f"{server.fhir}/{resource_type}/{entry['resource']['id']}")
            assert one.status_code == 200, one.text
    assert_refused(httpx.get(f"{server.fhir}/OperationDefinition/no-such-operation"), 404, "not-found")


def test_smart_configuration_names_the_token_endpoint(server: Server) -> None:
    """`/.well-known/smart-configuration`: token endpoint, client credentials, both client auth methods."""
    reply = httpx.get(f"{server.base_url}/.well-known/smart-configuration")
    assert reply.status_code == 200
    config = reply.json()
    assert config["token_endpoint"] == f"{server.base_url}/auth/token"
    assert "client_credentials" in config["grant_types_supported"]
    methods = set(config["token_endpoint_auth_methods_supported"])
    assert {"client_secret_post", "client_secret_basic"} <= methods


@pytest.fixture(scope="module")
def quick_recheck_server(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A dedicated server that re-reads client records every second (TERMINHUB_CLIENT_RECHECK_S=1)."""
    directory = tmp_path_factory.mktemp("recheck")
    with fresh_database(server.backend, directory) as url:
        running = start_server(
            url, server.backend, env={"TERMINHUB_CLIENT_RECHECK_S": "1"}, log_dir=directory
        )
        try:
            yield running
        finally:
            running.stop()


def test_a_disabled_client_is_shut_out(quick_recheck_server: Server) -> None:
    """Disabling a client stops its existing tokens once the server rechecks the client (here: 1 s)."""
    hub = quick_recheck_server
    cred = hub.add_client("scheduling-client", "to be disabled")
    headers = {"Authorization": f"Bearer {hub.token_for(cred)}"}
    assert httpx.get(f"{hub.fhir}/Organization", headers=headers).status_code == 200
    db = Database(hub.database_url)
    try:
        with db.transaction(write=True) as conn:
            disable_client(conn, cred.client_id, time.time_ns() // 1000)
    finally:
        db.dispose()
    deadline = time.monotonic() + 10
    reply = httpx.get(f"{hub.fhir}/Organization", headers=headers)
    while reply.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        reply = httpx.get(f"{hub.fhir}/Organization", headers=headers)
    assert_refused(reply, 401, "unauthorized")
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    token = httpx.post(
        f"{hub.base_url}/auth/token",
        data={"grant_type": "client_credentials", "client_id": cred.client_id, "client_secret": cred.secret},
    )
    assert token.status_code == 401 and token.json()["error"] == "invalid_client"
