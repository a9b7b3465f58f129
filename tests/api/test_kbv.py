"""The 116117 faces (contract 4.1–4.3): referral codes for referrers and third-party booking, black-box over
HTTP on SQLite and PostgreSQL.

The module builds its own Schedules under the practice with BSNR 721234500 (its Organization is shared with
other modules: found first, created only when missing). Codes issued by the referrer use Leistungsmerkmale
of this module's own code system, so their searches only ever meet this module's Slots; third-party codes
must use the referral-free codings, so their results are narrowed to this module's Slots.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest

from terminhub.fhir.xml import parse_resource_xml, resource_to_xml
from tests.api.rest_helpers import (
    FHIR_NS,
    FHIR_XML,
    XML_CONTENT_TYPE,
    assert_error,
    assert_xml_error,
    fresh_client,
    patient,
)
from tests.support.server import PRACTICE_BSNR, Server

SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode"
BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"
FACHGEBIET = "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_BAS_FACHGEBIET_GROB"
LEISTUNG = "urn:terminhub:leistungsmerkmal"
SNOMED = "http://snomed.info/sct"
URGENCY = {"urgent": "103391001", "routine": "50811001", "asap": "709122007"}
BOOKABLE_BY = "urn:terminhub:bookable-by"
BOOKABLE_URGENCY = "urn:terminhub:bookable-urgency"
TERMINTYP = "urn:terminhub:termintyp"
XML = {"Content-Type": "application/fhir+xml", "Accept": FHIR_XML}
DAY = 86400


# -- the module's world ---------------------------------------------------------------------------------
def at(days: float) -> datetime:
    moment = datetime.now(UTC) + timedelta(days=days)
    return moment.replace(second=0, microsecond=0)


def fhir_time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def coding(system: str, code: str) -> dict:
    return {"system": system, "code": code}


@dataclass
class World:
    admin: httpx.Client
    server: Server
    prefix: str = field(default_factory=lambda: "k" + uuid.uuid4().hex[:10])
    organization: str = ""
    role: str = ""
    postal: str = ""
    counter: int = 0

    def put(self, resource_type: str, body: dict) -> str:
        self.counter += 1
        resource_id = f"{self.prefix}-{resource_type.lower()}-{self.counter}"
        reply = self.admin.put(
            f"{resource_type}/{resource_id}", json={"resourceType": resource_type, "id": resource_id, **body}
        )
        assert reply.status_code in (200, 201), reply.text
        return resource_id

    def lm(self, name: str = "lm") -> dict:
        """A Leistungsmerkmal of this module's own, fresh for each call."""
        self.counter += 1
        return coding(f"urn:test:{self.prefix}", f"{name}-{self.counter}")

    def schedule(self, codings: list[dict], *, active: bool = True, extension: list | None = None) -> str:
        body: dict = {
            "active": active,
            "actor": [{"reference": f"PractitionerRole/{self.role}"}],
            "serviceType": [{"coding": [c]} for c in codings],
        }
        if extension:
            body["extension"] = extension
        return self.put("Schedule", body)

    def slot(self, schedule: str, days: float, **extra: object) -> str:
        start = at(days)
        return self.put(
            "Slot",
            {
                "schedule": {"reference": f"Schedule/{schedule}"},
                "status": "free",
                "start": fhir_time(start),
                "end": fhir_time(start + timedelta(minutes=15)),
                **extra,
            },
        )

    def clock(self, offset_s: float) -> None:
        reply = httpx.post(
            self.server.base_url + "/admin/clock",
            json={"offset_s": offset_s},
            headers={"Authorization": f"Bearer {self.server.token('admin')}"},
        )
        assert reply.status_code == 200, reply.text


def practice_organization(admin: httpx.Client, prefix: str) -> str:
    """The Organization carrying the practice's BSNR: found, or created when no module has yet."""
    reply = admin.get("Organization", params={"identifier": f"{BSNR_SYSTEM}|{PRACTICE_BSNR}"})
    assert reply.status_code == 200, reply.text
    entries = [e["resource"] for e in reply.json().get("entry", []) if e["search"]["mode"] == "match"]
    if entries:
        return entries[0]["id"]
    org = {
        "resourceType": "Organization",
        "identifier": [{"system": BSNR_SYSTEM, "value": PRACTICE_BSNR}],
        "name": "Praxis 721234500",
        "address": [{"postalCode": "10115", "city": "Berlin"}],
    }
    created = admin.post("Organization", json=org)
    if created.status_code == 409:  # created meanwhile by another module
        return practice_organization(admin, prefix)
    assert created.status_code == 201, created.text
    return created.json()["id"]


