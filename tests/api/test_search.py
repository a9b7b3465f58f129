"""FHIR search over real HTTP, on SQLite and PostgreSQL (contract 2: Search, Includes, Paging; 3.1).

Every test module builds its own small directory and schedule with ids and identifiers under a fresh
prefix, and narrows each search to them with `identifier=<its system>|`, so tests never see each other's
data on the shared session server.
"""

from __future__ import annotations

import random
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from terminhub.fhir.search_request import encode_cursor
from tests.support.server import FHIR_XML, Server

SPECIALTY = "http://ihe-d.de/CodeSystems/AerztlicheFachrichtungen"
SERVICE = "urn:test:leistungsmerkmal"
CATEGORY = "http://terminology.hl7.org/CodeSystem/service-category"
BSNR = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"
KVNR = "http://fhir.de/sid/gkv/kvid-10"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
FHIR_NS = {"f": "http://hl7.org/fhir"}

Params = dict[str, str] | list[tuple[str, str]]


def coding(system: str | None, code: str) -> dict:
    return {"coding": [{"system": system, "code": code} if system else {"code": code}]}


def as_list(params: Params) -> list[tuple[str, str]]:
    return list(params.items()) if isinstance(params, dict) else list(params)


def matches(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def included(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "include"]


def outcomes(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]


def link(bundle: dict, relation: str) -> str | None:
    return next((li["url"] for li in bundle.get("link", []) if li["relation"] == relation), None)


@dataclass
class Dataset:
    """One module's resources: ids are `<prefix>-<name>`, identifiers `<system>|<name>`."""

    server: Server
    http: httpx.Client
    prefix: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:12])
    created: dict[str, dict] = field(default_factory=dict)
    bsnr: list[str] = field(default_factory=list)
    kvnr: str = ""
    lanr: str = ""

    @property
    def system(self) -> str:
        return f"urn:test:{self.prefix}"

    def id(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def ref(self, resource_type: str, name: str) -> dict:
        return {"reference": f"{resource_type}/{self.id(name)}"}

    def short(self, resource_id: str) -> str:
        return resource_id.removeprefix(self.prefix + "-")

    @property
    def aside(self) -> str:
        """The identifier system of resources made by single tests, kept out of the shared searches."""
        return f"{self.system}:aside"

    def put(self, resource_type: str, name: str, body: dict, *, aside: bool = False) -> dict:
        """Create (or replace) a resource with a chosen id; it carries the identifier `<system>|<name>`."""
        resource = {"resourceType": resource_type, "id": self.id(name), **body}
        system = self.aside if aside else self.system
        resource["identifier"] = [*resource.get("identifier", []), {"system": system, "value": name}]
        reply = self.http.put(f"/{resource_type}/{self.id(name)}", json=resource)
        assert reply.status_code in (200, 201), reply.text
        self.created[name] = reply.json()
        return reply.json()

    def scoped(self, params: Params, scoped: bool = True) -> list[tuple[str, str]]:
        return as_list(params) + ([("identifier", f"{self.system}|")] if scoped else [])

    def search(
        self,
        resource_type: str,
        params: Params = (),
        *,
        scoped: bool = True,
        headers: dict[str, str] | None = None,
    ) -> dict:
        reply = self.http.get(f"/{resource_type}", params=self.scoped(params, scoped), headers=headers)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def find(self, resource_type: str, params: Params = (), *, scoped: bool = True) -> set[str]:
        """Short names of the matches (the first page only: datasets are small)."""
        return {self.short(r["id"]) for r in matches(self.search(resource_type, params, scoped=scoped))}

    def ordered(self, resource_type: str, params: Params = ()) -> list[str]:
        return [self.short(r["id"]) for r in matches(self.search(resource_type, params))]

    def follow(self, url: str) -> dict:
        reply = self.http.get(url)
        assert reply.status_code == 200, reply.text
        return reply.json()


def slot_body(data: Dataset, schedule_name: str, start: str, status: str = "free", **extra: object) -> dict:
    """A 15-minute Slot of one of the module's Schedules; `extra` adds or replaces elements."""
    end = datetime.fromisoformat(start.replace("Z", "+00:00")) + timedelta(minutes=15)
    return {
        "schedule": data.ref("Schedule", schedule_name),
        "status": status,
        "start": start,
        "end": end.isoformat().replace("+00:00", "Z"),
        **extra,
    }


def _build(data: Dataset) -> None:
    """The directory and schedule every test of this module searches."""
    rng = random.Random()
    data.bsnr = [f"{rng.randrange(10**9):09d}" for _ in range(2)]
    data.kvnr = f"{rng.choice('ABCDEFGHIJ')}{rng.randrange(10**9):09d}"
    data.lanr = f"{rng.randrange(10**7):07d}"
    put = data.put
    put(
        "Organization",
        "org1",
        {
            "name": "Ärztezentrum Süd",
            "alias": ["MVZ Isartor"],
            "identifier": [{"system": BSNR, "value": data.bsnr[0]}],
            "address": [{"postalCode": "80331", "city": "München"}],
        },
    )
    put(
        "Organization",
        "org2",
        {
            "name": "Praxis Dr. Meier",
            "identifier": [{"system": BSNR, "value": data.bsnr[1]}],
            "address": [{"postalCode": "10115", "city": "Berlin"}],
        },
    )
    put(
        "Location",
        "loc1",
        {
            "name": "Standort Marienplatz",
            "managingOrganization": data.ref("Organization", "org1"),
            "address": {"postalCode": "80331", "city": "München"},
            "position": {"latitude": 48.1374, "longitude": 11.5755},
        },
    )
    put(
        "Location",
        "loc2",
        {
            "name": "Filiale Schwabing",
            "managingOrganization": data.ref("Organization", "org1"),
            "address": {"postalCode": "80801", "city": "Muenchen"},
            "position": {"latitude": 48.1600, "longitude": 11.5850},
        },
    )  # 2.6 km north
    put(
        "Location",
        "loc3",
        {
            "name": "Praxis Mitte",
            "managingOrganization": data.ref("Organization", "org2"),
            "address": {"postalCode": "10115", "city": "Berlin"},
            "position": {"latitude": 52.5200, "longitude": 13.4050},
        },
    )
    put(
        "Practitioner",
        "prac1",
        {
            "name": [{"family": "Müller", "given": ["Anna"]}],
            "identifier": [{"system": ANR, "value": data.lanr + "01"}],
        },
    )
    put("Practitioner", "prac2", {"name": [{"family": "Schmidt", "given": ["Jörg"]}]})
    put(
        "HealthcareService",
        "hs1",
        {
            "active": True,
            "name": "Impfsprechstunde",
            "providedBy": data.ref("Organization", "org1"),
            "location": [data.ref("Location", "loc1"), data.ref("Location", "loc2")],
            "category": [coding(CATEGORY, "17")],
            "type": [coding(SERVICE, "vaccination")],
            "specialty": [coding(SPECIALTY, "ALLG")],
        },
    )
    put(
        "HealthcareService",
        "hs2",
        {
            "name": "Vorsorge Kinder",
            "providedBy": data.ref("Organization", "org2"),
            "location": [data.ref("Location", "loc3")],
            "category": [coding(CATEGORY, "35")],
            "type": [coding(SERVICE, "checkup")],
            "specialty": [coding(SPECIALTY, "KIND")],
        },
    )
    put(
        "HealthcareService",
        "hs3",
        {
            "active": False,
            "name": "Impfung (alt)",
            "providedBy": data.ref("Organization", "org1"),
            "type": [coding(SERVICE, "vaccination")],
        },
    )
    put(
        "PractitionerRole",
        "role1",
        {
            "active": True,
            "practitioner": data.ref("Practitioner", "prac1"),
            "organization": data.ref("Organization", "org1"),
            "location": [data.ref("Location", "loc1")],
            "specialty": [coding(SPECIALTY, "ALLG")],
            "healthcareService": [data.ref("HealthcareService", "hs1")],
        },
    )
    put(
        "PractitionerRole",
        "role2",
        {
            "active": False,
            "practitioner": data.ref("Practitioner", "prac2"),
            "organization": data.ref("Organization", "org2"),
            "location": [data.ref("Location", "loc3")],
            "specialty": [coding(SPECIALTY, "KIND")],
        },
    )
    put(
        "Schedule",
        "schedA",
        {
            "active": True,
            "actor": [data.ref("PractitionerRole", "role1"), data.ref("Location", "loc1")],
            "specialty": [coding(SPECIALTY, "ALLG")],
            "serviceType": [coding(SERVICE, "vaccination")],
            "planningHorizon": {"start": "2031-03-01", "end": "2031-03-31"},
        },
    )
    put(
        "Schedule",
        "schedB",
        {
            "actor": [data.ref("Practitioner", "prac2"), data.ref("HealthcareService", "hs2")],
            "specialty": [coding(SPECIALTY, "KIND")],
            "serviceType": [coding(None, "walk-in")],
            "planningHorizon": {"start": "2031-04-01", "end": "2031-06-30"},
        },
    )
    put(
        "Schedule",
        "schedC",
        {
            "active": False,
            "actor": [data.ref("Location", "loc2")],
            "specialty": [coding(SPECIALTY, "ALLG")],
            "planningHorizon": {"start": "2031-07-01"},
        },
    )
    schedule_a_with_identifier = {
        **data.ref("Schedule", "schedA"),
        "identifier": {"system": data.system, "value": "schedA"},
    }
    put(
        "Slot",
        "s1",
        slot_body(data, "schedA", "2031-03-10T09:00:00+01:00", "free", schedule=schedule_a_with_identifier),
    )
    put("Slot", "s2", slot_body(data, "schedA", "2031-03-10T09:15:00+01:00", "busy"))
    put(
        "Slot",
        "s3",
        slot_body(data, "schedA", "2031-03-11T08:00:00Z", "free", specialty=[coding(SPECIALTY, "INNE")]),
    )
    put("Slot", "s4", slot_body(data, "schedA", "2031-03-12T23:30:00Z", "busy-unavailable"))  # 13th in Berlin
    put("Slot", "s5", slot_body(data, "schedB", "2031-04-02T10:00:00+02:00", "free"))
    put(
        "Slot",
        "s6",
        slot_body(
            data, "schedB", "2031-04-03T10:00:00+02:00", "free", serviceType=[coding(SERVICE, "vaccination")]
        ),
    )
    put("Slot", "s7", slot_body(data, "schedC", "2031-07-02T08:00:00+02:00", "free"))
    put(
        "Patient",
        "pat1",
        {
            "name": [{"family": "Größer", "given": ["Élise"]}],
            "birthDate": "1980-05-17",
            "identifier": [{"system": KVNR, "value": data.kvnr}],
        },
    )
    put("Patient", "pat2", {"name": [{"family": "Grossmann", "given": ["Eli"]}], "birthDate": "1992-11-03"})
    put(
        "ServiceRequest",
        "sr1",
        {"status": "active", "intent": "order", "subject": data.ref("Patient", "pat1")},
    )
    put(
        "ServiceRequest",
        "sr2",
        {"status": "completed", "intent": "order", "subject": data.ref("Patient", "pat2")},
    )
    s2, s4 = data.created["s2"], data.created["s4"]
    put(
        "Appointment",
        "appt1",
        {
            "status": "booked",
            "slot": [data.ref("Slot", "s2")],
            "start": s2["start"],
            "end": s2["end"],
            "serviceType": [coding(SERVICE, "vaccination")],
            "basedOn": [data.ref("ServiceRequest", "sr1")],
            "participant": [
                {
                    "actor": {
                        **data.ref("Patient", "pat1"),
                        "identifier": {"system": KVNR, "value": data.kvnr},
                    },
                    "status": "accepted",
                },
                {"actor": data.ref("Practitioner", "prac1"), "status": "accepted"},
                {"actor": data.ref("PractitionerRole", "role1"), "status": "accepted"},
                {"actor": data.ref("Location", "loc1"), "status": "accepted"},
            ],
        },
    )
    put(
        "Appointment",
        "appt2",
        {
            "status": "cancelled",
            "slot": [data.ref("Slot", "s4")],
            "start": s4["start"],
            "end": s4["end"],
            "serviceType": [coding(SERVICE, "checkup")],
            "participant": [
                {"actor": data.ref("Patient", "pat2"), "status": "accepted"},
                {"actor": data.ref("Practitioner", "prac2"), "status": "declined"},
            ],
        },
    )
    put(
        "AppointmentResponse",
        "resp1",
        {
            "appointment": data.ref("Appointment", "appt1"),
            "actor": data.ref("Practitioner", "prac1"),
            "participantStatus": "accepted",
        },
    )


@pytest.fixture(scope="module")
def data(server: Server) -> Iterator[Dataset]:
    with server.client("admin") as http:
        dataset = Dataset(server, http)
        _build(dataset)
        yield dataset


ALL_SLOTS = {"s1", "s2", "s3", "s4", "s5", "s6", "s7"}


# --- Slot ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["Type/id", "id", "absolute URL"])
def test_slot_schedule_reference_forms(data: Dataset, form: str) -> None:
    """`schedule` takes `Schedule/id`, a bare id and the absolute URL of the Schedule."""
    value = {
        "Type/id": f"Schedule/{data.id('schedB')}",
        "id": data.id("schedB"),
        "absolute URL": f"{data.server.fhir}/Schedule/{data.id('schedB')}",
    }[form]
    assert data.find("Slot", {"schedule": value}) == {"s5", "s6"}


def test_slot_schedule_unknown_reference_matches_nothing(data: Dataset) -> None:
    assert data.find("Slot", {"schedule": "Schedule/does-not-exist"}) == set()
    assert data.find("Slot", {"schedule": f"Location/{data.id('schedA')}"}) == set()


def test_slot_schedule_by_identifier_of_the_reference(data: Dataset) -> None:
    """`schedule:identifier` matches the identifier written in the Slot's reference."""
    assert data.find("Slot", {"schedule:identifier": f"{data.system}|schedA"}) == {"s1"}
    assert data.find("Slot", {"schedule:identifier": f"{data.system}|schedB"}) == set()


def test_slot_status(data: Dataset) -> None:
    assert data.find("Slot", {"status": "free"}) == {"s1", "s3", "s5", "s6", "s7"}
    assert data.find("Slot", {"status": "busy-tentative"}) == set()


def test_slot_status_comma_values_are_ored(data: Dataset) -> None:
    assert data.find("Slot", {"status": "busy,busy-unavailable"}) == {"s2", "s4"}


def test_slot_status_not(data: Dataset) -> None:
    """`:not` returns the resources without that code."""
    assert data.find("Slot", {"status:not": "free"}) == {"s2", "s4"}
    assert data.find("Slot", {"status:not": "free,busy"}) == {"s4"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2031-03-10", {"s1", "s2"}),
        ("eq2031-03-10", {"s1", "s2"}),
        ("ne2031-03-10", {"s3", "s4", "s5", "s6", "s7"}),
        ("lt2031-03-11", {"s1", "s2"}),
        ("le2031-03-11", {"s1", "s2", "s3"}),
        ("gt2031-03-11", {"s4", "s5", "s6", "s7"}),
        ("ge2031-03-11", {"s3", "s4", "s5", "s6", "s7"}),
        ("2031-03", {"s1", "s2", "s3", "s4"}),
        ("2031", ALL_SLOTS),
        ("eq2031-03-11T09:00:00+01:00", {"s3"}),
        ("2031-04-02T08:00:00Z", {"s5"}),
        ("ne2031-03-10T08:00:00Z", ALL_SLOTS - {"s1"}),
        ("lt2031-03-10T08:15:00Z", {"s1"}),
        ("le2031-03-10T08:15:00Z", {"s1", "s2"}),
        ("gt2031-03-10T09:15:00+01:00", {"s3", "s4", "s5", "s6", "s7"}),
        ("ge2031-03-10T09:15:00+01:00", {"s2", "s3", "s4", "s5", "s6", "s7"}),
        ("2030-12-31", set()),
    ],
)
def test_slot_start_prefixes(data: Dataset, value: str, expected: set[str]) -> None:
    """Date prefixes eq ne lt le gt ge compare the Slot's start as an instant, whatever its offset."""
    assert data.find("Slot", {"start": value}) == expected


