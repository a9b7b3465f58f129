"""Bad input (contract 2, Errors; 7): never a 500, always an OperationOutcome with the contract's code,
nothing stored but the one AuditEvent that records the refusal; each successful write is audited too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from tests.api.rest_helpers import (
    FHIR_NS,
    MAX_BODY,
    assert_error,
    assert_xml_error,
    audit_trail,
    fresh_client,
    new_id,
    only_new_event,
    oversized_body,
    patient,
)
from tests.support.server import Server

JSON = "application/fhir+json"
XML = "application/fhir+xml"
PATIENT_ID = new_id()  # an existing Patient that PUT cases address
UNKNOWN_ID = new_id()


@dataclass(frozen=True)
class Bad:
    """One bad request and the refusal it earns (400 `invalid` unless told otherwise)."""

    method: str
    path: str
    body: bytes | dict | list | str
    status: int = 400
    code: str = "invalid"
    content_type: str = JSON
    role: str = "admin"
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, client: httpx.Client) -> httpx.Response:
        content = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        return client.request(
            self.method,
            self.path,
            content=content,
            headers={"Content-Type": self.content_type, **self.headers},
        )


def xml(body: str) -> Bad:
    """POST Patient with an XML body."""
    return Bad("POST", "Patient", body.encode(), content_type=XML)


def create(body: bytes | dict | list | str, path: str = "Patient", **refusal: Any) -> Bad:
    """POST to `path` (a type, `_search` or the base)."""
    return Bad("POST", path, body, **refusal)


def update(body: dict, resource_id: str = "", **refusal: Any) -> Bad:
    """PUT to a Patient, the existing one unless told."""
    return Bad("PUT", f"Patient/{resource_id or PATIENT_ID}", body, **refusal)


def appointment(**elements: object) -> dict:
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "participant": [{"actor": {"display": "Dr. Test"}, "status": "needs-action"}],
    } | elements


def transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def post_entry(resource: dict) -> dict:
    return {
        "fullUrl": f"urn:uuid:{new_id()}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def existing(**elements: object) -> dict:
    return patient(id=PATIENT_ID, **elements)


NESTED = (
    b'{"resourceType": "Patient", "extension": '
    + b'[{"url": "urn:x", "extension": ' * 500
    + b"[]"
    + b"}]" * 500
    + b"}"
)
SC = "scheduling-client"
STALE = {"If-Match": 'W/"999"'}
STALE_ENTRY = {"ifMatch": 'W/"999"'}

BAD_REQUESTS: dict[str, Bad] = {
    # malformed bodies
    "broken-json": create(b'{"resourceType": "Patient", "active": tru'),
    "empty-body": create(b""),
    "json-array": create([patient()]),
    "json-string": create("Patient"),
    "json-null": create(b"null"),
    "json-not-utf8": create(b'{"resourceType": "Patient", "name": [{"family": "\xe4"}]}'),
    "deeply-nested-json": create(NESTED),
    "json-nested-beyond-any-limit": create(b"[" * 5000 + b"]" * 5000),
    "broken-xml": xml(f'<Patient xmlns="{FHIR_NS}"><active value="true"/>'),
    "xml-without-namespace": xml('<Patient><active value="true"/></Patient>'),
    "xml-unknown-element": xml(f'<Patient xmlns="{FHIR_NS}"><mood value="good"/></Patient>'),
    "xml-bad-boolean": xml(f'<Patient xmlns="{FHIR_NS}"><active value="yes"/></Patient>'),
    # not the resource the URL names
    "missing-resource-type": create({"active": True}),
    "resource-type-not-a-string": create({"resourceType": 7, "active": True}),
    "unknown-resource-type-in-body": create({"resourceType": "Spaceship"}),
    "create-other-type": create({"resourceType": "Practitioner", "active": True}),
    "update-other-type": update({"resourceType": "Practitioner", "id": PATIENT_ID}),
    "xml-other-type": xml(f'<Practitioner xmlns="{FHIR_NS}"/>'),
    # wrong values
    "boolean-as-string": create(patient(active="yes")),
    "boolean-as-number": create(patient(active=1)),
    "string-as-number": create(patient(name=[{"family": 42}])),
    "code-as-number": create(patient(gender=1)),
    "integer-as-string": create(patient(multipleBirthInteger="2")),
    "integer-as-decimal": create(patient(multipleBirthInteger=2.5)),
    "list-as-object": create(patient(name={"family": "Muster"})),
    "object-as-string": create(patient(maritalStatus="married")),
    "nested-boolean-as-string": create(
        patient(communication=[{"language": {"text": "de"}, "preferred": "true"}])
    ),
    "extension-boolean-as-string": create(patient(extension=[{"url": "urn:x", "valueBoolean": "false"}])),
    "start-not-a-date-time": create(appointment(start="tomorrow"), "Appointment"),
    "date-time-without-offset": create(appointment(start="2031-03-04T10:00:00"), "Appointment"),
    "birth-date-not-a-date": create(patient(birthDate="12.08.1964")),
    "code-outside-its-required-value-set": create(patient(gender="sometimes")),
    "unknown-element": create(patient(mood="good")),
    "missing-required-element": create({"resourceType": "Appointment", "status": "proposed"}, "Appointment"),
    "update-with-bad-value": update(existing(active="no")),
    # ids and versions
    "invalid-id-in-url": update(patient(id="bad_id"), "bad_id"),
    "too-long-id-in-url": update(patient(id="a" * 65), "a" * 65),
    "body-id-not-url-id": update(patient(id=new_id())),
    "update-without-id": update(patient()),
    "stale-if-match": update(existing(), status=412, code="version-conflict", headers=STALE),
    "bad-if-none-exist": create(patient(), headers={"If-None-Exist": "no-such-parameter=1"}),
    "if-none-exist-with-nul": create(patient(), headers={"If-None-Exist": "family=a%00b"}),
    # media types, routes, roles
    "body-of-another-type": create(
        b"active=true", status=415, code="unsupported-media-type", content_type="text/plain"
    ),
    "search-body-not-a-form": create(
        {"identifier": "x"}, "Patient/_search", status=415, code="unsupported-media-type"
    ),
    "search-form-not-utf8": create(
        b"family=\xff", "Patient/_search", content_type="application/x-www-form-urlencoded"
    ),
    "unknown-type": create({"resourceType": "Spaceship"}, "Spaceship", status=404, code="not-found"),
    "server-written-type": create(
        {"resourceType": "AuditEvent"}, "AuditEvent", status=405, code="method-not-allowed"
    ),
    "role-may-not-create": create(
        {"resourceType": "Organization", "name": "X"}, "Organization", status=403, code="forbidden", role=SC
    ),
    "role-may-not-update-as-create": update(
        patient(id=UNKNOWN_ID), UNKNOWN_ID, status=405, code="method-not-allowed", role=SC
    ),
    "reference-to-nothing": create(
        patient(generalPractitioner=[{"reference": f"Practitioner/{new_id()}"}]),
        status=422,
        code="business-rule",
        role=SC,
    ),
    # Bundles
    "bundle-not-batch-or-transaction": create({"resourceType": "Bundle", "type": "collection"}, ""),
    "transaction-entry-without-request": create(transaction({"resource": patient()}), ""),
    "transaction-entry-with-bad-value": create(
        transaction(post_entry(patient()), post_entry(patient(active="yes"))), ""
    ),
    "transaction-entry-of-unknown-type": create(
        transaction(post_entry(patient()), {"request": {"method": "GET", "url": "Spaceship/1"}}), ""
    ),
    "transaction-entry-with-an-operation": create(
        transaction(
            post_entry(patient()),
            {"request": {"method": "POST", "url": "Slot/$hold"}, "resource": {"resourceType": "Parameters"}},
        ),
        "",
    ),
    "transaction-appointment-on-missing-slot": create(
        transaction(post_entry(patient()), post_entry(appointment(slot=[{"reference": f"Slot/{new_id()}"}]))),
        "",
        status=422,
        code="business-rule",
    ),
    "transaction-invalid-reference": create(
        transaction(
            post_entry(patient()),
            post_entry(patient(link=[{"other": {"reference": f"Patient/{new_id()}"}, "type": "seealso"}])),
        ),
        "",
        status=422,
        code="business-rule",
        role=SC,
    ),
    "transaction-stale-if-match": create(
        transaction(
            post_entry(patient()),
            {
                "resource": existing(),
                "request": {"method": "PUT", "url": f"Patient/{PATIENT_ID}", **STALE_ENTRY},
            },
        ),
        "",
        status=412,
        code="version-conflict",
    ),
}


@pytest.fixture(scope="module")
def clients(server: Server) -> Iterator[dict[str, httpx.Client]]:
    with server.client("admin") as admin, server.client("scheduling-client") as scheduling:
        yield {"admin": admin, "scheduling-client": scheduling}


@pytest.fixture(scope="module")
def admin(clients: dict[str, httpx.Client]) -> httpx.Client:
    clients["admin"].put(f"Patient/{PATIENT_ID}", json=existing()).raise_for_status()
    return clients["admin"]


@pytest.mark.parametrize("bad", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_input_is_refused_with_an_operation_outcome_and_changes_nothing(
    server: Server, admin: httpx.Client, clients: dict[str, httpx.Client], bad: Bad
) -> None:
    """4xx with the contract's code in an OperationOutcome; no resource, version, index row or outbox row."""
    before = server.counts()
    assert_error(bad.send(clients[bad.role]), bad.status, bad.code)
    assert server.counts() == before


