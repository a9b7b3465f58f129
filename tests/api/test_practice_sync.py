"""116117 practice sync (contract 5), black-box over HTTP on SQLite and PostgreSQL: a practice's initial sync,
the `bsnr` and `lanr` Appointment parameters, its Terminprofile (Schedules) and Terminslots (Slots),
`$slotstatus_aktualisieren`, and the bookings others make on its Slots.

The module builds, as admin, practices with BSNRs of their own and registers a practice client for each, so
that every practice's scope holds exactly what this module made for it, whatever other modules do on the
shared session server. Bookings come from a scheduling client of the module's own (`$book`) and from the
server's third-party client with referral codes of the server's referrer (`$termin_buchen`).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.api.rest_helpers import assert_error, matches, patient
from tests.support.server import Server

BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"
CODE_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode"
CANCELLATION = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"
SCHEDULE_NAME = "urn:terminhub:schedule-name"
DEFAULT_SLOT_MINUTES = "urn:terminhub:default-slot-minutes"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
OPERATION = "$slotstatus_aktualisieren"


def digits(n: int, first: str = "6") -> str:
    """A number of n digits no other module uses (the session server is shared)."""
    return first + "".join(secrets.choice("0123456789") for _ in range(n - 1))


def at(days: float, minutes: int = 0) -> datetime:
    moment = datetime.now(UTC) + timedelta(days=days, minutes=minutes)
    return moment.replace(second=0, microsecond=0)


def fhir_time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def ref(resource_type: str, resource_id: str) -> dict:
    return {"reference": f"{resource_type}/{resource_id}"}


def created(reply: httpx.Response) -> dict:
    assert reply.status_code == 201, reply.text
    return reply.json()


def ids(reply: httpx.Response) -> set[str]:
    assert reply.status_code == 200, reply.text
    return {r["id"] for r in matches(reply.json())}


def parameters(*items: tuple[str, str, object]) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": n, k: v} for n, k, v in items]}


def status_body(status: str) -> dict:
    return parameters(("status", "valueCode", status))


# -- the module's world ---------------------------------------------------------------------------------
@dataclass
class Practice:
    """One practice: its directory, a Schedule offering the module's Leistungsmerkmal, and its client."""

    bsnr: str
    lanr: str  # 9 digits: ANR and a 2-digit specialty code
    client: httpx.Client
    organization: str = ""
    location: str = ""
    practitioner: str = ""
    role: str = ""
    schedule: str = ""


@dataclass
class World:
    server: Server
    admin: httpx.Client
    booker: httpx.Client  # a scheduling client of this module's own (holds and $book)
    lm: dict  # the module's own Leistungsmerkmal; the Schedules offer it, referral codes ask for it
    mine: Practice | None = None
    other: Practice | None = None
    patient: str = ""  # created by the booker
    minutes: int = 0
    clients: list[httpx.Client] = field(default_factory=list)

    def post(self, resource: dict, client: httpx.Client | None = None) -> str:
        return created((client or self.admin).post(resource["resourceType"], json=resource))["id"]

    def slot(self, practice: Practice, days: float = 3, schedule: str | None = None, **extra: object) -> str:
        """A free 15-minute Slot of the practice (admin-made), each at a minute of its own."""
        self.minutes += 15
        start = at(days, self.minutes)
        return self.post(
            {
                "resourceType": "Slot",
                "schedule": ref("Schedule", schedule or practice.schedule),
                "status": "free",
                "start": fhir_time(start),
                "end": fhir_time(start + timedelta(minutes=15)),
                **extra,
            }
        )

    def read(self, resource_type: str, resource_id: str) -> dict:
        reply = self.admin.get(f"{resource_type}/{resource_id}")
        assert reply.status_code == 200, reply.text
        return reply.json()

    def hold(self, slot: str, client: httpx.Client | None = None) -> httpx.Response:
        body = parameters(
            ("slot-reference", "valueReference", ref("Slot", slot)),
            ("slot-status", "valueCode", "busy-tentative"),
        )
        return (client or self.booker).post("Slot/$hold", json=body)

    def book(self, slot: str) -> httpx.Response:
        appointment = {
            "resourceType": "Appointment",
            "status": "proposed",
            "slot": [ref("Slot", slot)],
            "participant": [{"actor": ref("Patient", self.patient), "status": "needs-action"}],
        }
        return self.booker.post(
            "Appointment/$book", json=parameters(("appointment-resource", "resource", appointment))
        )

    def booked(self, slot: str) -> dict:
        reply = self.book(slot)
        assert reply.status_code == 200, reply.text
        [appointment] = [p["resource"] for p in reply.json()["parameter"] if p["name"] == "appointment"]
        return appointment

    def set_status(self, practice: Practice, slot: str, status: str, **headers: str) -> httpx.Response:
        return practice.client.post(f"Slot/{slot}/{OPERATION}", json=status_body(status), headers=headers)


def build_practice(world: World, name: str) -> Practice:
    """Organization (a BSNR of its own), Location, Practitioner with a LANR, PractitionerRole, a Schedule, and
    a practice client bound to the BSNR."""
    bsnr, lanr = digits(9), digits(9)
    cred = world.server.add_client("practice", f"practice sync {name} {bsnr}", (bsnr,))
    client = httpx.Client(
        base_url=world.server.fhir,
        headers={"Authorization": f"Bearer {world.server.token_for(cred)}"},
        timeout=120,
    )
    world.clients.append(client)
    p = Practice(bsnr, lanr, client)
    p.organization = world.post(
        {
            "resourceType": "Organization",
            "active": True,
            "name": f"Praxis {name}",
            "identifier": [{"system": BSNR_SYSTEM, "value": bsnr}],
            "address": [{"postalCode": "10115", "city": "Berlin"}],
        }
    )
    p.location = world.post(
        {
            "resourceType": "Location",
            "status": "active",
            "name": f"Praxisräume {name}",
            "managingOrganization": ref("Organization", p.organization),
        }
    )
    p.practitioner = world.post(
        {
            "resourceType": "Practitioner",
            "identifier": [{"system": ANR_SYSTEM, "value": lanr}],
            "name": [{"family": f"Ärztin {name}"}],
        }
    )
    p.role = world.post(
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "organization": ref("Organization", p.organization),
            "practitioner": ref("Practitioner", p.practitioner),
            "location": [ref("Location", p.location)],
        }
    )
    p.schedule = world.post(
        {
            "resourceType": "Schedule",
            "active": True,
            "actor": [ref("PractitionerRole", p.role)],
            "serviceType": [{"coding": [world.lm]}],
        }
    )
    return p