def test_slot_start_dates_are_days_in_berlin(data: Dataset) -> None:
    """A date-only value is a day in TERMINHUB_TIMEZONE: 23:30Z on the 12th is the 13th in Berlin."""
    assert data.find("Slot", {"start": "2031-03-13"}) == {"s4"}
    assert data.find("Slot", {"start": "2031-03-12"}) == set()


def test_slot_start_range_by_two_criteria(data: Dataset) -> None:
    """Repeating a parameter ANDs its conditions: a window."""
    assert data.find("Slot", [("start", "ge2031-03-10"), ("start", "lt2031-03-12")]) == {"s1", "s2", "s3"}


def test_slot_start_without_offset_is_refused(data: Dataset) -> None:
    reply = data.http.get("/Slot", params={"start": "ge2031-03-10T09:00:00"})
    assert reply.status_code == 400
    assert reply.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{system}|s3", {"s3"}),
        ("s3", {"s3"}),
        ("{system}|", ALL_SLOTS),
        ("|s3", set()),
        ("urn:test:other|s3", set()),
        ("{system}|s1,{system}|s5", {"s1", "s5"}),
    ],
)
def test_slot_identifier_token_forms(data: Dataset, value: str, expected: set[str]) -> None:
    """Token forms `system|code`, `code`, `system|` and `|code` (no system)."""
    assert data.find("Slot", {"identifier": value.format(system=data.system)}) == expected


