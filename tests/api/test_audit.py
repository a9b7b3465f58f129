"""AuditEvents (contract 2): one per successful write and one per refused call, read by admin only.

Every test registers its own client, so that the AuditEvents naming it are exactly those its requests left.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.support.server import FHIR_XML, PRACTICE_BSNR, Credentials, Server

AUDIT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}
CLIENT_SYSTEM = "urn:terminhub:client"


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    """The session admin: reads the trail; its own requests are never counted."""
    with server.client("admin") as client:
        yield client


class Caller:
    """A client registered for one test, and its audit trail."""

    def __init__(self, server: Server, admin: httpx.Client, role: str, bsnrs: tuple[str, ...] = ()) -> None:
        self.cred: Credentials = server.add_client(role, f"audit {role} {uuid.uuid4().hex[:8]}", bsnrs)
        self.http = httpx.Client(
            base_url=server.fhir,
            timeout=60,
            headers={"Authorization": f"Bearer {server.token_for(self.cred)}"},
        )
        self.admin = admin

    @property
    def id(self) -> str:
        return self.cred.client_id

    def trail(self, **params: str) -> list[dict]:
        """Its AuditEvents, oldest first."""
        reply = self.admin.get(
            "AuditEvent",
            params={
                "agent:identifier": f"{CLIENT_SYSTEM}|{self.id}",
                "_sort": "date",
                "_count": "1000",
                **params,
            },
        )
        assert reply.status_code == 200, reply.text
        return [e["resource"] for e in reply.json().get("entry", []) if e["search"]["mode"] == "match"]


@pytest.fixture
def caller(server: Server, admin: httpx.Client) -> Iterator[Caller]:
    made = Caller(server, admin, "admin")
    yield made
    made.http.close()


def patient() -> dict:
    return {
        "resourceType": "Patient",
        "name": [{"family": "Protokoll"}],
        "identifier": [{"system": "urn:terminhub:test:audit", "value": uuid.uuid4().hex}],
    }


def assert_rest_event(event: dict, caller: Caller, action: str, outcome: str, entity: str | None) -> None:
    assert {"system": event["type"]["system"], "code": event["type"]["code"]} == AUDIT_TYPE
    assert event["action"] == action
    assert event["outcome"] == outcome
    assert event["agent"][0]["who"]["identifier"] == {"system": CLIENT_SYSTEM, "value": caller.id}
    assert event["recorded"]
    if entity is not None:
        assert event["entity"][0]["what"]["reference"] == entity


# -- successful writes ------------------------------------------------------------------------------------
def test_create_leaves_one_audit_event(caller: Caller) -> None:
    """A create: one AuditEvent, action C, outcome 0, naming the client and the new resource."""
    created = caller.http.post("Patient", json=patient()).json()
    [event] = caller.trail()
    assert_rest_event(event, caller, "C", "0", f"Patient/{created['id']}")


def test_update_leaves_one_audit_event(caller: Caller) -> None:
    """An update: one more AuditEvent, action U."""
    created = caller.http.post("Patient", json=patient()).json()
    assert caller.http.put(f"Patient/{created['id']}", json=created | {"active": True}).status_code == 200
    events = caller.trail()
    assert [e["action"] for e in events] == ["C", "U"]
    assert_rest_event(events[1], caller, "U", "0", f"Patient/{created['id']}")


def test_delete_leaves_one_audit_event(caller: Caller) -> None:
    """A delete: one more AuditEvent, action D."""
    created = caller.http.post("Patient", json=patient()).json()
    assert caller.http.delete(f"Patient/{created['id']}").status_code == 204
    events = caller.trail()
    assert [e["action"] for e in events] == ["C", "D"]
    assert_rest_event(events[1], caller, "D", "0", f"Patient/{created['id']}")


def test_update_as_create_is_audited_as_a_write(caller: Caller) -> None:
    """Admin's PUT to a new id leaves one AuditEvent for the resource it created."""
    new = f"audit-{uuid.uuid4().hex[:16]}"
    assert caller.http.put(f"Patient/{new}", json=patient() | {"id": new}).status_code == 201
    [event] = caller.trail()
    assert event["outcome"] == "0"
    assert event["entity"][0]["what"]["reference"] == f"Patient/{new}"


def test_xml_writes_are_audited_like_json(caller: Caller) -> None:
    """The format of the request does not matter: an XML create leaves its AuditEvent too."""
    body = b'<Patient xmlns="http://hl7.org/fhir"><name><family value="Xml"/></name></Patient>'
    reply = caller.http.post("Patient", content=body, headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML})
    assert reply.status_code == 201, reply.text
    [event] = caller.trail()
    assert event["action"] == "C" and event["outcome"] == "0"