@pytest.fixture(scope="module")
def world(server: Server) -> Iterator[World]:
    with server.client("admin") as admin:
        w = World(admin, server)
        w.organization = practice_organization(admin, w.prefix)
        w.postal = "9" + str(uuid.uuid4().int % 10**4).zfill(4)
        location = w.put(
            "Location",
            {
                "status": "active",
                "name": "Praxisräume",
                "managingOrganization": {"reference": f"Organization/{w.organization}"},
                "address": {"postalCode": w.postal, "city": "Teststadt"},
                "position": {"latitude": 52.52, "longitude": 13.405},
            },
        )
        practitioner = w.put("Practitioner", {"name": [{"family": "Fachärztin"}]})
        w.role = w.put(
            "PractitionerRole",
            {
                "active": True,
                "organization": {"reference": f"Organization/{w.organization}"},
                "practitioner": {"reference": f"Practitioner/{practitioner}"},
                "location": [{"reference": f"Location/{location}"}],
            },
        )
        yield w


@pytest.fixture(scope="module")
def third(server: Server) -> Iterator[httpx.Client]:
    with server.client("third-party") as client:
        yield client


@pytest.fixture(scope="module")
def referrer(server: Server) -> Iterator[httpx.Client]:
    with server.client("referrer") as client:
        yield client


@pytest.fixture
def clock(world: World) -> Iterator[World]:
    """Tests that move the test clock put it back."""
    try:
        yield world
    finally:
        world.clock(0)


# -- calling the operations -----------------------------------------------------------------------------
def params(*items: tuple[str, str, object]) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": n, k: v} for n, k, v in items]}


def physician(anr: str = "123456701", family: str | None = "Hausärztin") -> dict:
    practitioner: dict = {
        "resourceType": "Practitioner",
        "identifier": [{"system": ANR_SYSTEM, "value": anr}],
    }
    if family:
        practitioner["name"] = [{"family": family, "given": ["Hanna"]}]
    return practitioner


def referral_request(codings: list[dict], *extra: tuple[str, str, object], bsnr: str = PRACTICE_BSNR) -> dict:
    return params(
        *[("leistungsmerkmale", "valueCoding", c) for c in codings],
        ("bsnr", "valueIdentifier", {"system": BSNR_SYSTEM, "value": bsnr}),
        ("ueberweisenderArzt", "resource", physician()),
        *extra,
    )


def issue(referrer: httpx.Client, codings: list[dict], *extra: tuple[str, str, object]) -> str:
    """A referrer's code, hyphenated as printed."""
    reply = referrer.post("$vermittlungscode_anfordern", json=referral_request(codings, *extra))
    assert reply.status_code == 200, reply.text
    out = {p["name"]: p for p in reply.json()["parameter"]}
    return out["vermittlungscode"]["valueIdentifier"]["value"]


def issue_third(third: httpx.Client, codings: list[dict], urgency: str | None = None) -> str:
    extra = [("dringlichkeit", "valueCoding", coding(SNOMED, URGENCY[urgency]))] if urgency else []
    body = params(*[("leistungsmerkmale", "valueCoding", c) for c in codings], *extra)
    reply = third.post("$vermittlungscode_anfordern", json=body)
    assert reply.status_code == 200, reply.text
    [out] = reply.json()["parameter"]
    return out["valueIdentifier"]["value"]


def code_param(code: str) -> tuple[str, str, object]:
    return ("vermittlungscode", "valueString", code)


def search(third: httpx.Client, code: str, *extra: tuple[str, str, object]) -> httpx.Response:
    return third.post("$termine_suchen", json=params(code_param(code), *extra))