@pytest.fixture(scope="module")
def world(server: Server) -> Iterator[World]:
    cred = server.add_client("scheduling-client", f"practice sync booker {uuid.uuid4().hex[:8]}")
    booker = httpx.Client(
        base_url=server.fhir, headers={"Authorization": f"Bearer {server.token_for(cred)}"}, timeout=60
    )
    admin = server.client("admin")
    w = World(server, admin, booker, {"system": f"urn:test:sync:{uuid.uuid4().hex[:10]}", "code": "lm"})
    w.clients += [booker, admin]
    try:
        w.mine = build_practice(w, "mine")
        w.other = build_practice(w, "other")
        w.patient = w.post(patient(), booker)
        yield w
    finally:
        for client in w.clients:
            client.close()


@pytest.fixture(scope="module")
def mine(world: World) -> Practice:
    assert world.mine is not None
    return world.mine


@pytest.fixture(scope="module")
def other(world: World) -> Practice:
    assert world.other is not None
    return world.other


@pytest.fixture(scope="module")
def referrer(server: Server) -> Iterator[httpx.Client]:
    with server.client("referrer") as client:
        yield client


@pytest.fixture(scope="module")
def third(server: Server) -> Iterator[httpx.Client]:
    with server.client("third-party") as client:
        yield client


# == initial sync: paging over POST _search ===============================================================
@dataclass
class Synced:
    """A practice of its own for the initial sync, so that its scope is exactly what is made here."""

    practice: Practice
    expected: dict[str, set[str]]


@pytest.fixture(scope="module")
def synced(world: World) -> Synced:
    p = build_practice(world, "synced")
    second_practitioner = world.post(
        {
            "resourceType": "Practitioner",
            "identifier": [{"system": ANR_SYSTEM, "value": digits(7)}],
            "name": [{"family": "Zweite"}],
        }
    )
    second_role = world.post(
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "organization": ref("Organization", p.organization),
            "practitioner": ref("Practitioner", second_practitioner),
        }
    )
    world.post({"resourceType": "Practitioner", "name": [{"family": "Ohne Rolle"}]})  # in no scope
    second_schedule = world.post(
        {
            "resourceType": "Schedule",
            "active": True,
            "actor": [ref("PractitionerRole", second_role), ref("Location", p.location)],
        }
    )
    deactivated = world.post(
        {"resourceType": "Schedule", "active": False, "actor": [ref("PractitionerRole", p.role)]}
    )
    slots = [world.slot(p) for _ in range(4)] + [world.slot(p, schedule=second_schedule) for _ in range(3)]
    slots.append(world.slot(p, schedule=deactivated))
    appointments = [world.booked(slot)["id"] for slot in slots[:3]] + [world.booked(slots[5])["id"]]
    expected = {
        "Practitioner": {p.practitioner, second_practitioner},
        "PractitionerRole": {p.role, second_role},
        # section 5: a practice's search without a filter is its whole scope, deactivated Schedules too
        "Schedule": {p.schedule, second_schedule, deactivated},
        "Schedule?active=false": {deactivated},
        "Slot": set(slots),
        "Appointment": set(appointments),
    }
    return Synced(p, expected)


def sync_pages(client: httpx.Client, search: str, count: int) -> list[list[str]]:
    """Every page of `POST T/_search` (`search` is `T` or `T?name=value`) with `page` and `_count` up to the
    first empty one."""
    resource_type, _, extra = search.partition("?")
    pages: list[list[str]] = []
    for number in range(1, 100):
        form = {"_count": str(count), "page": str(number), **dict([extra.split("=")] if extra else [])}
        reply = client.post(f"{resource_type}/_search", data=form, headers=FORM)
        assert reply.status_code == 200, reply.text
        bundle = reply.json()
        found = [r["id"] for r in matches(bundle)]
        relations = {link["relation"] for link in bundle.get("link", [])}
        if not found:
            assert "next" not in relations
            return pages
        assert len(found) <= count
        pages.append(found)
    raise AssertionError("the pages did not end")


@pytest.mark.parametrize(
    "resource_type",
    ["Practitioner", "PractitionerRole", "Schedule", "Schedule?active=false", "Slot", "Appointment"],
)
@pytest.mark.parametrize("count", [1, 3])
def test_initial_sync_pages_hold_exactly_the_scope_each_once(
    synced: Synced, resource_type: str, count: int
) -> None:
    """The initial sync by `POST T/_search` with `page` and `_count`: the pages together hold every resource
    of the practice's scope exactly once and nothing else (deactivated Schedules are asked for with
    `active=false`, as in every Schedule search); the page after the last is empty, with no `next`."""
    pages = sync_pages(synced.practice.client, resource_type, count)
    found = [resource_id for page in pages for resource_id in page]
    assert len(found) == len(set(found))
    assert set(found) == synced.expected[resource_type]
    assert all(len(page) == count for page in pages[:-1])


def test_sync_pages_link_to_the_next_page_until_the_last(synced: Synced) -> None:
    """Each full page but the last names a `next` page; the last names none."""
    client = synced.practice.client
    total = len(synced.expected["Slot"])
    for number in range(1, total + 1):
        reply = client.post("Slot/_search", data={"_count": "2", "page": str(number)}, headers=FORM)
        relations = {link["relation"] for link in reply.json().get("link", [])}
        assert ("next" in relations) == (number * 2 < total), number