def test_slot_specialty_own_or_inherited_from_schedule(data: Dataset) -> None:
    """A Slot offers its own codings, or where it has none, its Schedule's (3.1)."""
    assert data.find("Slot", {"specialty": f"{SPECIALTY}|ALLG"}) == {"s1", "s2", "s4", "s7"}
    assert data.find("Slot", {"specialty": f"{SPECIALTY}|INNE"}) == {"s3"}
    assert data.find("Slot", {"specialty": f"{SPECIALTY}|KIND"}) == {"s5"}
    assert data.find("Slot", {"specialty": f"{SPECIALTY}|CHIR"}) == set()


def test_slot_service_type_own_or_inherited_from_schedule(data: Dataset) -> None:
    """s3 has an own specialty, so it offers no service type; s6 has an own service type and no specialty."""
    assert data.find("Slot", {"service-type": f"{SERVICE}|vaccination"}) == {"s1", "s2", "s4", "s6"}
    assert data.find("Slot", {"service-type": "|walk-in"}) == {"s5"}
    assert data.find("Slot", {"specialty": f"{SPECIALTY}|KIND", "service-type": "walk-in"}) == {"s5"}


def test_slot_specialty_needs_the_same_system(data: Dataset) -> None:
    assert data.find("Slot", {"specialty": "urn:test:other|ALLG"}) == set()
    assert data.find("Slot", {"specialty": f"{SPECIALTY}|"}) == ALL_SLOTS - {"s6"}


def test_slot_specialty_follows_changes_of_the_schedule(data: Dataset) -> None:
    """Changing a Schedule changes what its Slots offer, in searches too."""
    schedule = {"actor": [data.ref("Location", "loc1")], "specialty": [coding(SPECIALTY, "HNO")]}
    data.put("Schedule", "schedChanging", schedule, aside=True)
    data.put("Slot", "sChanging", slot_body(data, "schedChanging", "2031-05-05T10:00:00+02:00"), aside=True)
    only = {"identifier": f"{data.aside}|sChanging"}
    assert data.find("Slot", {**only, "specialty": f"{SPECIALTY}|HNO"}, scoped=False) == {"sChanging"}
    data.put("Schedule", "schedChanging", {**schedule, "specialty": [coding(SPECIALTY, "AUGE")]}, aside=True)
    assert data.find("Slot", {**only, "specialty": f"{SPECIALTY}|HNO"}, scoped=False) == set()
    assert data.find("Slot", {**only, "specialty": f"{SPECIALTY}|AUGE"}, scoped=False) == {"sChanging"}


def test_slot_of_inactive_schedule_is_still_found(data: Dataset) -> None:
    """Plain Slot searches are not filtered by the Schedule's `active` (3.1)."""
    assert "s7" in data.find("Slot", {"status": "free"})


def test_slot_specialty_not(data: Dataset) -> None:
    assert data.find("Slot", {"specialty:not": f"{SPECIALTY}|ALLG"}) == {"s3", "s5", "s6"}


def test_several_parameters_are_anded(data: Dataset) -> None:
    params = {"schedule": f"Schedule/{data.id('schedA')}", "status": "free", "start": "ge2031-03-11"}
    assert data.find("Slot", params) == {"s3"}


# --- Schedule ------------------------------------------------------------------------------------------


def test_schedule_without_active_returns_active_or_absent(data: Dataset) -> None:
    assert data.find("Schedule") == {"schedA", "schedB"}


def test_schedule_active(data: Dataset) -> None:
    assert data.find("Schedule", {"active": "true"}) == {"schedA"}
    assert data.find("Schedule", {"active": "false"}) == {"schedC"}
    assert data.find("Schedule", {"active": "true,false"}) == {"schedA", "schedC"}


def test_schedule_active_missing(data: Dataset) -> None:
    """`:missing=true` finds resources without a value, `:missing=false` those with one."""
    assert data.find("Schedule", {"active:missing": "true"}) == {"schedB"}
    assert data.find("Schedule", {"active:missing": "false"}) == {"schedA", "schedC"}


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("PractitionerRole/{role1}", {"schedA"}),
        ("Location/{loc1}", {"schedA"}),
        ("{loc1}", {"schedA"}),
        ("Practitioner/{prac2}", {"schedB"}),
        ("HealthcareService/{hs2}", {"schedB"}),
        ("Practitioner/{prac1}", set()),
    ],
)
def test_schedule_actor(data: Dataset, reference: str, expected: set[str]) -> None:
    value = reference.format(**{n: data.id(n) for n in ("role1", "loc1", "prac1", "prac2", "hs2")})
    assert data.find("Schedule", {"actor": value}) == expected


def test_schedule_actor_of_inactive_schedule_with_active_false(data: Dataset) -> None:
    assert data.find("Schedule", {"actor": f"Location/{data.id('loc2')}"}) == set()
    assert data.find("Schedule", {"actor": f"Location/{data.id('loc2')}", "active": "false"}) == {"schedC"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2031-03", {"schedA"}),
        ("eq2031", {"schedA", "schedB"}),
        ("ne2031-03", {"schedB"}),
        ("lt2031-03-15", {"schedA"}),
        ("le2031-03-15", {"schedA"}),
        ("lt2031-04-15", {"schedA", "schedB"}),
        ("gt2031-04-15", {"schedB"}),
        ("ge2031-03-15", {"schedA", "schedB"}),
        ("ge2031-07-15", set()),
        ("gt2031-03-15T12:00:00+01:00", {"schedA", "schedB"}),
    ],
)
def test_schedule_date_prefixes_on_the_planning_horizon(
    data: Dataset, value: str, expected: set[str]
) -> None:
    """`date` compares the planningHorizon period with R4 range semantics."""
    assert data.find("Schedule", {"date": value}) == expected