def found_slots(reply: httpx.Response, mine: set[str] | None = None) -> list[str]:
    assert reply.status_code == 200, reply.text
    bundle = reply.json()
    assert bundle["type"] == "searchset"
    ids = [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
    return [i for i in ids if mine is None or i in mine]


def book(third: httpx.Client, code: str, slot: str, **headers: str) -> httpx.Response:
    body = params(
        code_param(code), ("slotId", "valueString", slot), ("patientendaten", "resource", patient())
    )
    return third.post("$termin_buchen", json=body, headers=headers)


def call(third: httpx.Client, operation: str, code: str) -> httpx.Response:
    return third.post(f"${operation}", json=params(code_param(code)))


def status_of(third: httpx.Client, code: str) -> dict:
    reply = call(third, "vermittlungscodestatus_abrufen", code)
    assert reply.status_code == 200, reply.text
    [entry] = reply.json()["entry"]
    return entry["resource"]


# -- 4.2: referrers -------------------------------------------------------------------------------------
def test_referrer_gets_a_printable_code(world: World, referrer: httpx.Client, server: Server) -> None:
    reply = referrer.post("$vermittlungscode_anfordern", json=referral_request([world.lm()]))
    assert reply.status_code == 200, reply.text
    out = {p["name"]: p for p in reply.json()["parameter"]}
    identifier = out["vermittlungscode"]["valueIdentifier"]
    assert identifier["system"] == SYSTEM
    shown = identifier["value"]
    assert len(shown) == 14 and shown[4] == shown[9] == "-"
    assert set(shown.replace("-", "")) <= set("ABCDFGHJKLMNPQRSTUVWXYZ2456789")
    assert out["url"]["valueUrl"] == server.base_url + "/termin"
    assert (
        out["druckzeile"]["valueString"] == f"Vermittlungscode: {shown} {server.base_url}/termin Tel: 116117"
    )


def test_termin_page_needs_no_token(server: Server) -> None:
    reply = httpx.get(server.base_url + "/termin")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert "Vermittlungscode" in reply.text and "116117" in reply.text


def test_referrer_code_carries_the_referral(world: World, referrer: httpx.Client, server: Server) -> None:
    lm = world.lm()
    code = issue(
        referrer,
        [lm],
        ("dringlichkeit", "valueCoding", coding("http://hl7.org/fhir/request-priority", "routine")),
        ("patient", "resource", patient()),
        ("formular", "valueCode", "muster6"),
    )
    found = server.client("admin").get("ServiceRequest", params={"identifier": f"{SYSTEM}|{code}"})
    [sr] = [e["resource"] for e in found.json()["entry"] if e["search"]["mode"] == "match"]
    assert sr["status"] == "draft" and sr["intent"] == "order" and sr["priority"] == "routine"
    assert sr["identifier"] == [{"system": SYSTEM, "value": code.replace("-", "")}]
    assert sr["performerType"]["coding"] == [lm]
    assert sr["_priority"]["extension"][0]["valueCoding"] == coding(SNOMED, URGENCY["routine"])
    assert sr["requester"]["reference"].startswith("#")
    assert sr["subject"]["reference"].startswith("#")
    assert {"url": "urn:terminhub:formular", "valueCode": "muster6"} in sr["extension"]


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"bsnr": "021234500"}, 403, "forbidden"),
        ({"bsnr_system": "urn:other"}, 403, "forbidden"),
        ({"anr": "12345"}, 400, "invalid"),
        ({"family": None}, 400, "invalid"),
        ({"dringlichkeit": coding(SNOMED, URGENCY["asap"])}, 422, "urgency-not-allowed"),
        ({"dringlichkeit": coding("urn:other", "urgent")}, 400, "invalid"),
        (
            {"formular": "ptv11", "dringlichkeit": coding(SNOMED, URGENCY["routine"])},
            422,
            "urgency-not-allowed",
        ),
        ({"formular": "muster99"}, 400, "invalid"),
        ({"no_codings": True}, 400, "invalid"),
        ({"no_physician": True}, 400, "invalid"),
    ],
)
def test_referrer_refusals(
    world: World, referrer: httpx.Client, change: dict, status: int, error: str
) -> None:
    items: list[tuple[str, str, object]] = []
    if not change.get("no_codings"):
        items.append(("leistungsmerkmale", "valueCoding", world.lm()))
    bsnr = {"system": change.get("bsnr_system", BSNR_SYSTEM), "value": change.get("bsnr", PRACTICE_BSNR)}
    items.append(("bsnr", "valueIdentifier", bsnr))
    if not change.get("no_physician"):
        family = change.get("family", "Hausärztin")
        items.append(("ueberweisenderArzt", "resource", physician(change.get("anr", "1234567"), family)))
    if "dringlichkeit" in change:
        items.append(("dringlichkeit", "valueCoding", change["dringlichkeit"]))
    if "formular" in change:
        items.append(("formular", "valueCode", change["formular"]))
    assert_error(referrer.post("$vermittlungscode_anfordern", json=params(*items)), status, error)


def test_other_roles_may_not_request_codes(world: World, server: Server) -> None:
    for role in ("practice", "scheduling-client", "admin"):
        with server.client(role) as client:
            reply = client.post("$vermittlungscode_anfordern", json=referral_request([world.lm()]))
            assert_error(reply, 403, "forbidden")


# -- 4.3: third parties request codes -------------------------------------------------------------------
def test_third_party_code(third: httpx.Client) -> None:
    reply = third.post(
        "$vermittlungscode_anfordern",
        json=params(("leistungsmerkmale", "valueCoding", coding(FACHGEBIET, "05"))),
    )
    assert reply.status_code == 200, reply.text
    [out] = reply.json()["parameter"]
    assert out["name"] == "vermittlungscode"
    assert out["valueIdentifier"]["system"] == SYSTEM
    assert len(out["valueIdentifier"]["value"]) == 12 and "-" not in out["valueIdentifier"]["value"]
    status = status_of(third, out["valueIdentifier"]["value"])
    assert status["status"] == "draft" and status["priority"] == "urgent"
    assert "requester" not in status and "subject" not in status and "contained" not in status


@pytest.mark.parametrize("name", ["bsnr", "ueberweisenderArzt", "patient", "formular"])
def test_third_party_may_not_give_referrer_parameters(third: httpx.Client, name: str) -> None:
    extra = {
        "bsnr": ("bsnr", "valueIdentifier", {"system": BSNR_SYSTEM, "value": PRACTICE_BSNR}),
        "ueberweisenderArzt": ("ueberweisenderArzt", "resource", physician()),
        "patient": ("patient", "resource", patient()),
        "formular": ("formular", "valueCode", "muster6"),
    }[name]
    body = params(("leistungsmerkmale", "valueCoding", coding(FACHGEBIET, "05")), extra)
    assert_error(third.post("$vermittlungscode_anfordern", json=body), 400, "invalid")