def test_an_unfiltered_search_of_another_practice_meets_nothing_of_this_one(
    synced: Synced, other: Practice
) -> None:
    """Scope: another practice's sync holds none of these resources."""
    for search, expected in synced.expected.items():
        found = {resource_id for page in sync_pages(other.client, search, 1000) for resource_id in page}
        assert not found & expected, search


# == bsnr and lanr =======================================================================================
def test_bsnr_and_lanr_find_the_bookings_on_a_practices_slots(
    world: World, mine: Practice, other: Practice
) -> None:
    """`bsnr` follows Appointment → Slot → Schedule → PractitionerRole → Organization; `lanr` the same chain
    to the Practitioner, matching ANR and LANR by their first 7 digits."""
    a = world.booked(world.slot(mine))["id"]
    b = world.booked(world.slot(other))["id"]
    admin = world.admin

    def find(**params: str) -> set[str]:
        return ids(admin.get("Appointment", params={**params, "_count": "1000"})) & {a, b}

    assert find(bsnr=mine.bsnr) == {a}
    assert find(bsnr=other.bsnr) == {b}
    assert find(bsnr=f"{mine.bsnr},{other.bsnr}") == {a, b}
    assert find(bsnr=digits(9, "5")) == set()
    assert find(lanr=mine.lanr) == {a}
    assert find(lanr=mine.lanr[:7]) == {a}
    assert find(lanr=mine.lanr[:7] + ("00" if mine.lanr[7:] != "00" else "11")) == {a}
    assert find(lanr=other.lanr) == {b}
    assert find(lanr=mine.lanr, bsnr=other.bsnr) == set()
    # a practice sees the bookings of its own Slots only, whatever it asks for
    assert ids(mine.client.get("Appointment", params={"bsnr": other.bsnr})) == set()
    assert a in ids(mine.client.post("Appointment/_search", data={"bsnr": mine.bsnr}, headers=FORM))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("bsnr", "12345678"),
        ("bsnr", "1234567890"),
        ("bsnr", "12345678a"),
        ("bsnr", ""),
        ("bsnr", "１２３４５６７８９"),
        ("bsnr", f"{BSNR_SYSTEM}|123456789"),
        ("bsnr", "123456789,1234"),
        ("lanr", "123456"),
        ("lanr", "12345678"),
        ("lanr", "1234567890"),
        ("lanr", "12345 67"),
        ("lanr", ""),
        ("bsnr:missing", "true"),
        ("lanr:not", "1234567"),
    ],
)
@pytest.mark.parametrize("how", ["GET", "POST _search"])
def test_malformed_bsnr_or_lanr_is_invalid(
    world: World, mine: Practice, name: str, value: str, how: str
) -> None:
    """A BSNR has 9 digits, an ANR 7 and a LANR 9, and neither parameter takes a modifier: anything else is
    400 `invalid`, also under lenient handling."""
    for client in (world.admin, mine.client):
        if how == "GET":
            reply = client.get("Appointment", params={name: value}, headers={"Prefer": "handling=lenient"})
        else:
            reply = client.post("Appointment/_search", data={name: value}, headers=FORM)
        assert_error(reply, 400, "invalid")


def test_bsnr_and_lanr_are_declared_with_their_search_parameters(server: Server) -> None:
    """The CapabilityStatement lists both for Appointment, each pointing to a SearchParameter this server
    serves without a token."""
    statement = httpx.get(f"{server.fhir}/metadata").json()
    [appointment] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Appointment"]
    declared = {p["name"]: p for p in appointment["searchParam"]}
    for name in ("bsnr", "lanr"):
        url = f"{server.fhir}/SearchParameter/Appointment-{name}"
        assert declared[name]["definition"] == url and declared[name]["type"] == "token"
        reply = httpx.get(url)
        assert reply.status_code == 200, reply.text
        definition = reply.json()
        assert (
            definition["url"] == url and definition["code"] == name and definition["base"] == ["Appointment"]
        )


# == Terminprofile (Schedules) ===========================================================================
def terminprofil(practice: Practice, **elements: object) -> dict:
    return {
        "resourceType": "Schedule",
        "active": True,
        "actor": [ref("PractitionerRole", practice.role)],
        "extension": [
            {"url": SCHEDULE_NAME, "valueString": "Vormittagssprechstunde"},
            {"url": DEFAULT_SLOT_MINUTES, "valuePositiveInt": 15},
        ],
        "comment": "Bitte Versichertenkarte mitbringen.",
        **elements,
    }


def test_practice_creates_updates_and_deactivates_its_terminprofil(mine: Practice) -> None:
    """A practice creates, updates and deactivates (active false) its own Schedules; the Terminprofil fields
    (name, default slot length, patient note) are stored and served."""
    client = mine.client
    schedule = created(client.post("Schedule", json=terminprofil(mine)))
    read = client.get(f"Schedule/{schedule['id']}").json()
    extensions = {e["url"]: e for e in read["extension"]}
    assert extensions[SCHEDULE_NAME]["valueString"] == "Vormittagssprechstunde"
    assert extensions[DEFAULT_SLOT_MINUTES]["valuePositiveInt"] == 15
    assert read["comment"] == "Bitte Versichertenkarte mitbringen."

    changed = terminprofil(
        mine,
        id=schedule["id"],
        extension=[
            {"url": SCHEDULE_NAME, "valueString": "Nachmittag"},
            {"url": DEFAULT_SLOT_MINUTES, "valuePositiveInt": 20},
        ],
        comment="Nüchtern erscheinen.",
    )
    reply = client.put(f"Schedule/{schedule['id']}", json=changed, headers={"If-Match": 'W/"1"'})
    assert reply.status_code == 200, reply.text
    read = client.get(f"Schedule/{schedule['id']}").json()
    assert read["meta"]["versionId"] == "2" and read["comment"] == "Nüchtern erscheinen."
    assert {e["url"]: e for e in read["extension"]}[DEFAULT_SLOT_MINUTES]["valuePositiveInt"] == 20

    reply = client.put(f"Schedule/{schedule['id']}", json=changed | {"active": False})
    assert reply.status_code == 200, reply.text
    assert client.get(f"Schedule/{schedule['id']}").json()["active"] is False
    assert schedule["id"] in ids(client.get("Schedule", params={"active": "false"}))
    assert schedule["id"] not in ids(client.get("Schedule", params={"active": "true"}))
    # a practice's search without a filter is its whole scope (section 5)
    assert schedule["id"] in ids(client.get("Schedule"))