AUDITED = [
    "broken-json",
    "boolean-as-string",
    "too-long-id-in-url",
    "body-of-another-type",
    "search-body-not-a-form",
    "unknown-type",
    "role-may-not-create",
    "stale-if-match",
    "transaction-entry-with-bad-value",
    "transaction-invalid-reference",
]


@pytest.mark.parametrize("bad", [BAD_REQUESTS[k] for k in AUDITED], ids=AUDITED)
def test_a_refused_call_leaves_exactly_one_audit_event_naming_the_client(
    server: Server, admin: httpx.Client, bad: Bad
) -> None:
    """A refusal is recorded: one AuditEvent, outcome 4, `agent[0].who.identifier` the client."""
    with fresh_client(server, bad.role) as (client, client_id):
        assert bad.send(client).status_code == bad.status
    assert only_new_event(admin, client_id)["outcome"] == "4"


BAD_URLS = {
    "read-id-with-nul": ("GET", "Patient/a%00b", 404, "not-found"),
    "history-of-id-with-nul": ("GET", "Patient/a%00b/_history", 404, "not-found"),
    "vread-of-id-with-nul": ("GET", "Patient/a%00b/_history/1", 404, "not-found"),
    "delete-id-with-nul": ("DELETE", "Patient/a%00b", 404, "not-found"),
    "vread-of-a-version-beyond-32-bit": ("GET", f"Patient/{PATIENT_ID}/_history/{2**31}", 404, "not-found"),
    "vread-of-a-huge-version": ("GET", f"Patient/{PATIENT_ID}/_history/{'9' * 30}", 404, "not-found"),
    "vread-of-a-non-ascii-digit": ("GET", f"Patient/{PATIENT_ID}/_history/%D9%A1", 404, "not-found"),
    "search-with-nul": ("GET", "Patient?family=a%00b", 400, "invalid"),
    "search-id-with-nul": ("GET", "Patient?_id=a%00b", 400, "invalid"),
    "search-token-with-nul": ("GET", "Patient?identifier=urn:x|a%00b", 400, "invalid"),
    "history-with-negative-count": ("GET", "Patient/_history?_count=-5", 400, "invalid"),
    "history-with-bad-since": ("GET", "Patient/_history?_since=yesterday", 400, "invalid"),
    "search-with-bad-count": ("GET", "Patient?_count=many", 400, "invalid"),
}