def test_third_party_only_for_referral_free_services(third: httpx.Client) -> None:
    body = params(("leistungsmerkmale", "valueCoding", coding(FACHGEBIET, "01")))
    assert_error(third.post("$vermittlungscode_anfordern", json=body), 422, "business-rule")
    asap = params(
        ("leistungsmerkmale", "valueCoding", coding(FACHGEBIET, "09")),
        ("dringlichkeit", "valueCoding", coding(SNOMED, URGENCY["asap"])),
    )
    assert_error(third.post("$vermittlungscode_anfordern", json=asap), 422, "urgency-not-allowed")


# -- the whole flow -------------------------------------------------------------------------------------
def test_end_to_end(world: World, referrer: httpx.Client, third: httpx.Client, server: Server) -> None:
    lm = coding(FACHGEBIET, "01")
    schedule = world.schedule([lm])
    first, second = world.slot(schedule, 3), world.slot(schedule, 4)
    mine = {first, second}
    shown = issue(referrer, [lm])
    # The patient types the code as printed; plz narrows to this module's practice.
    reply = search(third, shown.lower(), ("plz", "valueString", world.postal[:3]))
    assert found_slots(reply, mine) == [first, second]
    bundle = reply.json()
    assert shown.replace("-", "") not in reply.text and shown not in reply.text.upper()
    for link in bundle.get("link", []):
        assert "?" not in link["url"]
    includes = [
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in bundle["entry"]
        if e["search"]["mode"] == "include"
    ]
    assert len(includes) == len(set(includes))
    assert ("Schedule", schedule) in includes and ("Organization", world.organization) in includes
    assert any(t == "Location" for t, _ in includes)

    booked = book(third, shown, first)
    assert booked.status_code == 204, booked.text
    version = status_of(third, shown)["meta"]
    assert booked.headers["etag"] == f'W/"{version["versionId"]}"'
    last_modified = parsedate_to_datetime(booked.headers["last-modified"])
    assert abs((last_modified - datetime.fromisoformat(version["lastUpdated"])).total_seconds()) < 1
    assert status_of(third, shown)["status"] == "active"

    # The practice sees the booking with the code in basedOn.
    with server.client("practice") as practice:
        reply = practice.get("Appointment", params={"based-on:identifier": f"{SYSTEM}|{shown}"})
        assert reply.status_code == 200, reply.text
        [appointment] = [e["resource"] for e in reply.json()["entry"] if e["search"]["mode"] == "match"]
        assert shown not in str(reply.json().get("link"))
    based_on = appointment["basedOn"][0]
    assert based_on["identifier"] == {"system": SYSTEM, "value": shown.replace("-", "")}
    assert based_on["reference"].startswith("ServiceRequest/")
    assert appointment["serviceType"] == [{"coding": [lm]}]
    assert appointment["_priority"]["extension"][0]["valueCoding"] == coding(SNOMED, URGENCY["urgent"])
    assert appointment["slot"] == [{"reference": f"Slot/{first}"}]
    assert appointment["status"] == "booked"
    roles = {e["url"]: e for e in appointment["extension"][0]["extension"]}
    assert roles["role"]["valueCode"] == "third-party"

    info = call(third, "buchungsinformationen_abrufen", shown)
    assert info.status_code == 200, info.text
    kinds = [e["resource"]["resourceType"] for e in info.json()["entry"]]
    assert info.json()["type"] == "collection"
    assert sorted(kinds) == ["Appointment", "Location", "Organization", "Schedule"]

    cancelled = call(third, "termin_absagen", shown)
    assert cancelled.status_code == 204, cancelled.text
    status = status_of(third, shown)
    assert status["status"] == "revoked"
    assert cancelled.headers["etag"] == f'W/"{status["meta"]["versionId"]}"'
    assert world.admin.get(f"Slot/{first}").json()["status"] == "free"
    assert world.admin.get(f"Appointment/{appointment['id']}").json()["status"] == "cancelled"

    assert found_slots(search(third, shown), mine) == [first, second]
    assert book(third, shown, second).status_code == 204
    assert status_of(third, shown)["status"] == "active"


# -- the status table -----------------------------------------------------------------------------------
def check_cells(
    third: httpx.Client, code: str, slot: str, allowed: set[str], status: str, error: str
) -> None:
    """Every operation that changes nothing or is refused, in one status."""
    if "search" in allowed:
        assert search(third, code).status_code == 200
    else:
        assert_error(search(third, code), 409, error)
    if "book" not in allowed:
        assert_error(book(third, code, slot), 409, error)
    if "cancel" not in allowed:
        assert_error(call(third, "termin_absagen", code), 409, error)
    if "info" in allowed:
        assert call(third, "buchungsinformationen_abrufen", code).status_code == 200
    else:
        outcome = assert_error(call(third, "buchungsinformationen_abrufen", code), 409, error)
        if error == "code-status":
            assert outcome["issue"][0]["diagnostics"] == status
    assert status_of(third, code)["status"] == status