def test_schedule_date_open_ended_horizon(data: Dataset) -> None:
    assert data.find("Schedule", {"date": "ge2031-08-01", "active": "false"}) == {"schedC"}
    assert data.find("Schedule", {"date": "lt2031-07-01", "active": "false"}) == set()


def test_schedule_service_type_and_specialty(data: Dataset) -> None:
    assert data.find("Schedule", {"service-type": f"{SERVICE}|vaccination"}) == {"schedA"}
    assert data.find("Schedule", {"service-type": "|walk-in"}) == {"schedB"}
    assert data.find("Schedule", {"service-type": "|vaccination"}) == set()
    assert data.find("Schedule", {"specialty": "KIND"}) == {"schedB"}
    assert data.find("Schedule", {"specialty": f"{SPECIALTY}|"}) == {"schedA", "schedB"}
    assert data.find("Schedule", {"specialty": "urn:test:other|"}) == set()


def test_schedule_identifier(data: Dataset) -> None:
    assert data.find("Schedule", {"identifier": f"{data.system}|schedB"}) == {"schedB"}
    assert data.find("Schedule", {"identifier": f"{data.system}|schedZ"}) == set()


def test_schedule_sort_by_date(data: Dataset) -> None:
    assert data.ordered("Schedule", {"_sort": "date"}) == ["schedA", "schedB"]
    assert data.ordered("Schedule", {"_sort": "-date"}) == ["schedB", "schedA"]


# --- Appointment ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Practitioner/prac1", {"appt1"}),
        ("PractitionerRole/role1", {"appt1"}),
        ("Location/loc1", {"appt1"}),
        ("Patient/pat2", {"appt2"}),
        ("Practitioner/prac2", {"appt2"}),
        ("Patient/pat9", set()),
    ],
)
def test_appointment_actor(data: Dataset, reference: str, expected: set[str]) -> None:
    resource_type, name = reference.split("/")
    assert data.find("Appointment", {"actor": f"{resource_type}/{data.id(name)}"}) == expected


def test_appointment_patient(data: Dataset) -> None:
    assert data.find("Appointment", {"patient": data.id("pat1")}) == {"appt1"}
    assert data.find("Appointment", {"patient": f"Patient/{data.id('pat2')}"}) == {"appt2"}
    assert data.find("Appointment", {"patient": f"Patient/{data.id('prac1')}"}) == set()


def test_appointment_patient_by_identifier(data: Dataset) -> None:
    """`patient:identifier` matches the identifier in the participant reference (here the KVNR)."""
    assert data.find("Appointment", {"patient:identifier": f"{KVNR}|{data.kvnr}"}) == {"appt1"}
    assert data.find("Appointment", {"patient:identifier": f"{KVNR}|X000000000"}) == set()


def test_appointment_practitioner(data: Dataset) -> None:
    assert data.find("Appointment", {"practitioner": f"Practitioner/{data.id('prac1')}"}) == {"appt1"}
    assert data.find("Appointment", {"practitioner": f"Practitioner/{data.id('pat1')}"}) == set()


def test_appointment_date(data: Dataset) -> None:
    assert data.find("Appointment", {"date": "2031-03-10"}) == {"appt1"}
    assert data.find("Appointment", {"date": "ge2031-03-11"}) == {"appt2"}
    assert data.find("Appointment", {"date": "lt2031-03-10"}) == set()


def test_appointment_status(data: Dataset) -> None:
    assert data.find("Appointment", {"status": "booked"}) == {"appt1"}
    assert data.find("Appointment", {"status": "pending,cancelled"}) == {"appt2"}
    assert data.find("Appointment", {"status": "fulfilled"}) == set()


def test_appointment_slot(data: Dataset) -> None:
    assert data.find("Appointment", {"slot": f"Slot/{data.id('s2')}"}) == {"appt1"}
    assert data.find("Appointment", {"slot": data.id("s4")}) == {"appt2"}
    assert data.find("Appointment", {"slot": f"Slot/{data.id('s1')}"}) == set()


def test_appointment_based_on(data: Dataset) -> None:
    assert data.find("Appointment", {"based-on": f"ServiceRequest/{data.id('sr1')}"}) == {"appt1"}
    assert data.find("Appointment", {"based-on": f"ServiceRequest/{data.id('sr2')}"}) == set()


def test_appointment_identifier_and_service_type(data: Dataset) -> None:
    assert data.find("Appointment", {"identifier": f"{data.system}|appt2"}) == {"appt2"}
    assert data.find("Appointment", {"service-type": f"{SERVICE}|vaccination"}) == {"appt1"}
    assert data.find("Appointment", {"service-type": f"{SERVICE}|walk-in"}) == set()


def test_appointment_bsnr_and_lanr(data: Dataset) -> None:
    """`bsnr`: Appointments on Slots of Schedules whose PractitionerRole's Organization carries the number;
    `lanr`: whose PractitionerRole's Practitioner has an ANR with the same first 7 digits. Neither looks at
    the Appointment's status: the cancelled appt2 lies on s4 of schedA (role1, org1, prac1) as well."""
    assert data.find("Appointment", {"bsnr": data.bsnr[0]}) == {"appt1", "appt2"}
    assert data.find("Appointment", {"bsnr": data.bsnr[0], "status": "booked"}) == {"appt1"}
    assert data.find("Appointment", {"bsnr": data.bsnr[1]}) == set()
    assert data.find("Appointment", {"lanr": data.lanr + "99"}) == {"appt1", "appt2"}
    assert data.find("Appointment", {"lanr": data.lanr}) == {"appt1", "appt2"}
    assert data.find("Appointment", {"lanr": "0000000"}) == set()


def test_appointment_response_by_appointment_and_actor(data: Dataset) -> None:
    assert data.find("AppointmentResponse", {"appointment": f"Appointment/{data.id('appt1')}"}) == {"resp1"}
    assert data.find("AppointmentResponse", {"appointment": f"Appointment/{data.id('appt2')}"}) == set()
    assert data.find("AppointmentResponse", {"actor": f"Practitioner/{data.id('prac1')}"}) == {"resp1"}
    assert data.find("AppointmentResponse", {"actor": f"Practitioner/{data.id('prac2')}"}) == set()


# --- directory -----------------------------------------------------------------------------------------


def test_practitioner_role_references(data: Dataset) -> None:
    assert data.find("PractitionerRole", {"organization": f"Organization/{data.id('org1')}"}) == {"role1"}
    assert data.find("PractitionerRole", {"practitioner": data.id("prac2")}) == {"role2"}
    assert data.find("PractitionerRole", {"location": f"Location/{data.id('loc3')}"}) == {"role2"}
    assert data.find("PractitionerRole", {"service": f"HealthcareService/{data.id('hs1')}"}) == {"role1"}
    assert data.find("PractitionerRole", {"service": f"HealthcareService/{data.id('hs2')}"}) == set()
    assert data.find("PractitionerRole", {"location": f"Location/{data.id('loc2')}"}) == set()


def test_practitioner_role_specialty_and_active(data: Dataset) -> None:
    """PractitionerRole has no default `active` filter: both roles are found without it."""
    assert data.find("PractitionerRole") == {"role1", "role2"}
    assert data.find("PractitionerRole", {"specialty": f"{SPECIALTY}|KIND"}) == {"role2"}
    assert data.find("PractitionerRole", {"specialty": f"{SPECIALTY}|HNO"}) == set()
    assert data.find("PractitionerRole", {"active": "true"}) == {"role1"}
    assert data.find("PractitionerRole", {"active": "false"}) == {"role2"}