@pytest.mark.parametrize(("method", "url", "status", "code"), BAD_URLS.values(), ids=BAD_URLS.keys())
def test_bad_urls_are_refused_without_a_500(
    server: Server, admin: httpx.Client, method: str, url: str, status: int, code: str
) -> None:
    """Ids and parameters that no stored value can match reach no query the database would refuse."""
    before = server.counts()
    assert_error(admin.request(method, url), status, code)
    assert server.counts() == before


def test_an_unsupported_method_is_405_with_an_operation_outcome(admin: httpx.Client) -> None:
    """Errors are always OperationOutcomes, also for a method the server does not offer."""
    reply = admin.patch(
        f"Patient/{PATIENT_ID}", content=b"[]", headers={"Content-Type": "application/json-patch+json"}
    )
    assert_error(reply, 405, "method-not-allowed")


def test_a_page_far_beyond_the_last_is_empty_not_a_500(admin: httpx.Client) -> None:
    """Contract 2 (Paging): beyond the last page → 200 with no entries, however far beyond."""
    reply = admin.get("Patient", params={"_id": PATIENT_ID, "page": "9" * 25})
    assert reply.status_code == 200
    assert "entry" not in reply.json()


def _not_acceptable(client: httpx.Client) -> httpx.Response:
    return client.get(f"Patient/{PATIENT_ID}", headers={"Accept": "text/html"})