def test_practice_terminprofil_in_a_transaction(mine: Practice) -> None:
    """A Terminprofil and its first Slots in one transaction, the Slots referring to it by `urn:uuid:`."""
    full_url = f"urn:uuid:{uuid.uuid4()}"
    start = at(20)
    entries = [
        {
            "fullUrl": full_url,
            "resource": terminprofil(mine),
            "request": {"method": "POST", "url": "Schedule"},
        }
    ]
    for i in range(3):
        begin = start + timedelta(minutes=15 * i)
        slot = {
            "resourceType": "Slot",
            "schedule": {"reference": full_url},
            "start": fhir_time(begin),
            "end": fhir_time(begin + timedelta(minutes=15)),
        }
        entries.append({"resource": slot, "request": {"method": "POST", "url": "Slot"}})
    reply = mine.client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert reply.status_code == 200, reply.text
    responses = [e["response"] for e in reply.json()["entry"]]
    assert [r["status"] for r in responses] == ["201 Created"] * 4
    schedule_id = responses[0]["location"].split("/")[1]
    found = matches(mine.client.get("Slot", params={"schedule": f"Schedule/{schedule_id}"}).json())
    assert len(found) == 3 and {s["status"] for s in found} == {"free"}


def refused_schedules(world: World, mine: Practice, other: Practice) -> dict[str, dict]:
    return {
        "only a Location of its own": terminprofil(mine, actor=[ref("Location", mine.location)]),
        "only a Practitioner of its own": terminprofil(mine, actor=[ref("Practitioner", mine.practitioner)]),
        "another practice's PractitionerRole": terminprofil(
            mine, actor=[ref("PractitionerRole", other.role)]
        ),
        "a PractitionerRole that does not exist": terminprofil(
            mine, actor=[ref("PractitionerRole", f"missing-{uuid.uuid4().hex[:8]}")]
        ),
        "a contained PractitionerRole": terminprofil(
            mine,
            contained=[{"resourceType": "PractitionerRole", "id": "r", "active": True}],
            actor=[{"reference": "#r"}],
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "only a Location of its own",
        "only a Practitioner of its own",
        "another practice's PractitionerRole",
        "a PractitionerRole that does not exist",
        "a contained PractitionerRole",
    ],
)
def test_practice_terminprofil_needs_one_of_its_own_practitioner_roles(
    server: Server, world: World, mine: Practice, other: Practice, case: str
) -> None:
    """A practice's Schedule has one of its own PractitionerRoles among its actors, when created and when
    updated; else 422 `business-rule`, and nothing is stored."""
    body = refused_schedules(world, mine, other)[case]
    existing = created(mine.client.post("Schedule", json=terminprofil(mine)))
    before = server.counts()
    assert_error(mine.client.post("Schedule", json=body), 422, "business-rule")
    assert_error(
        mine.client.put(f"Schedule/{existing['id']}", json=body | {"id": existing["id"]}),
        422,
        "business-rule",
    )
    assert server.counts() == before
    assert world.read("Schedule", existing["id"])["meta"]["versionId"] == "1"


def test_a_terminprofil_with_a_location_besides_its_role_is_fine(mine: Practice) -> None:
    body = terminprofil(mine, actor=[ref("Location", mine.location), ref("PractitionerRole", mine.role)])
    assert mine.client.post("Schedule", json=body).status_code == 201


@pytest.mark.parametrize(
    "extension",
    [
        {"url": SCHEDULE_NAME, "valueInteger": 3},
        {"url": SCHEDULE_NAME, "valueString": "a", "valueCode": "b"},
        {"url": DEFAULT_SLOT_MINUTES, "valueString": "15"},
        {"url": DEFAULT_SLOT_MINUTES, "valueInteger": 15},
        {"url": DEFAULT_SLOT_MINUTES, "valuePositiveInt": 0},
        {"url": DEFAULT_SLOT_MINUTES, "valuePositiveInt": "15"},
    ],
)
@pytest.mark.parametrize("role", ["practice", "admin"])
def test_terminprofil_fields_carry_their_types(
    server: Server, world: World, mine: Practice, extension: dict, role: str
) -> None:
    """The Terminprofil fields are a valueString (name) and a valuePositiveInt (default slot length): any
    other value is 400 `invalid` for every writer."""
    client = mine.client if role == "practice" else world.admin
    before = server.counts()
    assert_error(client.post("Schedule", json=terminprofil(mine, extension=[extension])), 400, "invalid")
    assert server.counts() == before


def test_practice_changes_only_its_own_schedules(server: Server, mine: Practice, other: Practice) -> None:
    """Another practice's Schedule is unknown to it (404) and stays as it was."""
    theirs = other.client.get(f"Schedule/{other.schedule}").json()
    before = server.counts()
    assert_error(
        mine.client.put(f"Schedule/{other.schedule}", json=theirs | {"active": False}), 404, "not-found"
    )
    assert server.counts() == before


def test_practice_may_not_delete_schedules(server: Server, mine: Practice) -> None:
    """Deleting Schedules is admin's (403 for the practice, even for an empty one of its own)."""
    schedule = created(mine.client.post("Schedule", json=terminprofil(mine)))
    before = server.counts()
    assert_error(mine.client.delete(f"Schedule/{schedule['id']}"), 403, "forbidden")
    assert server.counts() == before