def test_reads_and_searches_write_nothing(caller: Caller) -> None:
    """Successful reads and searches leave no AuditEvent (only writes and refusals do)."""
    created = caller.http.post("Patient", json=patient()).json()
    assert caller.http.get(f"Patient/{created['id']}").status_code == 200
    assert caller.http.get("Patient", params={"_id": created["id"]}).status_code == 200
    assert len(caller.trail()) == 1


def test_conditional_create_that_finds_a_match_writes_nothing(caller: Caller) -> None:
    """If-None-Exist matching an existing resource changes nothing, so it leaves no AuditEvent."""
    body = patient()
    identifier = body["identifier"][0]
    header = {"If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}"}
    assert caller.http.post("Patient", json=body, headers=header).status_code == 201
    assert caller.http.post("Patient", json=body, headers=header).status_code == 200
    assert len(caller.trail()) == 1


def test_transaction_leaves_one_audit_event(caller: Caller) -> None:
    """A transaction of several entries is one request: one AuditEvent, action E."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"},
            }
            for _ in range(3)
        ],
    }
    reply = caller.http.post("", json=bundle)
    assert reply.status_code == 200, reply.text
    [event] = caller.trail()
    assert_rest_event(event, caller, "E", "0", None)


def test_refused_transaction_leaves_one_refusal(caller: Caller) -> None:
    """A transaction that fails in its second entry stores nothing and leaves one AuditEvent, outcome 4."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Provenance"}, "request": {"method": "POST", "url": "Provenance"}},
        ],
    }
    assert caller.http.post("", json=bundle).status_code == 405
    [event] = caller.trail()
    assert event["outcome"] == "4"


def _batch(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "batch", "entry": list(entries)}


# a batch entry that fails: even admin cannot store an Appointment on a Slot that does not exist
ORPHAN = {
    "resource": {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": "Slot/missing"}],
        "participant": [{"actor": {"display": "x"}, "status": "accepted"}],
    },
    "request": {"method": "POST", "url": "Appointment"},
}


def test_batch_leaves_one_audit_event(caller: Caller) -> None:
    """A batch with a good and a failing entry is one request that wrote: one AuditEvent, action E."""
    good = {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}
    reply = caller.http.post("", json=_batch(good, ORPHAN))
    assert reply.status_code == 200, reply.text
    assert [e["response"]["status"][:3] for e in reply.json()["entry"]] == ["201", "422"]
    [event] = caller.trail()
    assert_rest_event(event, caller, "E", "0", None)


def test_batch_that_stored_nothing_records_no_successful_write(server: Server, caller: Caller) -> None:
    """A batch whose every entry failed changed nothing: no AuditEvent may claim a successful write."""
    before = server.counts()
    reply = caller.http.post("", json=_batch(ORPHAN))
    assert reply.status_code == 200, reply.text
    assert server.counts() == before
    assert caller.trail(outcome="0") == []