def _body_too_large(client: httpx.Client) -> httpx.Response:
    size = MAX_BODY + 1
    return client.post("Patient", content=oversized_body(size), headers={"Content-Length": str(size)})


def _bundle_too_large(client: httpx.Client) -> httpx.Response:
    return client.post(
        "",
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": "Patient"}}] * 10_001,
        },
    )


EARLY_REFUSALS = {
    "not-acceptable": (_not_acceptable, 406),
    "body-too-large": (_body_too_large, 413),
    "bundle-too-large": (_bundle_too_large, 413),
}


@pytest.mark.parametrize(("send", "status"), EARLY_REFUSALS.values(), ids=EARLY_REFUSALS.keys())
def test_a_call_refused_before_its_body_is_parsed_is_audited_too(
    server: Server, admin: httpx.Client, send: Callable[[httpx.Client], httpx.Response], status: int
) -> None:
    """Refusals for the Accept header or the body size happen early, but are audited all the same."""
    with fresh_client(server, "scheduling-client") as (client, client_id):
        assert send(client).status_code == status
    assert only_new_event(admin, client_id)["outcome"] == "4"


def test_a_refusal_is_rendered_in_the_requested_format(admin: httpx.Client) -> None:
    reply = admin.post("Patient", content=b"<Patient", headers={"Content-Type": XML, "Accept": XML})
    assert_xml_error(reply, 400, "invalid")


# -- successful writes are audited -------------------------------------------------------------------
Write = Callable[[httpx.Client], Callable[[], httpx.Response]]


def _create(admin: httpx.Client) -> Callable[[], httpx.Response]:
    return lambda: admin.post("Patient", json=patient())


def _update(admin: httpx.Client) -> Callable[[], httpx.Response]:
    return lambda: admin.put(f"Patient/{PATIENT_ID}", json=existing(gender="unknown"))


def _update_as_create(admin: httpx.Client) -> Callable[[], httpx.Response]:
    chosen = new_id()
    return lambda: admin.put(f"Patient/{chosen}", json=patient(id=chosen))


def _delete(admin: httpx.Client) -> Callable[[], httpx.Response]:
    created = admin.post("Patient", json=patient()).json()
    return lambda: admin.delete(f"Patient/{created['id']}")


def _transaction(admin: httpx.Client) -> Callable[[], httpx.Response]:
    return lambda: admin.post("", json=transaction(post_entry(patient()), post_entry(patient())))


WRITES: dict[str, tuple[Write, int]] = {
    "create": (_create, 201),
    "update": (_update, 200),
    "update-as-create": (_update_as_create, 201),
    "delete": (_delete, 204),
    "transaction": (_transaction, 200),
}


@pytest.mark.parametrize(("prepare", "status"), WRITES.values(), ids=WRITES.keys())
def test_a_successful_write_leaves_one_audit_event_with_outcome_0(
    server: Server, admin: httpx.Client, prepare: Write, status: int
) -> None:
    """One request, one AuditEvent with outcome 0 (a transaction of several entries included)."""
    with fresh_client(server, "admin") as (client, client_id):
        write = prepare(client)
        before = audit_trail(admin, client_id)
        reply = write()
        assert reply.status_code == status, reply.text
    assert only_new_event(admin, client_id, before)["outcome"] == "0"