def test_every_status_allows_what_the_table_says(
    world: World, referrer: httpx.Client, third: httpx.Client
) -> None:
    lm = world.lm()
    schedule = world.schedule([lm])
    a, b, c = (world.slot(schedule, d) for d in (2, 3, 4))
    code = issue(referrer, [lm])
    check_cells(third, code, c, {"search", "book"}, "draft", "code-status")
    assert book(third, code, a).status_code == 204
    check_cells(third, code, c, {"info", "cancel"}, "active", "code-status")
    assert book(third, code, a).status_code == 204  # the same Slot again: nothing changes
    assert status_of(third, code)["meta"]["versionId"] == "2"
    assert call(third, "termin_absagen", code).status_code == 204
    check_cells(third, code, c, {"search", "book"}, "revoked", "code-status")
    assert book(third, code, b).status_code == 204
    # The patient cancels the second booking: the claim is forfeit.
    assert call(third, "termin_absagen", code).status_code == 204
    check_cells(third, code, c, set(), "completed", "code-status")


def test_practice_cancellation_revokes_without_forfeit(
    world: World, referrer: httpx.Client, third: httpx.Client, server: Server
) -> None:
    lm = world.lm()
    schedule = world.schedule([lm])
    a, b, c = (world.slot(schedule, d) for d in (2, 3, 4))
    code = issue(referrer, [lm])
    assert book(third, code, a).status_code == 204
    assert call(third, "termin_absagen", code).status_code == 204
    assert book(third, code, b).status_code == 204
    appointment = [e for e in call(third, "buchungsinformationen_abrufen", code).json()["entry"]][0][
        "resource"
    ]
    with server.client("practice") as practice:
        reply = practice.put(f"Appointment/{appointment['id']}", json={**appointment, "status": "cancelled"})
        assert reply.status_code == 200, reply.text
    assert status_of(third, code)["status"] == "revoked"
    assert book(third, code, c).status_code == 204


def test_appointment_in_the_past_cannot_be_cancelled(
    world: World, referrer: httpx.Client, third: httpx.Client, clock: World
) -> None:
    lm = world.lm()
    slot = world.slot(world.schedule([lm]), 1)
    code = issue(referrer, [lm])
    assert book(third, code, slot).status_code == 204
    clock.clock(2 * DAY)
    assert_error(call(third, "termin_absagen", code), 409, "code-status")
    assert call(third, "buchungsinformationen_abrufen", code).status_code == 200


# -- urgency windows ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("urgency", "days", "acute"), [("urgent", 35, False), ("routine", 168, False), ("urgent", 14, True)]
)
def test_windows(
    world: World,
    referrer: httpx.Client,
    third: httpx.Client,
    clock: World,
    urgency: str,
    days: int,
    acute: bool,
) -> None:
    lm = coding(LEISTUNG, "pt-akutbehandlung") if acute else world.lm()
    schedule = world.schedule([lm])
    inside, outside = world.slot(schedule, days - 1), world.slot(schedule, days + 1)
    if acute:
        code = issue_third(third, [lm])
    else:
        code = issue(referrer, [lm], ("dringlichkeit", "valueCoding", coding(SNOMED, URGENCY[urgency])))
    assert found_slots(search(third, code), {inside, outside}) == [inside]
    assert_error(book(third, code, outside), 422, "slot-not-matching")
    clock.clock(days * DAY - 3600)
    assert status_of(third, code)["status"] == "draft"
    assert search(third, code).status_code == 200
    clock.clock(days * DAY + 60)
    assert status_of(third, code)["status"] == "completed"
    for reply in (
        search(third, code),
        book(third, code, inside),
        call(third, "buchungsinformationen_abrufen", code),
    ):
        assert_error(reply, 409, "code-expired")


def test_a_search_sees_a_practice_move_at_once(
    world: World, referrer: httpx.Client, third: httpx.Client
) -> None:
    """Searches read the directory through a cache, which a change of the directory drops at once."""
    old, new = "8" + world.postal[1:], "7" + world.postal[1:]
    body = {"status": "active", "name": "Zweigpraxis", "address": {"postalCode": old}}
    location = world.put("Location", body)
    schedule = world.put("Schedule", {"active": True, "actor": [{"reference": f"Location/{location}"}]})
    lm = world.lm()
    slot = world.slot(schedule, 2, serviceType=[{"coding": [lm]}])
    code = issue(referrer, [lm])
    assert found_slots(search(third, code, ("plz", "valueString", old))) == [slot]
    moved = world.admin.put(
        f"Location/{location}",
        json=body | {"id": location, "resourceType": "Location", "address": {"postalCode": new}},
    )
    assert moved.status_code == 200, moved.text
    assert found_slots(search(third, code, ("plz", "valueString", old))) == []
    assert found_slots(search(third, code, ("plz", "valueString", new))) == [slot]