def test_healthcare_service_without_active_returns_active_or_absent(data: Dataset) -> None:
    assert data.find("HealthcareService") == {"hs1", "hs2"}
    assert data.find("HealthcareService", {"active": "false"}) == {"hs3"}
    assert data.find("HealthcareService", {"active": "true"}) == {"hs1"}


def test_healthcare_service_references(data: Dataset) -> None:
    assert data.find("HealthcareService", {"organization": f"Organization/{data.id('org1')}"}) == {"hs1"}
    assert data.find(
        "HealthcareService", {"organization": f"Organization/{data.id('org1')}", "active": "false"}
    ) == {"hs3"}
    assert data.find("HealthcareService", {"location": f"Location/{data.id('loc2')}"}) == {"hs1"}
    assert data.find("HealthcareService", {"location": f"Location/{data.id('org1')}"}) == set()


def test_healthcare_service_codes(data: Dataset) -> None:
    assert data.find("HealthcareService", {"service-category": f"{CATEGORY}|35"}) == {"hs2"}
    assert data.find("HealthcareService", {"service-type": f"{SERVICE}|vaccination"}) == {"hs1"}
    assert data.find("HealthcareService", {"specialty": f"{SPECIALTY}|KIND"}) == {"hs2"}
    assert data.find("HealthcareService", {"service-category": f"{CATEGORY}|99"}) == set()
    assert data.find("HealthcareService", {"specialty": f"{SPECIALTY}|INNE"}) == set()


def test_healthcare_service_name(data: Dataset) -> None:
    """A string search is a case- and accent-insensitive prefix search."""
    assert data.find("HealthcareService", {"name": "impf"}) == {"hs1"}
    assert data.find("HealthcareService", {"name": "impf", "active": "false"}) == {"hs3"}
    assert data.find("HealthcareService", {"name": "VORSORGE"}) == {"hs2"}
    assert data.find("HealthcareService", {"name": "kinder"}) == set()


def test_organization_identifier_bsnr(data: Dataset) -> None:
    assert data.find("Organization", {"identifier": f"{BSNR}|{data.bsnr[1]}"}) == {"org2"}
    assert data.find("Organization", {"identifier": f"{BSNR}|000000000"}) == set()


def test_organization_name_is_case_and_accent_insensitive_prefix(data: Dataset) -> None:
    assert data.find("Organization", {"name": "ärztez"}) == {"org1"}
    assert data.find("Organization", {"name": "ARZTEZENTRUM SUD"}) == {"org1"}
    assert data.find("Organization", {"name": "mvz"}) == {"org1"}  # the alias
    assert data.find("Organization", {"name": "zentrum"}) == set()
    assert data.find("Organization", {"name": "%"}) == set()
    assert data.find("Organization", {"name:contains": "_"}) == set()


def test_organization_name_exact(data: Dataset) -> None:
    """`:exact` compares the whole string, case and accents included."""
    assert data.find("Organization", {"name:exact": "Ärztezentrum Süd"}) == {"org1"}
    assert data.find("Organization", {"name:exact": "Ärztezentrum"}) == set()
    assert data.find("Organization", {"name:exact": "ärztezentrum süd"}) == set()
    assert data.find("Organization", {"name:exact": "Arztezentrum Sud"}) == set()


def test_organization_name_contains(data: Dataset) -> None:
    assert data.find("Organization", {"name:contains": "ZENTRUM"}) == {"org1"}
    assert data.find("Organization", {"name:contains": "meier"}) == {"org2"}
    assert data.find("Organization", {"name:contains": "zentrale"}) == set()


def test_organization_address_postalcode(data: Dataset) -> None:
    assert data.find("Organization", {"address-postalcode": "803"}) == {"org1"}
    assert data.find("Organization", {"address-postalcode": "10115"}) == {"org2"}
    assert data.find("Organization", {"address-postalcode": "9"}) == set()


def test_location_address(data: Dataset) -> None:
    assert data.find("Location", {"address-postalcode": "80801"}) == {"loc2"}
    assert data.find("Location", {"address-postalcode": "8"}) == {"loc1", "loc2"}
    assert data.find("Location", {"address-city": "münchen"}) == {"loc1"}
    assert data.find("Location", {"address-city": "MUEN"}) == {"loc2"}
    assert data.find("Location", {"address-city": "Hamburg"}) == set()


def test_location_organization(data: Dataset) -> None:
    assert data.find("Location", {"organization": f"Organization/{data.id('org1')}"}) == {"loc1", "loc2"}
    assert data.find("Location", {"organization": f"Organization/{data.id('hs1')}"}) == set()


@pytest.mark.parametrize(
    ("near", "expected"),
    [
        ("48.1374|11.5755|1|km", {"loc1"}),
        ("48.1374|11.5755|5|km", {"loc1", "loc2"}),
        ("48.1374|11.5755|500|m", {"loc1"}),
        ("48.1374|11.5755|3000|m", {"loc1", "loc2"}),
        ("48.1374|11.5755|2|km", {"loc1"}),
        ("52.52|13.405|10|km", {"loc3"}),
        ("50.0|8.0|50|km", set()),
    ],
)
def test_location_near(data: Dataset, near: str, expected: set[str]) -> None:
    """`near=lat|lon|distance|unit` (km or m) finds Locations whose position lies within the radius."""
    assert data.find("Location", {"near": near}) == expected


@pytest.mark.parametrize(
    "near", ["48.1374|11.5755", "48.1374|11.5755||km", "north|11.5|5|km", "48.1|11.5|5|mi"]
)
def test_location_near_needs_a_distance_and_known_units(data: Dataset, near: str) -> None:
    reply = data.http.get("/Location", params={"near": near})
    assert reply.status_code == 400, reply.text
    assert reply.json()["issue"][0]["code"] == "invalid"


def test_practitioner_identifier_and_names(data: Dataset) -> None:
    assert data.find("Practitioner", {"identifier": f"{ANR}|{data.lanr}01"}) == {"prac1"}
    assert data.find("Practitioner", {"family": "muller"}) == {"prac1"}
    assert data.find("Practitioner", {"given": "jorg"}) == {"prac2"}
    assert data.find("Practitioner", {"family": "meier"}) == set()


def test_patient_identifier(data: Dataset) -> None:
    assert data.find("Patient", {"identifier": f"{KVNR}|{data.kvnr}"}) == {"pat1"}
    assert data.find("Patient", {"identifier": f"{KVNR}|"}) == {"pat1"}
    assert data.find("Patient", {"identifier": f"{KVNR}|X999999999"}) == set()


def test_patient_family_and_given(data: Dataset) -> None:
    """Prefix, case- and accent-insensitive: `Größer` is found as `gross`, `GRÖSSER` and `grosse`."""
    assert data.find("Patient", {"family": "gross"}) == {"pat1", "pat2"}
    assert data.find("Patient", {"family": "GRÖSSER"}) == {"pat1"}
    assert data.find("Patient", {"family": "grosse"}) == {"pat1"}
    assert data.find("Patient", {"family": "grossmann"}) == {"pat2"}
    assert data.find("Patient", {"given": "eli"}) == {"pat1", "pat2"}
    assert data.find("Patient", {"given": "élis"}) == {"pat1"}
    assert data.find("Patient", {"given": "lise"}) == set()


def test_patient_given_contains_and_exact(data: Dataset) -> None:
    assert data.find("Patient", {"given:contains": "LIS"}) == {"pat1"}
    assert data.find("Patient", {"given:contains": "li"}) == {"pat1", "pat2"}
    assert data.find("Patient", {"given:exact": "Eli"}) == {"pat2"}
    assert data.find("Patient", {"given:exact": "Élise"}) == {"pat1"}
    assert data.find("Patient", {"given:exact": "Elise"}) == set()


