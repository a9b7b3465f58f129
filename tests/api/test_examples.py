"""Official examples are stored and served back equal: every FHIR R4 example of the served types in JSON
and after a round trip through XML, and each resource of the KBV TVS example through XML."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from terminhub.fhir.xml import parse_resource_xml
from tests.api.rest_helpers import FHIR_NS, FHIR_XML, without_server_meta
from tests.support.server import Server

R4_EXAMPLES = Path("/work/shared/fhir-examples/r4")
KBV_EXAMPLE = Path("/work/shared/kbv-examples/TVS-Appointment-searchset-Response1.xml")
EXAMPLE_FILES = sorted(R4_EXAMPLES.glob("*.json"))
XML_IN = {"Content-Type": FHIR_XML}
XML_OUT = {"Accept": FHIR_XML}


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client("admin") as client:
        yield client


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_json(admin: httpx.Client, resource_type: str, resource_id: str) -> dict:
    reply = admin.get(f"{resource_type}/{resource_id}")
    assert reply.status_code == 200, reply.text
    return json.loads(reply.content)  # Python's json: numbers as numbers, as in the files


def put_json(admin: httpx.Client, resource: dict) -> None:
    reply = admin.put(f"{resource['resourceType']}/{resource['id']}", json=resource)
    assert reply.status_code in (200, 201), reply.text


def put_slots_of(admin: httpx.Client, resource: dict) -> None:
    """An Appointment's Slots must exist even for admin (contract 2.2): store the example Slots first."""
    for slot in resource.get("slot", []):
        put_json(admin, load(R4_EXAMPLES / f"{slot['reference'].replace('/', '-')}.json"))


def test_every_served_type_has_examples() -> None:
    assert len(EXAMPLE_FILES) == 89
    assert {p.name.split("-", 1)[0] for p in EXAMPLE_FILES} >= {"Appointment", "Patient", "Slot", "Schedule"}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_an_r4_example_is_served_back_equal_in_json_and_after_an_xml_round_trip(
    admin: httpx.Client, path: Path
) -> None:
    original = load(path)
    resource_type, resource_id = original["resourceType"], original["id"]
    put_slots_of(admin, original)

    reply = admin.put(
        f"{resource_type}/{resource_id}",
        content=path.read_bytes(),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert reply.status_code in (200, 201), reply.text
    assert without_server_meta(read_json(admin, resource_type, resource_id)) == without_server_meta(original)

    as_xml = admin.get(f"{resource_type}/{resource_id}", headers=XML_OUT)
    assert as_xml.status_code == 200, as_xml.text
    reply = admin.put(f"{resource_type}/{resource_id}", content=as_xml.content, headers=XML_IN)
    assert reply.status_code == 200, reply.text
    assert without_server_meta(read_json(admin, resource_type, resource_id)) == without_server_meta(original)


# -- the KBV TVS example -----------------------------------------------------------------------------
def kbv_resources() -> list[tuple[str, str, bytes]]:
    """(type, id, standalone XML) of each resource in the example searchset."""
    root = etree.parse(str(KBV_EXAMPLE)).getroot()
    found = []
    for resource in root.iterfind(f"{{{FHIR_NS}}}entry/{{{FHIR_NS}}}resource/*"):
        resource_type = etree.QName(resource).localname
        resource_id = resource.find(f"{{{FHIR_NS}}}id").get("value")
        found.append((resource_type, resource_id, etree.tostring(resource, encoding="utf-8")))
    return found


KBV_RESOURCES = kbv_resources()


def test_the_kbv_example_holds_an_appointment_with_its_includes() -> None:
    assert {t for t, _, _ in KBV_RESOURCES} >= {"Appointment", "PractitionerRole", "Patient"}


@pytest.mark.parametrize(
    ("resource_type", "resource_id", "xml"), KBV_RESOURCES, ids=[f"{t}-{i}" for t, i, _ in KBV_RESOURCES]
)
def test_a_kbv_resource_stored_through_xml_comes_back_equal(
    admin: httpx.Client, resource_type: str, resource_id: str, xml: bytes
) -> None:
    expected = without_server_meta(parse_resource_xml(xml))

    reply = admin.put(f"{resource_type}/{resource_id}", content=xml, headers=XML_IN)
    assert reply.status_code in (200, 201), reply.text
    assert without_server_meta(read_json(admin, resource_type, resource_id)) == expected

    as_xml = admin.get(f"{resource_type}/{resource_id}", headers=XML_OUT)
    assert as_xml.status_code == 200, as_xml.text
    assert without_server_meta(parse_resource_xml(as_xml.content)) == expected
    assert_same_xml(etree.fromstring(xml), etree.fromstring(as_xml.content))


def assert_same_xml(sent: etree._Element, served: etree._Element) -> None:
    """The served XML has the elements and values sent (whitespace, comments and server meta aside)."""
    assert canonical(sent) == canonical(served)


def canonical(node: etree._Element, path: str = "") -> list[tuple[str, tuple, str]]:
    rows = []
    for child in node:
        if not isinstance(child.tag, str):
            continue
        child_path = f"{path}/{etree.QName(child).localname}"
        if child_path.endswith(("/meta/versionId", "/meta/lastUpdated")) and child_path.count("/") == 2:
            continue
        if child_path != "/meta":
            rows.append((child_path, tuple(sorted(child.attrib.items())), (child.text or "").strip()))
        rows.extend(canonical(child, child_path))
    return rows