def test_search_in_an_open_window_does_not_wait_for_writers(
    world: World, server: Server, referrer: httpx.Client, third: httpx.Client
) -> None:
    """Once its window is open a code's search only reads: on SQLite, which lets one writer at a time,
    searches go on while another transaction holds the write lock (the first search, which opens the
    window, writes)."""
    if server.backend != "sqlite":
        pytest.skip("PostgreSQL has no database-wide write lock")
    lm = world.lm()
    slot = world.slot(world.schedule([lm]), 2)
    code = issue(referrer, [lm])
    assert found_slots(search(third, code)) == [slot]  # opens the window
    writer = sqlite3.connect(server.database_url.split("///", 1)[1], isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        assert found_slots(search(third, code)) == [slot]
        assert time.monotonic() - started < 5  # the busy timeout is 30 s
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_window_opens_at_first_booking_and_active_code_stays(
    world: World, referrer: httpx.Client, third: httpx.Client, clock: World
) -> None:
    lm = world.lm()
    slot = world.slot(world.schedule([lm]), 40)
    code = issue(referrer, [lm])
    assert book(third, code, world.slot(world.schedule([lm]), 2)).status_code == 204
    assert_error(book(third, code, slot), 409, "code-status")
    clock.clock(36 * DAY)
    assert status_of(third, code)["status"] == "active"


# -- matching and refusals ------------------------------------------------------------------------------
def test_search_filters(world: World, referrer: httpx.Client, third: httpx.Client) -> None:
    lm = world.lm()
    plain = world.schedule([lm])
    praesenz = world.slot(plain, 2)
    video = world.slot(plain, 3, appointmentType={"coding": [coding(TERMINTYP, "video")]})
    practice_only = world.slot(plain, 4, extension=[{"url": BOOKABLE_BY, "valueCode": "practice"}])
    routine_only = world.slot(
        plain, 5, extension=[{"url": BOOKABLE_URGENCY, "valueCoding": coding(SNOMED, URGENCY["routine"])}]
    )
    urgent_ok = world.slot(
        plain, 6, extension=[{"url": BOOKABLE_URGENCY, "valueCoding": coding(SNOMED, URGENCY["urgent"])}]
    )
    inactive = world.slot(world.schedule([lm], active=False), 7)
    other = world.slot(world.schedule([world.lm()]), 8)
    code = issue(referrer, [lm])
    assert found_slots(search(third, code)) == [praesenz, video, urgent_ok]
    assert found_slots(search(third, code, ("termintyp", "valueCode", "video"))) == [video]
    assert found_slots(search(third, code, ("plz", "valueString", "0"))) == [video]
    assert found_slots(search(third, code, ("plz", "valueString", world.postal))) == [
        praesenz,
        video,
        urgent_ok,
    ]
    assert found_slots(search(third, code, ("near", "valueString", "52.53|13.41|5|km"))) == [
        praesenz,
        video,
        urgent_ok,
    ]
    assert found_slots(search(third, code, ("near", "valueString", "48.1|11.5|5000|m"))) == [video]
    von = fhir_time(at(2.5))
    bis = fhir_time(at(5.5))
    window = search(third, code, ("von", "valueDateTime", von), ("bis", "valueDateTime", bis))
    assert found_slots(window) == [video]
    paged = [
        found_slots(search(third, code, ("_count", "valueInteger", 1), ("page", "valueInteger", n)))
        for n in (1, 2, 3, 4)
    ]
    assert paged == [[praesenz], [video], [urgent_ok], []]
    assert_error(search(third, code, ("near", "valueString", "52.5|13.4")), 400, "invalid")
    assert_error(search(third, code, ("termintyp", "valueCode", "telefon")), 400, "invalid")
    assert_error(search(third, code, ("von", "valueDateTime", "2030-01-01T10:00:00")), 400, "invalid")
    for slot in (practice_only, routine_only, inactive, other):
        assert_error(book(third, code, slot), 422, "slot-not-matching")
    assert_error(book(third, code, "no-such-slot"), 404, "not-found")
    assert status_of(third, code)["status"] == "draft"


def test_near_needs_a_position(world: World, referrer: httpx.Client, third: httpx.Client) -> None:
    lm = world.lm()
    nowhere = world.put(
        "Location",
        {
            "status": "active",
            "managingOrganization": {"reference": f"Organization/{world.organization}"},
            "address": {"postalCode": world.postal},
        },
    )
    schedule = world.put(
        "Schedule",
        {"active": True, "actor": [{"reference": f"Location/{nowhere}"}], "serviceType": [{"coding": [lm]}]},
    )
    slot = world.slot(schedule, 2)
    code = issue(referrer, [lm])
    assert found_slots(search(third, code, ("plz", "valueString", world.postal))) == [slot]
    assert found_slots(search(third, code, ("near", "valueString", "52.52|13.405|100000|km"))) == []


def test_a_practice_that_moves_is_found_at_its_new_place_at_once(
    world: World, referrer: httpx.Client, third: httpx.Client
) -> None:
    """Searches keep the directory they read, but not a moment past its next change."""
    lm = world.lm()
    location = {"status": "active", "address": {"postalCode": "20095"}}
    moving = world.put("Location", location)
    schedule = world.put(
        "Schedule",
        {"active": True, "actor": [{"reference": f"Location/{moving}"}], "serviceType": [{"coding": [lm]}]},
    )
    slot = world.slot(schedule, 2)
    code = issue(referrer, [lm])
    assert found_slots(search(third, code, ("plz", "valueString", "20"))) == [slot]
    moved = {"resourceType": "Location", "id": moving, **location, "address": {"postalCode": "80331"}}
    assert world.admin.put(f"Location/{moving}", json=moved).status_code == 200
    assert found_slots(search(third, code, ("plz", "valueString", "20"))) == []
    assert found_slots(search(third, code, ("plz", "valueString", "80"))) == [slot]


def test_code_errors(world: World, third: httpx.Client) -> None:
    for operation in (
        "termine_suchen",
        "termin_absagen",
        "buchungsinformationen_abrufen",
        "vermittlungscodestatus_abrufen",
    ):
        assert_error(call(third, operation, "ABC"), 400, "code-malformed")
        assert_error(call(third, operation, "0000-0000-0000"), 400, "code-malformed")
        assert_error(call(third, operation, "AAAA-AAAA-AAA2"), 404, "code-unknown")
        wrong = params(
            ("vermittlungscode", "valueIdentifier", {"system": "urn:other", "value": "AAAAAAAAAAA2"})
        )
        assert_error(third.post(f"${operation}", json=wrong), 400, "invalid")
        assert_error(third.post(f"${operation}", json=params()), 400, "invalid")
    assert_error(book(third, "AAAA-AAAA-AAA2", "x"), 404, "code-unknown")
    by_identifier = params(
        ("vermittlungscode", "valueIdentifier", {"system": SYSTEM, "value": "AAAA-AAAA-AAA2"})
    )
    assert_error(third.post("$vermittlungscodestatus_abrufen", json=by_identifier), 404, "code-unknown")


def test_only_third_parties_use_codes(world: World, referrer: httpx.Client, server: Server) -> None:
    code = issue(referrer, [world.lm()])
    for role in ("referrer", "practice", "scheduling-client", "admin"):
        with server.client(role) as client:
            for operation in ("termine_suchen", "vermittlungscodestatus_abrufen", "termin_absagen"):
                assert_error(call(client, operation, code), 403, "forbidden")


def test_slot_taken_by_another_booking(world: World, referrer: httpx.Client, third: httpx.Client) -> None:
    lm = world.lm()
    slot = world.slot(world.schedule([lm]), 2)
    first, second = issue(referrer, [lm]), issue(referrer, [lm])
    assert book(third, first, slot).status_code == 204
    assert found_slots(search(third, second)) == []
    assert_error(book(third, second, slot), 409, "slot-unavailable")
    assert status_of(third, second)["status"] == "draft"


def test_race_of_two_third_parties(world: World, referrer: httpx.Client, server: Server) -> None:
    lm = world.lm()
    slot = world.slot(world.schedule([lm]), 2)
    codes = [issue(referrer, [lm]) for _ in range(2)]
    with fresh_client(server, "third-party") as (one, _), fresh_client(server, "third-party") as (two, _):
        with ThreadPoolExecutor(2) as pool:
            replies = list(
                pool.map(lambda pair: book(pair[0], pair[1], slot), [(one, codes[0]), (two, codes[1])])
            )
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [204, 409], [r.text for r in replies]
        loser = next(r for r in replies if r.status_code == 409)
        assert_error(loser, 409, "slot-unavailable")
        assert sorted(status_of(one, c)["status"] for c in codes) == ["active", "draft"]


def test_idempotency_keys(world: World, referrer: httpx.Client, third: httpx.Client) -> None:
    lm = world.lm()
    key = uuid.uuid4().hex
    body = referral_request([lm])
    first = referrer.post("$vermittlungscode_anfordern", json=body, headers={"Idempotency-Key": key})
    again = referrer.post("$vermittlungscode_anfordern", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    other = referral_request([world.lm()])
    assert_error(
        referrer.post("$vermittlungscode_anfordern", json=other, headers={"Idempotency-Key": key}),
        422,
        "business-rule",
    )
    code = first.json()["parameter"][0]["valueIdentifier"]["value"]
    a, b = world.slot(world.schedule([lm]), 2), world.slot(world.schedule([lm]), 3)
    body = params(code_param(code), ("slotId", "valueString", a), ("patientendaten", "resource", patient()))
    booked = third.post("$termin_buchen", json=body, headers={"Idempotency-Key": key})
    repeat = third.post("$termin_buchen", json=body, headers={"Idempotency-Key": key})
    assert booked.status_code == repeat.status_code == 204
    assert booked.headers["etag"] == repeat.headers["etag"]
    assert status_of(third, code)["meta"]["versionId"] == "2"
    cancel_key = uuid.uuid4().hex
    for _ in range(2):
        reply = third.post(
            "$termin_absagen", json=params(code_param(code)), headers={"Idempotency-Key": cancel_key}
        )
        assert reply.status_code == 204, reply.text
    assert status_of(third, code)["status"] == "revoked"
    assert book(third, code, b).status_code == 204


# -- XML ------------------------------------------------------------------------------------------------
def xml_call(client: httpx.Client, operation: str, body: dict) -> httpx.Response:
    return client.post(f"${operation}", content=resource_to_xml(body), headers=XML)


def from_xml(reply: httpx.Response) -> dict:
    assert reply.headers["content-type"] == XML_CONTENT_TYPE
    return parse_resource_xml(reply.content)


def test_every_operation_speaks_xml(world: World, referrer: httpx.Client, third: httpx.Client) -> None:
    lm = world.lm()
    slot = world.slot(world.schedule([lm]), 2)
    hand_written = (
        f'<Parameters xmlns="{FHIR_NS}"><parameter><name value="leistungsmerkmale"/>'
        f'<valueCoding><system value="{lm["system"]}"/><code value="{lm["code"]}"/></valueCoding></parameter>'
        f'<parameter><name value="bsnr"/><valueIdentifier><system value="{BSNR_SYSTEM}"/>'
        f'<value value="{PRACTICE_BSNR}"/></valueIdentifier></parameter>'
        f'<parameter><name value="ueberweisenderArzt"/><resource><Practitioner><identifier>'
        f'<system value="{ANR_SYSTEM}"/><value value="1234567"/></identifier><name><family value="Arzt"/>'
        "</name></Practitioner></resource></parameter></Parameters>"
    )
    reply = referrer.post("$vermittlungscode_anfordern", content=hand_written, headers=XML)
    assert reply.status_code == 200, reply.text
    out = {p["name"]: p for p in from_xml(reply)["parameter"]}
    code = out["vermittlungscode"]["valueIdentifier"]["value"]
    assert out["druckzeile"]["valueString"].startswith(f"Vermittlungscode: {code} ")

    by_identifier = ("vermittlungscode", "valueIdentifier", {"system": SYSTEM, "value": code})
    reply = xml_call(third, "termine_suchen", params(by_identifier))
    assert reply.status_code == 200, reply.text
    bundle = from_xml(reply)
    assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"] == [slot]

    booking = params(
        by_identifier, ("slotId", "valueString", slot), ("patientendaten", "resource", patient())
    )
    reply = xml_call(third, "termin_buchen", booking)
    assert reply.status_code == 204, reply.text
    assert reply.headers["etag"] == 'W/"2"'

    reply = xml_call(third, "buchungsinformationen_abrufen", params(by_identifier))
    assert reply.status_code == 200, reply.text
    assert from_xml(reply)["entry"][0]["resource"]["resourceType"] == "Appointment"

    reply = xml_call(third, "vermittlungscodestatus_abrufen", params(by_identifier))
    assert reply.status_code == 200, reply.text
    assert from_xml(reply)["entry"][0]["resource"]["status"] == "active"

    reply = xml_call(third, "termin_absagen", params(by_identifier))
    assert reply.status_code == 204, reply.text

    third_code = xml_call(
        third,
        "vermittlungscode_anfordern",
        params(("leistungsmerkmale", "valueCoding", coding(FACHGEBIET, "09"))),
    )
    assert third_code.status_code == 200, third_code.text
    assert "-" not in from_xml(third_code)["parameter"][0]["valueIdentifier"]["value"]

    assert_xml_error(xml_call(third, "termine_suchen", params(code_param("ABC"))), 400, "code-malformed")
    assert_xml_error(xml_call(third, "termin_absagen", params(by_identifier)), 409, "code-status")


def test_operations_are_declared(server: Server) -> None:
    statement = httpx.get(server.fhir + "/metadata", headers={"Accept": "application/fhir+json"}).json()
    declared = {op["name"]: op["definition"] for op in statement["rest"][0].get("operation", [])}
    kbv = "https://fhir.kbv.de/OperationDefinition/"
    assert (
        declared["vermittlungscode_anfordern"]
        == kbv + "KBV_OD_116117_TERMINSERVICE_VCA_Vermittlungscode_Request"
    )
    assert declared["termin_absagen"] == kbv + "KBV_OD_KV_DIGITAL_TS_DRITTE_Appointment_Cancellation"
    for name in (
        "termine_suchen",
        "termin_buchen",
        "buchungsinformationen_abrufen",
        "vermittlungscodestatus_abrufen",
    ):
        assert declared[name] == f"{server.base_url}/fhir/OperationDefinition/{name}"
        definition = httpx.get(f"{server.fhir}/OperationDefinition/{name}")
        assert definition.status_code == 200


# -- secrecy: failed look-ups ---------------------------------------------------------------------------
def test_failed_lookups_are_limited(world: World, referrer: httpx.Client, server: Server) -> None:
    code = issue(referrer, [world.lm()])
    with fresh_client(server, "third-party") as (client, _):

        def fail(_n: int) -> int:
            return call(client, "vermittlungscodestatus_abrufen", "ABC").status_code

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(fail, range(600)))
        assert set(results) == {400}
        for reply in (
            call(client, "vermittlungscodestatus_abrufen", code),
            call(client, "termine_suchen", "ABC"),
        ):
            assert_error(reply, 429, "rate-limited")
            assert reply.headers["retry-after"].isdigit() and 1 <= int(reply.headers["retry-after"]) <= 60
    assert status_of(server.client("third-party"), code)["status"] == "draft"