def test_patient_birthdate(data: Dataset) -> None:
    assert data.find("Patient", {"birthdate": "1980-05-17"}) == {"pat1"}
    assert data.find("Patient", {"birthdate": "ge1990"}) == {"pat2"}
    assert data.find("Patient", {"birthdate": "lt1990-01-01"}) == {"pat1"}
    assert data.find("Patient", {"birthdate": "1980-05-18"}) == set()


def test_service_request_identifier_and_status(data: Dataset) -> None:
    assert data.find("ServiceRequest", {"status": "active"}) == {"sr1"}
    assert data.find("ServiceRequest", {"status": "revoked"}) == set()
    assert data.find("ServiceRequest", {"identifier": f"{data.system}|sr2"}) == {"sr2"}
    assert data.find("ServiceRequest", {"identifier": f"{data.system}|sr3"}) == set()


# --- Provenance and AuditEvent ------------------------------------------------------------------------


def test_audit_event_by_entity_outcome_date_and_agent(data: Dataset) -> None:
    """Creating a Slot leaves one successful AuditEvent (action C) naming it and the admin client."""
    admin = data.server.credentials["admin"].client_id
    body = {
        "resourceType": "Slot",
        **slot_body(data, "schedAudit", "2031-03-20T08:00:00Z"),
        "identifier": [{"system": data.aside, "value": "audited"}],
    }
    created = data.http.post("/Slot", json=body)
    assert created.status_code == 201, created.text
    slot = created.json()
    params = {
        "entity": f"Slot/{slot['id']}",
        "agent:identifier": f"urn:terminhub:client|{admin}",
        "outcome": "0",
        "date": f"ge{slot['meta']['lastUpdated'][:10]}",
    }
    events = matches(data.search("AuditEvent", params, scoped=False))
    assert len(events) == 1 and events[0]["action"] == "C"
    assert matches(data.search("AuditEvent", {**params, "outcome": "4"}, scoped=False)) == []
    assert matches(data.search("AuditEvent", {**params, "date": "lt2020-01-01"}, scoped=False)) == []
    other = {**params, "agent:identifier": "urn:terminhub:client|th-nobody"}
    assert matches(data.search("AuditEvent", other, scoped=False)) == []


def test_audit_event_of_a_refusal_has_outcome_4(data: Dataset) -> None:
    missing = data.id("missing-slot")
    assert data.http.get(f"/Slot/{missing}").status_code == 404
    events = matches(data.search("AuditEvent", {"entity": f"Slot/{missing}", "outcome": "4"}, scoped=False))
    assert len(events) == 1


def test_provenance_parameters_are_known(data: Dataset) -> None:
    bundle = data.search(
        "Provenance", {"target": f"Slot/{data.id('s1')}", "recorded": "ge2020-01-01"}, scoped=False
    )
    assert outcomes(bundle) == []


def test_provenance_by_target_and_recorded(data: Dataset) -> None:
    slot = data.created["s1"]
    found = matches(
        data.search("Provenance", {"target": f"Slot/{slot['id']}", "recorded": "ge2020-01-01"}, scoped=False)
    )
    assert len(found) == 1
    assert (
        matches(
            data.search(
                "Provenance", {"target": f"Slot/{slot['id']}", "recorded": "lt2020-01-01"}, scoped=False
            )
        )
        == []
    )


# --- _id, _lastUpdated, _sort, _total, _count --------------------------------------------------------


def test_id(data: Dataset) -> None:
    assert data.find("Slot", {"_id": f"{data.id('s1')},{data.id('s3')}"}) == {"s1", "s3"}
    assert data.find("Slot", {"_id": data.id("nothing")}) == set()
    assert data.find("Slot", {"_id": data.id("schedA")}) == set()


def test_last_updated(data: Dataset) -> None:
    """`_lastUpdated` compares meta.lastUpdated (microseconds) with the date prefixes."""
    stamp = data.created["s4"]["meta"]["lastUpdated"]
    assert data.find("Slot", {"_lastUpdated": stamp}) == {"s4"}
    assert data.find("Slot", {"_lastUpdated": f"lt{stamp}"}) == {"s1", "s2", "s3"}
    assert data.find("Slot", {"_lastUpdated": f"ge{stamp}"}) == {"s4", "s5", "s6", "s7"}
    assert data.find("Slot", {"_lastUpdated": "lt2020-01-01"}) == set()


def test_sort_by_start(data: Dataset) -> None:
    ascending = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    assert data.ordered("Slot", {"_sort": "start"}) == ascending
    assert data.ordered("Slot", {"_sort": "-start"}) == ascending[::-1]


def test_sort_by_last_updated(data: Dataset) -> None:
    assert data.ordered("Organization", {"_sort": "_lastUpdated"}) == ["org1", "org2"]
    assert data.ordered("Organization", {"_sort": "-_lastUpdated"}) == ["org2", "org1"]


def test_sort_by_an_unsortable_parameter_is_refused(data: Dataset) -> None:
    assert data.http.get("/Slot", params={"_sort": "status"}).status_code == 400


def test_total_only_when_asked_for(data: Dataset) -> None:
    assert "total" not in data.search("Slot")
    assert data.search("Slot", {"_total": "accurate"})["total"] == 7
    assert data.search("Slot", {"_total": "accurate", "status": "busy"})["total"] == 1


def test_count_zero_returns_the_total_only(data: Dataset) -> None:
    bundle = data.search("Slot", {"_count": "0"})
    assert bundle["total"] == 7 and "entry" not in bundle and link(bundle, "next") is None


def test_count_is_the_page_size(data: Dataset) -> None:
    bundle = data.search("Slot", {"_count": "3", "_sort": "start"})
    assert [data.short(r["id"]) for r in matches(bundle)] == ["s1", "s2", "s3"]
    assert link(bundle, "next") is not None


@pytest.mark.parametrize("count", ["-1", "ten", "1.5"])
def test_count_must_be_a_whole_number(data: Dataset, count: str) -> None:
    assert data.http.get("/Slot", params={"_count": count}).status_code == 400


# --- page ------------------------------------------------------------------------------------------


def test_page_is_one_based(data: Dataset) -> None:
    params = {"_sort": "start", "_count": "3"}
    assert data.ordered("Slot", {**params, "page": "1"}) == ["s1", "s2", "s3"]
    assert data.ordered("Slot", {**params, "page": "2"}) == ["s4", "s5", "s6"]
    last = data.search("Slot", {**params, "page": "3"})
    assert [data.short(r["id"]) for r in matches(last)] == ["s7"]
    assert link(last, "next") is None


@pytest.mark.parametrize("page", ["4", "1000000", "9" * 25])
def test_page_beyond_the_last(data: Dataset, page: str) -> None:
    """Beyond the last page, however far: 200, no entries, no next link."""
    bundle = data.search("Slot", {"_sort": "start", "_count": "3", "page": page})
    assert matches(bundle) == [] and link(bundle, "next") is None


# --- _cursor paging ----------------------------------------------------------------------------------


def _walk(data: Dataset, bundle: dict, relation: str) -> list[list[str]]:
    pages = [[data.short(r["id"]) for r in matches(bundle)]]
    while (url := link(bundle, relation)) is not None:
        bundle = data.follow(url)
        pages.append([data.short(r["id"]) for r in matches(bundle)])
        assert len(pages) < 100
    return pages