def test_a_schedule_with_slots_cannot_be_deleted(server: Server, world: World, mine: Practice) -> None:
    """Admin deletes a Schedule only once its Slots are gone: 409 `conflict` while one is left."""
    schedule = created(mine.client.post("Schedule", json=terminprofil(mine)))["id"]
    first, second = world.slot(mine, schedule=schedule), world.slot(mine, schedule=schedule)
    before = server.counts()
    assert_error(world.admin.delete(f"Schedule/{schedule}"), 409, "conflict")
    assert server.counts() == before
    assert mine.client.delete(f"Slot/{first}").status_code == 204
    assert_error(world.admin.delete(f"Schedule/{schedule}"), 409, "conflict")
    assert mine.client.delete(f"Slot/{second}").status_code == 204
    assert world.admin.delete(f"Schedule/{schedule}").status_code == 204
    assert world.admin.get(f"Schedule/{schedule}").status_code == 410


# == Terminslots (Slots) ==================================================================================
def slot_body(practice: Practice, days: float = 4, schedule: str | None = None, **elements: object) -> dict:
    start = at(days, secrets.randbelow(10_000))
    return {
        "resourceType": "Slot",
        "schedule": ref("Schedule", schedule or practice.schedule),
        "start": fhir_time(start),
        "end": fhir_time(start + timedelta(minutes=10)),
        **elements,
    }


def test_a_practice_slot_without_status_is_free(mine: Practice) -> None:
    """A Slot a practice creates without a status is stored free; with status free too."""
    slot = created(mine.client.post("Slot", json=slot_body(mine)))
    assert slot["status"] == "free"
    assert mine.client.get(f"Slot/{slot['id']}").json()["status"] == "free"
    assert created(mine.client.post("Slot", json=slot_body(mine, status="free")))["status"] == "free"


@pytest.mark.parametrize(
    ("status", "http", "code"),
    [
        ("busy", 422, "business-rule"),
        ("busy-unavailable", 422, "business-rule"),
        ("busy-tentative", 422, "business-rule"),
        ("entered-in-error", 422, "business-rule"),
        ("occupied", 400, "invalid"),
        (None, 400, "invalid"),
    ],
)
def test_a_practice_creates_free_slots_only(
    server: Server, mine: Practice, status: object, http: int, code: str
) -> None:
    """Any status other than free from a practice is 422 `business-rule` (an unknown code or a null is not
    FHIR: 400); nothing is stored, in a transaction neither."""
    before = server.counts()
    assert_error(mine.client.post("Slot", json=slot_body(mine, status=status)), http, code)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": slot_body(mine), "request": {"method": "POST", "url": "Slot"}},
            {"resource": slot_body(mine, status=status), "request": {"method": "POST", "url": "Slot"}},
        ],
    }
    assert_error(mine.client.post("", json=bundle), http, code)
    assert server.counts() == before


def test_a_practice_creates_slots_on_its_own_schedules_only(
    server: Server, mine: Practice, other: Practice
) -> None:
    before = server.counts()
    assert_error(
        mine.client.post("Slot", json=slot_body(mine, schedule=other.schedule)), 422, "business-rule"
    )
    assert server.counts() == before


