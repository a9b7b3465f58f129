"""What the black-box REST tests share: fresh ids, small resources, and the checks of contract 2 and 7."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from lxml import etree

from tests.support.server import FHIR_JSON, FHIR_XML, Server

FHIR_NS = "http://hl7.org/fhir"
ERROR_SYSTEM = "urn:terminhub:error"
CLIENT_SYSTEM = "urn:terminhub:client"
TEST_SYSTEM = "urn:terminhub:test"
MAX_BODY = 50 * 1024 * 1024
JSON_CONTENT_TYPE = "application/fhir+json; charset=utf-8"
XML_CONTENT_TYPE = "application/fhir+xml; charset=utf-8"
# The R4 IssueType value set (http://hl7.org/fhir/R4/valueset-issue-type.html).
R4_ISSUE_CODES = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "invariant",
        "security",
        "login",
        "unknown",
        "expired",
        "forbidden",
        "suppressed",
        "processing",
        "not-supported",
        "duplicate",
        "multiple-matches",
        "not-found",
        "deleted",
        "too-long",
        "code-invalid",
        "extension",
        "too-costly",
        "business-rule",
        "conflict",
        "transient",
        "lock-error",
        "no-store",
        "exception",
        "timeout",
        "incomplete",
        "throttled",
        "informational",
    }
)

__all__ = ["FHIR_JSON", "FHIR_XML"]


def new_id() -> str:
    """A fresh, valid FHIR id, so that tests never meet each other's data on the shared server."""
    return str(uuid.uuid4())


def patient(marker: str | None = None, **elements: Any) -> dict:
    """A small valid Patient, findable by `identifier=urn:terminhub:test|<marker>`."""
    resource: dict = {
        "resourceType": "Patient",
        "identifier": [{"system": TEST_SYSTEM, "value": marker or new_id()}],
        "active": True,
        "name": [{"family": "Musterfrau", "given": ["Erika"]}],
        "birthDate": "1964-08-12",
    }
    resource.update(elements)
    return resource


def without_server_meta(resource: dict) -> dict:
    """The resource without what the server stamps (meta.versionId, meta.lastUpdated)."""
    copy = dict(resource)
    meta = {k: v for k, v in (copy.pop("meta", None) or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        copy["meta"] = meta
    return copy


def xml_root(response: httpx.Response) -> etree._Element:
    """The root element of an XML response (parsed without DTDs or entities)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(response.content, parser)


def xml_value(root: etree._Element, path: str) -> str | None:
    """The `value` attribute at a slash-separated path of FHIR elements below `root`."""
    node = root.find("/".join(f"{{{FHIR_NS}}}{step}" for step in path.split("/")))
    return None if node is None else node.get("value")


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    """A refusal as contract 2 (Errors) and 7 describe it: status, an OperationOutcome, the error code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON_CONTENT_TYPE
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error"
    assert issue["code"] in R4_ISSUE_CODES
    assert isinstance(issue["details"]["text"], str) and issue["details"]["text"].strip()
    assert {"system": ERROR_SYSTEM, "code": code} in [
        {"system": c.get("system"), "code": c.get("code")} for c in issue["details"]["coding"]
    ]
    return outcome


def assert_xml_error(response: httpx.Response, status: int, code: str) -> None:
    """The same refusal, rendered as FHIR XML."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == XML_CONTENT_TYPE
    root = xml_root(response)
    assert root.tag == f"{{{FHIR_NS}}}OperationOutcome"
    assert xml_value(root, "issue/severity") == "error"
    assert xml_value(root, "issue/code") in R4_ISSUE_CODES
    assert xml_value(root, "issue/details/text")
    assert xml_value(root, "issue/details/coding/system") == ERROR_SYSTEM
    assert xml_value(root, "issue/details/coding/code") == code


def search(client: httpx.Client, resource_type: str, **params: str) -> list[dict]:
    """The matching resources of one search page."""
    reply = client.get(resource_type, params=params)
    assert reply.status_code == 200, reply.text
    return matches(reply.json())


def matches(bundle: dict) -> list[dict]:
    """The resources of a searchset Bundle with search.mode `match`."""
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]


@contextmanager
def fresh_client(server: Server, role: str) -> Iterator[tuple[httpx.Client, str]]:
    """A client registered for one test (and its id), so that the AuditEvents naming it are exactly those
    its requests left, whatever other tests do to the shared server and its clock."""
    cred = server.add_client(role, f"rest-tests {role} {new_id()}")
    headers = {"Authorization": f"Bearer {server.token_for(cred)}", "Accept": FHIR_JSON}
    with httpx.Client(base_url=server.fhir, headers=headers, timeout=60) as client:
        yield client, cred.client_id


def audit_trail(admin: httpx.Client, client_id: str) -> dict[str, dict]:
    """The AuditEvents that name this client as their agent, by id."""
    params = {"agent:identifier": f"{CLIENT_SYSTEM}|{client_id}", "_count": "1000"}
    reply = admin.get("AuditEvent", params=params)
    assert reply.status_code == 200, reply.text
    return {event["id"]: event for event in matches(reply.json())}


def only_new_event(admin: httpx.Client, client_id: str, before: dict[str, dict] | None = None) -> dict:
    """The one AuditEvent this client's requests left since `before` (fails unless there is exactly one)."""
    known = before or {}
    new = [event for event_id, event in audit_trail(admin, client_id).items() if event_id not in known]
    assert len(new) == 1, new
    event = new[0]
    assert event["agent"][0]["who"]["identifier"] == {"system": CLIENT_SYSTEM, "value": client_id}
    return event


def oversized_body(size: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """Exactly `size` bytes of JSON-ish filler, produced lazily so that the test holds no 50 MB buffer."""
    head = b'{"resourceType": "Patient", "text": "'
    yield head
    left = size - len(head)
    block = b"x" * chunk
    while left > 0:
        yield block[: min(chunk, left)]
        left -= chunk