@pytest.mark.parametrize("sort", ["start", "-start", "_lastUpdated", "-_lastUpdated", None])
def test_next_links_return_every_match_once_in_order(data: Dataset, sort: str | None) -> None:
    params = {"_count": "2", **({"_sort": sort} if sort else {})}
    expected = [data.short(r["id"]) for r in matches(data.search("Slot", {**params, "_count": "100"}))]
    pages = _walk(data, data.search("Slot", params), "next")
    assert [name for page in pages for name in page] == expected
    assert all(len(page) == 2 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 2
    assert len(expected) == 7


@pytest.mark.parametrize("sort", ["start", "-start", "-_lastUpdated"])
def test_previous_links_walk_back_the_same_pages(data: Dataset, sort: str) -> None:
    params = {"_count": "3", "_sort": sort}
    forward = _walk(data, data.search("Slot", params), "next")
    bundle = data.search("Slot", params)
    while (url := link(bundle, "next")) is not None:
        bundle = data.follow(url)
    backward = _walk(data, bundle, "previous")
    assert backward[::-1] == forward and len(forward) == 3
    assert link(data.search("Slot", params), "previous") is None


def test_links_of_a_numbered_page_lead_to_its_neighbours(data: Dataset) -> None:
    """From `page=2` the `next` link gives what `page=3` gives and `previous` what `page=1` gives."""
    params = {"_sort": "start", "_count": "2"}
    second = data.search("Slot", {**params, "page": "2"})
    assert [data.short(r["id"]) for r in matches(data.follow(link(second, "next") or ""))] == ["s5", "s6"]
    assert [data.short(r["id"]) for r in matches(data.follow(link(second, "previous") or ""))] == ["s1", "s2"]


def test_links_repeat_every_parameter_used(data: Dataset) -> None:
    params = [
        ("status", "free"),
        ("start", "ge2031-01-01"),
        ("start", "lt2032-01-01"),
        ("_sort", "-start"),
        ("_count", "2"),
        ("_include", "Slot:schedule"),
        ("_total", "accurate"),
        ("_format", "json"),
    ]
    bundle = data.search("Slot", params)
    sent = Counter(data.scoped(params))
    for relation in ("self", "next"):
        url = link(bundle, relation)
        assert url is not None and url.startswith(f"{data.server.fhir}/Slot?")
        query = Counter((k, v) for k, v in parse_qsl(urlsplit(url).query) if k != "_cursor")
        assert query == sent, relation
    second = data.follow(link(bundle, "next") or "")
    assert (
        Counter(
            (k, v) for k, v in parse_qsl(urlsplit(link(second, "previous") or "").query) if k != "_cursor"
        )
        == sent
    )


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        encode_cursor({"k": ["2031-03-10", "x"], "d": "next"}),
        encode_cursor({"k": [1, 2], "d": "next"}),
        encode_cursor({"k": [{"a": 1}, "x"], "d": "prev"}),
        encode_cursor({"k": ["x"], "d": "next"}),
    ],
)
def test_a_tampered_cursor_is_refused(data: Dataset, cursor: str) -> None:
    """A cursor that this server did not hand out for this search is 400, never a 500."""
    reply = data.http.get("/Slot", params={"_sort": "start", "_cursor": cursor})
    assert reply.status_code == 400, reply.text
    assert reply.json()["issue"][0]["code"] == "invalid"


# --- a bigger set: default page size, _count above 1000, stability while writing ------------------------