def bulk_bundle(practice: Practice, schedule: str, system: str, count: int) -> dict:
    start = at(30)
    entries = []
    for i in range(count):
        begin = start + timedelta(minutes=5 * i)
        slot = {
            "resourceType": "Slot",
            "identifier": [{"system": system, "value": f"slot-{i}"}],
            "schedule": ref("Schedule", schedule),
            "start": fhir_time(begin),
            "end": fhir_time(begin + timedelta(minutes=5)),
        }
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": slot,
                "request": {"method": "POST", "url": "Slot", "ifNoneExist": f"identifier={system}|slot-{i}"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def slot_total(client: httpx.Client, schedule: str) -> int:
    reply = client.get(
        "Slot", params={"schedule": f"Schedule/{schedule}", "_total": "accurate", "_count": "0"}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["total"]


def test_thousands_of_slots_in_one_transaction_and_its_retry_creates_nothing_twice(
    world: World, mine: Practice
) -> None:
    """2,000 Slots in one transaction Bundle, each with an identifier and `ifNoneExist`: all created free; the
    same Bundle sent again creates none, and one with more Slots creates only the new ones."""
    schedule = created(mine.client.post("Schedule", json=terminprofil(mine)))["id"]
    system = f"urn:test:sync:bulk:{uuid.uuid4().hex[:10]}"
    bundle = bulk_bundle(mine, schedule, system, 2000)
    reply = mine.client.post("", json=bundle)
    assert reply.status_code == 200, reply.text
    first = [e["response"] for e in reply.json()["entry"]]
    assert [r["status"] for r in first] == ["201 Created"] * 2000
    assert slot_total(mine.client, schedule) == 2000
    sample = first[1234]["location"].split("/")[1]
    assert world.read("Slot", sample)["status"] == "free"

    again = mine.client.post("", json=bundle)
    assert again.status_code == 200, again.text
    second = [e["response"] for e in again.json()["entry"]]
    assert [r["status"] for r in second] == ["200 OK"] * 2000
    assert [e["resource"]["id"] for e in again.json()["entry"]] == [
        e["resource"]["id"] for e in reply.json()["entry"]
    ]
    assert slot_total(mine.client, schedule) == 2000
    assert world.read("Slot", sample)["meta"]["versionId"] == "1"

    more = bulk_bundle(mine, schedule, system, 2010)
    reply = mine.client.post("", json=more)
    assert reply.status_code == 200, reply.text
    statuses = [e["response"]["status"] for e in reply.json()["entry"]]
    assert statuses == ["200 OK"] * 2000 + ["201 Created"] * 10
    assert slot_total(mine.client, schedule) == 2010


def test_a_practice_deletes_free_slots_but_not_booked_or_held_ones(
    server: Server, world: World, mine: Practice
) -> None:
    """Slot delete: a free one → 204 (gone for everyone); a booked or held one → 409 `slot-unavailable`."""
    free = world.slot(mine)
    assert mine.client.delete(f"Slot/{free}").status_code == 204
    assert world.admin.get(f"Slot/{free}").status_code == 410
    assert mine.client.get(f"Slot/{free}").status_code == 404
    booked, held = world.slot(mine), world.slot(mine)
    world.booked(booked)
    assert world.hold(held).status_code == 200
    before = server.counts()
    assert_error(mine.client.delete(f"Slot/{booked}"), 409, "slot-unavailable")
    assert_error(mine.client.delete(f"Slot/{held}"), 409, "slot-unavailable")
    assert server.counts() == before


def test_a_practice_does_not_put_slots(server: Server, world: World, mine: Practice) -> None:
    """Slots are never updated by a practice: `PUT Slot` → 405."""
    slot = world.slot(mine)
    current = mine.client.get(f"Slot/{slot}").json()
    before = server.counts()
    assert_error(
        mine.client.put(f"Slot/{slot}", json=current | {"status": "busy"}), 405, "method-not-allowed"
    )
    assert server.counts() == before


def test_a_practice_does_not_delete_another_practices_slots(
    server: Server, world: World, mine: Practice, other: Practice
) -> None:
    slot = world.slot(other)
    assert_error(mine.client.delete(f"Slot/{slot}"), 404, "not-found")
    assert world.read("Slot", slot)["status"] == "free"


# == $slotstatus_aktualisieren ============================================================================
def version(world: World, slot: str) -> str:
    return world.read("Slot", slot)["meta"]["versionId"]


def test_busy_and_free_again(world: World, mine: Practice) -> None:
    """busy: the Slot is busy as the practice set it and cannot be held or booked (409) until set free again;
    each change of the status gives one new version, a status the Slot has already none."""
    slot = world.slot(mine)
    reply = world.set_status(mine, slot, "busy")
    assert reply.status_code == 204, reply.text
    assert reply.content == b""
    stored = world.read("Slot", slot)
    assert stored["status"] == "busy" and stored["meta"]["versionId"] == "2"
    assert reply.headers["etag"] == 'W/"2"'
    assert_error(world.hold(slot), 409, "slot-unavailable")
    assert_error(world.book(slot), 409, "slot-unavailable")
    assert world.set_status(mine, slot, "busy").status_code == 204
    assert version(world, slot) == "2"
    assert slot not in ids(world.admin.get("Slot", params={"_id": slot, "status": "free"}))

    assert world.set_status(mine, slot, "free").status_code == 204
    stored = world.read("Slot", slot)
    assert stored["status"] == "free" and stored["meta"]["versionId"] == "3"
    assert world.set_status(mine, slot, "free").status_code == 204
    assert version(world, slot) == "3"
    assert world.booked(slot)["status"] == "booked"


def test_setting_a_free_slot_free_changes_nothing(server: Server, world: World, mine: Practice) -> None:
    slot = world.slot(mine)
    before = server.counts()
    assert world.set_status(mine, slot, "free").status_code == 204
    assert server.counts() == before
    assert version(world, slot) == "1"


def test_a_busy_slot_cannot_be_booked_with_a_referral_code(
    world: World, mine: Practice, referrer: httpx.Client, third: httpx.Client
) -> None:
    slot = world.slot(mine)
    assert world.set_status(mine, slot, "busy").status_code == 204
    code = issue(referrer, world.lm)
    assert_error(book_with_code(third, code, slot), 409, "slot-unavailable")
    assert world.set_status(mine, slot, "free").status_code == 204
    assert book_with_code(third, code, slot).status_code == 204


def test_a_booked_or_held_slot_cannot_be_set_free(server: Server, world: World, mine: Practice) -> None:
    """Setting free a Slot with an active Appointment or a running hold → 409 `slot-unavailable`, nothing
    changes; setting it busy is accepted (a booked Slot is busy already)."""
    booked, held = world.slot(mine), world.slot(mine)
    world.booked(booked)
    assert world.hold(held).status_code == 200
    before = server.counts()
    assert_error(world.set_status(mine, booked, "free"), 409, "slot-unavailable")
    assert_error(world.set_status(mine, held, "free"), 409, "slot-unavailable")
    assert server.counts() == before
    assert world.read("Slot", booked)["status"] == "busy"
    assert world.read("Slot", held)["status"] == "busy-tentative"
    assert world.set_status(mine, booked, "busy").status_code == 204
    assert world.read("Slot", booked)["meta"]["versionId"] == "2"


def test_setting_a_held_slot_busy_ends_the_hold(world: World, mine: Practice) -> None:
    """The practice's busy outranks a hold: the Slot is busy at once and its holder cannot book it."""
    slot = world.slot(mine)
    assert world.hold(slot).status_code == 200
    assert world.set_status(mine, slot, "busy").status_code == 204
    assert world.read("Slot", slot)["status"] == "busy"
    assert_error(world.book(slot), 409, "slot-unavailable")


def test_a_busy_slot_stays_busy_when_its_booking_is_cancelled(world: World, mine: Practice) -> None:
    """busy on a booked Slot is the practice's word: the Slot stays busy when the booking ends."""
    slot = world.slot(mine)
    appointment = world.booked(slot)
    assert world.set_status(mine, slot, "busy").status_code == 204
    cancelled = world.booker.put(
        f"Appointment/{appointment['id']}", json=appointment | {"status": "cancelled"}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert world.read("Slot", slot)["status"] == "busy"
    assert world.set_status(mine, slot, "free").status_code == 204
    assert world.read("Slot", slot)["status"] == "free"


@pytest.mark.parametrize(
    "body",
    [
        parameters(),
        parameters(("status", "valueCode", "busy-unavailable")),
        parameters(("status", "valueCode", "busy-tentative")),
        parameters(("status", "valueCode", "entered-in-error")),
        parameters(("status", "valueCode", "FREE")),
        parameters(("status", "valueCode", "")),
        parameters(("status", "valueString", "free")),
        parameters(("status", "valueCode", "free"), ("status", "valueCode", "busy")),
        parameters(("status", "valueCode", "free"), ("comment", "valueString", "x")),
        {"resourceType": "Slot", "status": "free"},
        {"resourceType": "Parameters", "parameter": "free"},
    ],
    ids=lambda body: str(body)[:60],
)
def test_a_malformed_status_change_is_invalid(
    server: Server, world: World, mine: Practice, body: dict
) -> None:
    """status is required once, as valueCode free or busy: anything else is 400 `invalid`, nothing
    changes."""
    slot = world.slot(mine)
    before = server.counts()
    assert_error(mine.client.post(f"Slot/{slot}/{OPERATION}", json=body), 400, "invalid")
    assert server.counts() == before


def test_a_body_that_is_no_json_is_invalid(server: Server, world: World, mine: Practice) -> None:
    slot = world.slot(mine)
    reply = mine.client.post(
        f"Slot/{slot}/{OPERATION}", content=b"{not json", headers={"Content-Type": "application/fhir+json"}
    )
    assert_error(reply, 400, "invalid")


def test_the_status_change_speaks_xml(world: World, mine: Practice) -> None:
    slot = world.slot(mine)
    body = (
        '<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="status"/>'
        '<valueCode value="busy"/></parameter></Parameters>'
    )
    reply = mine.client.post(
        f"Slot/{slot}/{OPERATION}",
        content=body.encode(),
        headers={"Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"},
    )
    assert reply.status_code == 204, reply.text
    assert world.read("Slot", slot)["status"] == "busy"


def test_an_unknown_or_foreign_slot_is_not_found(
    server: Server, world: World, mine: Practice, other: Practice
) -> None:
    """Unknown, deleted, or another practice's Slot → 404 `not-found`, and that Slot stays as it was."""
    theirs, gone = world.slot(other), world.slot(mine)
    assert world.admin.delete(f"Slot/{gone}").status_code == 204
    before = server.counts()
    for slot in (theirs, gone, f"missing-{uuid.uuid4().hex[:8]}", "not%20an%20id"):
        assert_error(world.set_status(mine, slot, "busy"), 404, "not-found")
    assert server.counts() == before
    assert world.read("Slot", theirs)["status"] == "free"


@pytest.mark.parametrize(
    ("role", "status"), [("admin", 204), ("referrer", 403), ("third-party", 403), ("scheduling-client", 403)]
)
def test_the_status_change_is_for_practices_and_admin(
    server: Server, world: World, mine: Practice, role: str, status: int
) -> None:
    slot = world.slot(mine)
    with server.client(role) as client:
        reply = client.post(f"Slot/{slot}/{OPERATION}", json=status_body("busy"))
    if status == 204:
        assert reply.status_code == 204, reply.text
        assert world.read("Slot", slot)["status"] == "busy"
    else:
        assert_error(reply, status, "forbidden")
        assert world.read("Slot", slot)["status"] == "free"


def test_the_status_change_is_invoked_by_post_on_a_slot(server: Server, world: World, mine: Practice) -> None:
    """Type level or GET → 405 `method-not-allowed`."""
    slot = world.slot(mine)
    assert_error(mine.client.post(f"Slot/{OPERATION}", json=status_body("busy")), 405, "method-not-allowed")
    assert_error(
        mine.client.get(f"Slot/{slot}/{OPERATION}", params={"status": "busy"}), 405, "method-not-allowed"
    )
    assert world.read("Slot", slot)["status"] == "free"


def test_the_status_change_replays_its_first_answer_for_the_same_idempotency_key(
    world: World, mine: Practice
) -> None:
    """A repeat with the same `Idempotency-Key` answers as the first time and does nothing more; the same key
    with another body is 422 `business-rule`."""
    slot = world.slot(mine)
    key = uuid.uuid4().hex
    first = world.set_status(mine, slot, "busy", **{"Idempotency-Key": key})
    assert first.status_code == 204, first.text
    assert world.set_status(mine, slot, "free").status_code == 204
    again = world.set_status(mine, slot, "busy", **{"Idempotency-Key": key})
    assert again.status_code == 204 and again.headers["etag"] == first.headers["etag"]
    assert world.read("Slot", slot)["status"] == "free"
    assert_error(world.set_status(mine, slot, "free", **{"Idempotency-Key": key}), 422, "business-rule")


def test_the_operation_is_declared_with_its_definition(server: Server) -> None:
    """The CapabilityStatement lists the operation for Slot; its OperationDefinition is served without a
    token."""
    url = f"{server.fhir}/OperationDefinition/slotstatus_aktualisieren"
    statement = httpx.get(f"{server.fhir}/metadata").json()
    [slot] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Slot"]
    assert {"name": "slotstatus_aktualisieren", "definition": url}.items() <= next(
        op for op in slot["operation"] if op["name"] == "slotstatus_aktualisieren"
    ).items()
    reply = httpx.get(url)
    assert reply.status_code == 200, reply.text
    definition = reply.json()
    assert definition["url"] == url and definition["code"] == "slotstatus_aktualisieren"
    assert (
        definition["instance"] is True and definition["type"] is False and definition["resource"] == ["Slot"]
    )
    [status] = definition["parameter"]
    assert (status["name"], status["use"], status["min"], status["max"], status["type"]) == (
        "status",
        "in",
        1,
        "1",
        "code",
    )


# == bookings on the practice's Slots =====================================================================
def issue(referrer: httpx.Client, lm: dict) -> str:
    """A referral code of the server's referrer for the module's Leistungsmerkmal."""
    body = parameters(
        ("leistungsmerkmale", "valueCoding", lm),
        ("bsnr", "valueIdentifier", {"system": BSNR_SYSTEM, "value": "721234500"}),
        (
            "ueberweisenderArzt",
            "resource",
            {
                "resourceType": "Practitioner",
                "identifier": [{"system": ANR_SYSTEM, "value": "123456701"}],
                "name": [{"family": "Hausärztin"}],
            },
        ),
    )
    reply = referrer.post("$vermittlungscode_anfordern", json=body)
    assert reply.status_code == 200, reply.text
    [code] = [
        p["valueIdentifier"]["value"] for p in reply.json()["parameter"] if p["name"] == "vermittlungscode"
    ]
    return code


def book_with_code(third: httpx.Client, code: str, slot: str) -> httpx.Response:
    return third.post(
        "$termin_buchen",
        json=parameters(
            ("vermittlungscode", "valueString", code),
            ("slotId", "valueString", slot),
            ("patientendaten", "resource", patient()),
        ),
    )


def code_status(third: httpx.Client, code: str) -> str:
    reply = third.post(
        "$vermittlungscodestatus_abrufen", json=parameters(("vermittlungscode", "valueString", code))
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["entry"][0]["resource"]["status"]


def code_booking(mine: Practice, slot: str) -> dict:
    """The practice finds the booking on its Slot."""
    [appointment] = matches(
        mine.client.get("Appointment", params={"slot": f"Slot/{slot}", "status": "booked"}).json()
    )
    return appointment


def test_a_practice_reads_the_bookings_of_its_slots_from_every_face(
    world: World, mine: Practice, other: Practice, referrer: httpx.Client, third: httpx.Client
) -> None:
    """Bookings by `$book` (scheduling client) and `$termin_buchen` (third party with a code) are
    Appointments the practice reads and finds, with their Patients and the code's ServiceRequest; another
    practice does not."""
    by_book = world.booked(world.slot(mine))
    slot = world.slot(mine)
    code = issue(referrer, world.lm)
    assert book_with_code(third, code, slot).status_code == 204
    by_code = code_booking(mine, slot)
    found = ids(mine.client.get("Appointment", params={"_count": "1000"}))
    assert {by_book["id"], by_code["id"]} <= found
    for appointment in (by_book, by_code):
        assert mine.client.get(f"Appointment/{appointment['id']}").status_code == 200
        assert_error(other.client.get(f"Appointment/{appointment['id']}"), 404, "not-found")
        patient_ref = next(
            p["actor"]["reference"]
            for p in appointment["participant"]
            if "Patient/" in p["actor"]["reference"]
        )
        assert mine.client.get(patient_ref).status_code == 200
    roles = {e["url"]: e for e in by_code["extension"][0]["extension"]}
    assert roles["role"]["valueCode"] == "third-party"
    request = mine.client.get(by_code["basedOn"][0]["reference"])
    assert request.status_code == 200 and request.json()["status"] == "active"
    with_bsnr = ids(
        mine.client.get("Appointment", params={"bsnr": mine.bsnr, "lanr": mine.lanr, "_count": "1000"})
    )
    assert {by_book["id"], by_code["id"]} <= with_bsnr


def test_a_practice_cancels_a_booking_and_frees_the_slot(world: World, mine: Practice) -> None:
    """PUT status cancelled by the practice: cancelationReason `prov`, the Slot free and bookable again."""
    slot = world.slot(mine)
    appointment = mine.client.get(f"Appointment/{world.booked(slot)['id']}").json()
    reply = mine.client.put(f"Appointment/{appointment['id']}", json=appointment | {"status": "cancelled"})
    assert reply.status_code == 200, reply.text
    stored = world.read("Appointment", appointment["id"])
    assert stored["status"] == "cancelled"
    assert stored["cancelationReason"]["coding"] == [{"system": CANCELLATION, "code": "prov"}]
    assert world.read("Slot", slot)["status"] == "free"
    assert world.booked(slot)["status"] == "booked"


def test_a_practice_cancellation_revokes_the_code_even_after_earlier_bookings(
    world: World, mine: Practice, referrer: httpx.Client, third: httpx.Client
) -> None:
    """The code of a booking the practice cancels is `revoked`, never `completed` (forfeit), also when the
    code had been booked and cancelled by the patient before; it books again."""
    first, second, third_slot = world.slot(mine), world.slot(mine), world.slot(mine)
    code = issue(referrer, world.lm)
    assert book_with_code(third, code, first).status_code == 204
    cancel = third.post("$termin_absagen", json=parameters(("vermittlungscode", "valueString", code)))
    assert cancel.status_code == 204, cancel.text
    assert book_with_code(third, code, second).status_code == 204
    appointment = code_booking(mine, second)
    reply = mine.client.put(f"Appointment/{appointment['id']}", json=appointment | {"status": "cancelled"})
    assert reply.status_code == 200, reply.text
    assert code_status(third, code) == "revoked"
    assert world.read("Slot", second)["status"] == "free"
    request = mine.client.get(appointment["basedOn"][0]["reference"]).json()
    assert request["status"] == "revoked"
    assert world.read("Appointment", appointment["id"])["cancelationReason"]["coding"][0]["code"] == "prov"
    assert book_with_code(third, code, third_slot).status_code == 204
    assert code_status(third, code) == "active"


@pytest.mark.parametrize(
    "path",
    [
        ("arrived", "fulfilled"),
        ("arrived", "noshow"),
        ("fulfilled",),
        ("noshow",),
        ("checked-in", "fulfilled"),
    ],
)
def test_a_practice_records_how_a_booking_went(world: World, mine: Practice, path: tuple[str, ...]) -> None:
    """booked → arrived / checked-in / fulfilled / noshow, and on to fulfilled or noshow, by the practice."""
    appointment = mine.client.get(f"Appointment/{world.booked(world.slot(mine))['id']}").json()
    for status in path:
        reply = mine.client.put(f"Appointment/{appointment['id']}", json=appointment | {"status": status})
        assert reply.status_code == 200, reply.text
        appointment = reply.json()
        assert appointment["status"] == status


def test_a_practice_cannot_make_changes_the_table_does_not_have(
    server: Server, world: World, mine: Practice
) -> None:
    appointment = mine.client.get(f"Appointment/{world.booked(world.slot(mine))['id']}").json()
    before = server.counts()
    for status in ("proposed", "pending", "waitlist"):
        reply = mine.client.put(f"Appointment/{appointment['id']}", json=appointment | {"status": status})
        assert_error(reply, 422, "business-rule")
    assert server.counts() == before


def test_another_practice_cannot_change_the_booking(
    server: Server, world: World, mine: Practice, other: Practice
) -> None:
    appointment = world.booked(world.slot(mine))
    before = server.counts()
    reply = other.client.put(f"Appointment/{appointment['id']}", json=appointment | {"status": "cancelled"})
    assert_error(reply, 404, "not-found")
    assert server.counts() == before