# -- refusals ---------------------------------------------------------------------------------------------
REFUSALS = {
    "403 forbidden type": lambda c: c.get("AuditEvent"),
    "403 forbidden write": lambda c: c.post("Organization", json={"resourceType": "Organization"}),
    "404 unknown resource": lambda c: c.get(f"Organization/{uuid.uuid4()}"),
    "405 server-written type": lambda c: c.post("AuditEvent", json={"resourceType": "AuditEvent"}),
    "400 invalid body": lambda c: c.post(
        "Patient", content=b"{not json", headers={"Content-Type": "application/json"}
    ),
    "422 invisible reference": lambda c: c.post(
        "Patient",
        json={
            "resourceType": "Patient",
            "generalPractitioner": [{"reference": "Practitioner/does-not-exist"}],
        },
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_call_leaves_one_audit_event(server: Server, admin: httpx.Client, case: str) -> None:
    """Every refused call leaves exactly one AuditEvent with outcome 4, naming the client, and changes
    nothing else."""
    caller = Caller(server, admin, "scheduling-client")
    before = server.counts()
    reply = REFUSALS[case](caller.http)
    assert reply.status_code == int(case[:3]), reply.text
    assert server.counts() == before
    [event] = caller.trail()
    assert {"system": event["type"]["system"], "code": event["type"]["code"]} == AUDIT_TYPE
    assert event["outcome"] == "4"
    assert event["agent"][0]["who"]["identifier"] == {"system": CLIENT_SYSTEM, "value": caller.id}


def test_refused_read_names_the_resource_concerned(server: Server, admin: httpx.Client) -> None:
    """The AuditEvent of a refused read names the resource that was asked for."""
    caller = Caller(server, admin, "practice", (PRACTICE_BSNR,))
    missing = str(uuid.uuid4())
    assert caller.http.get(f"Slot/{missing}").status_code == 404
    [event] = caller.trail()
    assert event["entity"][0]["what"]["reference"] == f"Slot/{missing}"


def test_unauthenticated_call_leaves_one_refusal(server: Server, admin: httpx.Client) -> None:
    """A call without a valid token is refused with 401 and audited once, with no client to name."""

    def anonymous_refusals() -> int:
        reply = admin.get(
            "AuditEvent",
            params={
                "agent:identifier": f"{CLIENT_SYSTEM}|anonymous",
                "outcome": "4",
                "_count": "0",
                "_total": "accurate",
            },
        )
        return reply.json()["total"]

    before = anonymous_refusals()
    reply = httpx.get(f"{server.fhir}/Patient", headers={"Authorization": f"Bearer {uuid.uuid4().hex}"})
    assert reply.status_code == 401
    assert anonymous_refusals() == before + 1


def test_unacceptable_format_is_audited_as_a_refusal(server: Server, admin: httpx.Client) -> None:
    """A request refused for its `Accept` header (406) is a refused call like any other."""
    caller = Caller(server, admin, "scheduling-client")
    assert caller.http.get("Patient", headers={"Accept": "text/html"}).status_code == 406
    assert len(caller.trail()) == 1


# -- who reads the trail, and how --------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["practice", "referrer", "third-party", "scheduling-client"])
def test_audit_events_are_readable_by_admin_only(
    server: Server, admin: httpx.Client, caller: Caller, role: str
) -> None:
    """Only admin reads AuditEvents: any other role gets 403 on read and search."""
    caller.http.post("Patient", json=patient())
    [event] = caller.trail()
    assert admin.get(f"AuditEvent/{event['id']}").status_code == 200
    with server.client(role) as other:
        for reply in (other.get(f"AuditEvent/{event['id']}"), other.get("AuditEvent")):
            assert reply.status_code == 403
            assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == "forbidden"


def test_search_by_outcome(caller: Caller) -> None:
    """`outcome` separates successes (0) from refusals (4)."""
    caller.http.post("Patient", json=patient())
    caller.http.post("AuditEvent", json={"resourceType": "AuditEvent"})
    assert [e["action"] for e in caller.trail(outcome="0")] == ["C"]
    assert len(caller.trail(outcome="4")) == 1


def test_search_by_date(caller: Caller, admin: httpx.Client) -> None:
    """`date` compares with `recorded`: events after an instant are found with `ge`, none with `lt`."""
    before = (datetime.now(UTC) - timedelta(seconds=5)).isoformat(timespec="seconds").replace("+00:00", "Z")
    caller.http.post("Patient", json=patient())
    assert len(caller.trail(date=f"ge{before}")) == 1
    assert caller.trail(date=f"lt{before}") == []


def test_search_by_agent_reference_identifier(caller: Caller, admin: httpx.Client) -> None:
    """`agent:identifier=urn:terminhub:client|<id>` finds the client's events and no one else's."""
    caller.http.post("Patient", json=patient())
    reply = admin.get("AuditEvent", params={"agent:identifier": f"{CLIENT_SYSTEM}|{caller.id}"})
    events = [e["resource"] for e in reply.json()["entry"]]
    assert len(events) == 1
    assert all(e["agent"][0]["who"]["identifier"]["value"] == caller.id for e in events)
    nobody = f"{CLIENT_SYSTEM}|th-nobody-{time.time_ns()}"
    unknown = admin.get("AuditEvent", params={"agent:identifier": nobody})
    assert unknown.json().get("entry", []) == []


def test_audit_events_are_sorted_by_date(caller: Caller, admin: httpx.Client) -> None:
    """`_sort=date` and `_sort=-date` order the trail by `recorded`."""
    for _ in range(3):
        caller.http.post("Patient", json=patient())
    ascending = [e["recorded"] for e in caller.trail()]
    descending = [e["recorded"] for e in caller.trail(_sort="-date")]
    assert ascending == sorted(ascending) and len(ascending) == 3
    assert descending == ascending[::-1]