@pytest.fixture(scope="module")
def many(data: Dataset) -> tuple[str, list[str]]:
    """60 free Slots of one Schedule, two per start time, made in one batch; their identifier system."""
    system = f"{data.system}:many"
    data.put("Schedule", "schedMany", {"actor": [data.ref("Location", "loc1")]}, aside=True)
    entries = []
    for i in range(60):
        start = (datetime(2031, 9, 1, 8, tzinfo=UTC) + timedelta(minutes=15 * (i // 2))).isoformat()
        slot = {
            "resourceType": "Slot",
            "id": data.id(f"m{i:02d}"),
            **slot_body(data, "schedMany", start.replace("+00:00", "Z")),
            "identifier": [{"system": system, "value": f"m{i:02d}"}],
        }
        entries.append({"resource": slot, "request": {"method": "PUT", "url": f"Slot/{slot['id']}"}})
    reply = data.http.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert reply.status_code == 200, reply.text
    assert all(e["response"]["status"].startswith("201") for e in reply.json()["entry"])
    return system, [f"m{i:02d}" for i in range(60)]


def test_default_page_size_is_50(data: Dataset, many: tuple[str, list[str]]) -> None:
    system, names = many
    first = data.search("Slot", {"identifier": f"{system}|", "_total": "accurate"}, scoped=False)
    assert first["total"] >= 60 and len(matches(first)) == 50 and link(first, "next") is not None
    second = data.follow(link(first, "next") or "")
    assert len(matches(second)) == min(first["total"] - 50, 50)


def test_count_above_1000_is_served_as_1000(data: Dataset, many: tuple[str, list[str]]) -> None:
    system, names = many
    bundle = data.search(
        "Slot", {"identifier": f"{system}|", "_count": "5000", "_total": "accurate"}, scoped=False
    )
    assert len(matches(bundle)) == bundle["total"] >= 60 and link(bundle, "next") is None


def test_paging_is_stable_while_slots_are_written(data: Dataset, many: tuple[str, list[str]]) -> None:
    """Walking `next` links while other clients add Slots before and after the cursor and change walked and
    unwalked ones (sort key kept): every Slot that matched throughout is seen exactly once, in order."""
    system, names = many
    params = {"identifier": f"{system}|", "_sort": "start", "_count": "7"}
    starts = {
        data.short(r["id"]): r["start"]
        for r in matches(data.search("Slot", {**params, "_count": "100"}, scoped=False))
    }
    writer = data.server.client("admin")

    def write(step: int) -> None:
        for name, start in (
            (f"early{step}", "2031-08-01T08:00:00Z"),
            (f"late{step}", "2031-10-01T08:00:00Z"),
            (f"tie{step}", "2031-09-01T10:00:00Z"),
        ):
            slot = {
                "resourceType": "Slot",
                "id": data.id(name),
                **slot_body(data, "schedMany", start),
                "identifier": [{"system": system, "value": name}],
            }
            assert writer.put(f"/Slot/{slot['id']}", json=slot).status_code == 201
        for name in (names[step], names[-1 - step]):  # one walked, one not yet walked: status changes only
            current = writer.get(f"/Slot/{data.id(name)}").json()
            current["status"] = "busy" if current["status"] == "free" else "free"
            assert writer.put(f"/Slot/{data.id(name)}", json=current).status_code == 200

    seen: list[str] = []
    bundle = data.search("Slot", params, scoped=False)
    with writer, ThreadPoolExecutor(max_workers=1) as pool:
        step = 0
        while True:
            seen += [data.short(r["id"]) for r in matches(bundle)]
            url = link(bundle, "next")
            if url is None:
                break
            writing = pool.submit(write, step)
            bundle = data.follow(url)
            writing.result()
            step += 1
    counts = Counter(seen)
    assert all(counts[name] == 1 for name in names), [n for n in names if counts[n] != 1]
    assert max(counts.values()) == 1
    walked = [name for name in seen if name in starts]
    assert walked == sorted(walked, key=lambda n: (starts[n], data.id(n)))


# --- POST _search, unknown parameters ----------------------------------------------------------------


def test_post_search_with_form_body_equals_get(data: Dataset) -> None:
    """URL and form-body parameters are combined."""
    reply = data.http.post(
        "/Slot/_search",
        params={"identifier": f"{data.system}|", "_sort": "start"},
        data={"status": "free", "start": "lt2031-05-01"},
        headers=FORM,
    )
    assert reply.status_code == 200, reply.text
    posted = [r["id"] for r in matches(reply.json())]
    got = [
        r["id"]
        for r in matches(data.search("Slot", {"_sort": "start", "status": "free", "start": "lt2031-05-01"}))
    ]
    assert posted == got and len(got) == 4


def test_post_search_with_another_body_type_is_415(data: Dataset) -> None:
    reply = data.http.post("/Slot/_search", json={"status": "free"})
    assert reply.status_code == 415
    assert reply.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("prefer", [None, "handling=lenient"])
def test_unknown_parameter_is_ignored_and_reported(data: Dataset, prefer: str | None) -> None:
    headers = {"Prefer": prefer} if prefer else {}
    bundle = data.search("Slot", {"colour": "blue", "status": "busy"}, headers=headers)
    assert [data.short(r["id"]) for r in matches(bundle)] == ["s2"]
    [outcome] = outcomes(bundle)
    assert outcome["resourceType"] == "OperationOutcome" and "colour" in str(outcome)
    assert "colour" not in (link(bundle, "self") or "")


def test_unknown_parameter_is_refused_under_strict_handling(data: Dataset) -> None:
    reply = data.http.get("/Slot", params={"colour": "blue"}, headers={"Prefer": "handling=strict"})
    assert reply.status_code == 400
    assert reply.json()["issue"][0]["code"] == "invalid"


def test_known_parameters_pass_strict_handling(data: Dataset) -> None:
    reply = data.http.get(
        "/Slot", params=data.scoped({"status": "busy"}), headers={"Prefer": "handling=strict"}
    )
    assert reply.status_code == 200 and outcomes(reply.json()) == []


# --- includes -----------------------------------------------------------------------------------------


def _included_names(data: Dataset, bundle: dict) -> Counter:
    return Counter(f"{r['resourceType']}/{data.short(r['id'])}" for r in included(bundle))


@pytest.mark.parametrize(
    ("resource_type", "params", "expected"),
    [
        (
            "Slot",
            {"_id": "{s1},{s2},{s5}", "_include": "Slot:schedule"},
            {"Schedule/schedA", "Schedule/schedB"},
        ),
        (
            "Schedule",
            {"_id": "{schedA}", "_include": "Schedule:actor"},
            {"PractitionerRole/role1", "Location/loc1"},
        ),
        ("Schedule", {"_id": "{schedA}", "_include": "Schedule:actor:Location"}, {"Location/loc1"}),
        ("Appointment", {"_id": "{appt1}", "_include": "Appointment:slot"}, {"Slot/s2"}),
        ("Appointment", {"_id": "{appt1}", "_include": "Appointment:patient"}, {"Patient/pat1"}),
        (
            "Appointment",
            {"_id": "{appt1}", "_include": "Appointment:actor"},
            {"Patient/pat1", "Practitioner/prac1", "PractitionerRole/role1", "Location/loc1"},
        ),
        (
            "PractitionerRole",
            {"_id": "{role1}", "_include": "PractitionerRole:practitioner"},
            {"Practitioner/prac1"},
        ),
        (
            "PractitionerRole",
            {"_id": "{role1}", "_include": "PractitionerRole:organization"},
            {"Organization/org1"},
        ),
        ("PractitionerRole", {"_id": "{role1}", "_include": "PractitionerRole:location"}, {"Location/loc1"}),
        (
            "HealthcareService",
            {"_id": "{hs1}", "_include": "HealthcareService:organization"},
            {"Organization/org1"},
        ),
        (
            "HealthcareService",
            {"_id": "{hs1}", "_include": "HealthcareService:location"},
            {"Location/loc1", "Location/loc2"},
        ),
    ],
)
def test_include(data: Dataset, resource_type: str, params: dict[str, str], expected: set[str]) -> None:
    """Included resources carry search.mode `include`, each once."""
    names = ("s1", "s2", "s5", "schedA", "appt1", "role1", "hs1")
    filled = {k: v.format(**{n: data.id(n) for n in names}) for k, v in params.items()}
    counts = _included_names(data, data.search(resource_type, filled))
    assert set(counts) == expected and max(counts.values()) == 1


def test_include_leaves_out_what_is_already_a_match(data: Dataset) -> None:
    bundle = data.search(
        "Schedule",
        {"_id": data.id("schedA"), "_revinclude": "Slot:schedule", "_include:iterate": "Slot:schedule"},
    )
    names = [e["resource"]["id"] for e in bundle["entry"]]
    assert Counter(names)[data.id("schedA")] == 1


def test_several_includes(data: Dataset) -> None:
    params = [
        ("_id", data.id("appt1")),
        ("_include", "Appointment:slot"),
        ("_include", "Appointment:patient"),
    ]
    assert set(_included_names(data, data.search("Appointment", params))) == {"Slot/s2", "Patient/pat1"}


def test_include_iterate(data: Dataset) -> None:
    """`_include:iterate` follows references of included resources too."""
    params = [("_id", data.id("s1")), ("_include", "Slot:schedule"), ("_include:iterate", "Schedule:actor")]
    assert set(_included_names(data, data.search("Slot", params))) == {
        "Schedule/schedA",
        "PractitionerRole/role1",
        "Location/loc1",
    }


def test_revinclude_slots_of_a_schedule(data: Dataset) -> None:
    bundle = data.search("Schedule", {"_id": data.id("schedA"), "_revinclude": "Slot:schedule"})
    assert [data.short(r["id"]) for r in matches(bundle)] == ["schedA"]
    assert set(_included_names(data, bundle)) == {"Slot/s1", "Slot/s2", "Slot/s3", "Slot/s4"}


def test_each_page_carries_the_includes_of_its_own_matches(data: Dataset) -> None:
    bundle = data.search("Slot", {"_sort": "start", "_count": "2", "_include": "Slot:schedule"})
    pages = 0
    while True:
        pages += 1
        own = {r["schedule"]["reference"] for r in matches(bundle)}
        assert {f"Schedule/{r['id']}" for r in included(bundle)} == own
        assert len(included(bundle)) == len(own)
        url = link(bundle, "next")
        if url is None:
            break
        bundle = data.follow(url)
    assert pages == 4


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_include", "Slot:status"),
        ("_include", "Patient:organization"),
        ("_include", "Schedule:actor"),  # does not start at Slot
        ("_include", "Slot"),
        ("_revinclude", "Appointment:slot"),
        ("_include:recurse", "Slot:schedule"),
    ],
)
def test_unsupported_include_is_400(data: Dataset, name: str, value: str) -> None:
    reply = data.http.get("/Slot", params={name: value})
    assert reply.status_code == 400, reply.text
    assert reply.json()["resourceType"] == "OperationOutcome"


# --- XML --------------------------------------------------------------------------------------------


def test_xml_searchset_has_the_same_entries(data: Dataset) -> None:
    params = data.scoped({"_sort": "start", "_include": "Slot:schedule", "_total": "accurate"})
    json_bundle = data.search("Slot", {"_sort": "start", "_include": "Slot:schedule", "_total": "accurate"})
    reply = data.http.get("/Slot", params=params, headers={"Accept": FHIR_XML})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/fhir+xml")
    root = ET.fromstring(reply.content)
    assert root.tag == "{http://hl7.org/fhir}Bundle"
    assert _xml_value(root, "f:type") == "searchset" and _xml_value(root, "f:total") == "7"
    xml_entries = [
        (_xml_value(e, "f:fullUrl"), _xml_value(e, "f:search/f:mode"))
        for e in root.findall("f:entry", FHIR_NS)
    ]
    assert xml_entries == [(e["fullUrl"], e["search"]["mode"]) for e in json_bundle["entry"]]
    assert _xml_value(root, "f:entry/f:resource/f:Slot/f:start") == data.created["s1"]["start"]


def _xml_value(node: ET.Element, path: str) -> str | None:
    found = node.find(path, FHIR_NS)
    return None if found is None else found.get("value")
