"""Formats (contract 2): content negotiation, JSON and XML in and out, hardened XML input, size limits."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.api.rest_helpers import (
    FHIR_NS,
    FHIR_XML,
    JSON_CONTENT_TYPE,
    MAX_BODY,
    TEST_SYSTEM,
    XML_CONTENT_TYPE,
    assert_error,
    assert_xml_error,
    new_id,
    oversized_body,
    patient,
    search,
    xml_root,
    xml_value,
)
from tests.support.server import Server

JSON_BODY = {"Content-Type": "application/fhir+json"}
XML_BODY = {"Content-Type": "application/fhir+xml"}
JSON_TYPES = ["application/fhir+json", "application/json", "application/json+fhir"]
XML_TYPES = ["application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"]


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client("admin") as client:
        yield client


@pytest.fixture(scope="module")
def stored(admin: httpx.Client) -> dict:
    """One Patient to read in every format."""
    reply = admin.post("Patient", json=patient())
    assert reply.status_code == 201
    return reply.json()


def patient_xml(
    marker: str, resource_id: str | None = None, *, active: str = "true", prolog: str = ""
) -> bytes:
    id_element = f'<id value="{resource_id}"/>' if resource_id else ""
    return (
        f'{prolog}<Patient xmlns="{FHIR_NS}">{id_element}'
        f'<identifier><system value="{TEST_SYSTEM}"/><value value="{marker}"/></identifier>'
        f'<active value="{active}"/><name><family value="Gärtner"/><given value="Jörg"/></name>'
        f'<birthDate value="1971-02-03"/></Patient>'
    ).encode()


def is_json_patient(reply: httpx.Response, resource_id: str) -> bool:
    return (
        reply.headers["content-type"] == JSON_CONTENT_TYPE
        and reply.json()["resourceType"] == "Patient"
        and reply.json()["id"] == resource_id
    )


def is_xml_patient(reply: httpx.Response, resource_id: str) -> bool:
    if reply.headers["content-type"] != XML_CONTENT_TYPE:
        return False
    root = xml_root(reply)
    return root.tag == f"{{{FHIR_NS}}}Patient" and xml_value(root, "id") == resource_id


# -- choosing the response format --------------------------------------------------------------------
@pytest.mark.parametrize(
    "accept",
    JSON_TYPES
    + [f"{t}; charset=utf-8" for t in JSON_TYPES]
    + ["application/fhir+json; fhirVersion=4.0", "application/fhir+json;fhirVersion=4.0;q=0.9"],
)
def test_accept_of_a_json_type_answers_fhir_json(admin: httpx.Client, stored: dict, accept: str) -> None:
    """Every JSON type, with or without parameters, gets `application/fhir+json; charset=utf-8`."""
    reply = admin.get(f"Patient/{stored['id']}", headers={"Accept": accept})
    assert reply.status_code == 200
    assert is_json_patient(reply, stored["id"])


@pytest.mark.parametrize(
    "accept",
    XML_TYPES
    + [f"{t}; charset=utf-8" for t in XML_TYPES]
    + ["application/fhir+xml; fhirVersion=4.0", "application/fhir+xml;fhirVersion=4.0;q=0.9"],
)
def test_accept_of_an_xml_type_answers_fhir_xml(admin: httpx.Client, stored: dict, accept: str) -> None:
    """Every XML type, with or without parameters, gets `application/fhir+xml; charset=utf-8`."""
    reply = admin.get(f"Patient/{stored['id']}", headers={"Accept": accept})
    assert reply.status_code == 200
    assert is_xml_patient(reply, stored["id"])


@pytest.mark.parametrize("accept", ["*/*", "application/*", "", None])
def test_no_or_a_wildcard_accept_answers_json(admin: httpx.Client, stored: dict, accept: str | None) -> None:
    request = admin.build_request("GET", f"Patient/{stored['id']}")
    if accept is None:
        del request.headers["Accept"]
    else:
        request.headers["Accept"] = accept
    reply = admin.send(request)
    assert reply.status_code == 200
    assert is_json_patient(reply, stored["id"])


def test_accept_naming_a_supported_type_among_others_is_served(admin: httpx.Client, stored: dict) -> None:
    """406 only when Accept names none of the supported types."""
    reply = admin.get(f"Patient/{stored['id']}", headers={"Accept": "text/html, application/fhir+xml;q=0.8"})
    assert reply.status_code == 200
    assert is_xml_patient(reply, stored["id"])


@pytest.mark.parametrize("accept", ["text/html", "image/png, text/plain"])
def test_accept_naming_no_supported_type_is_406_in_json(
    admin: httpx.Client, stored: dict, accept: str
) -> None:
    """The OperationOutcome of a 406 is JSON: there is no format the client asked for."""
    assert_error(admin.get(f"Patient/{stored['id']}", headers={"Accept": accept}), 406, "not-acceptable")


@pytest.mark.parametrize("fmt", ["html", "text/html", "turtle"])
def test_a_format_parameter_naming_no_supported_type_is_406(
    admin: httpx.Client, stored: dict, fmt: str
) -> None:
    reply = admin.get(f"Patient/{stored['id']}", params={"_format": fmt}, headers={"Accept": FHIR_XML})
    assert_error(reply, 406, "not-acceptable")


@pytest.mark.parametrize(
    ("fmt", "accept", "expected"),
    [
        ("json", "application/fhir+xml", "json"),
        ("xml", "application/fhir+json", "xml"),
        ("application/fhir+json", "application/fhir+xml", "json"),
        ("application/fhir+xml", "application/fhir+json", "xml"),
        ("application/json", "text/xml", "json"),
        ("text/xml", "application/json", "xml"),
        ("application/xml+fhir", "text/html", "xml"),
        ("application/fhir+xml; fhirVersion=4.0", "application/json", "xml"),
    ],
)
def test_format_parameter_overrides_accept(
    admin: httpx.Client, stored: dict, fmt: str, accept: str, expected: str
) -> None:
    """`_format` (json, xml or a media type) wins over Accept, even over an Accept naming nothing served."""
    reply = admin.get(f"Patient/{stored['id']}", params={"_format": fmt}, headers={"Accept": accept})
    assert reply.status_code == 200
    check = is_json_patient if expected == "json" else is_xml_patient
    assert check(reply, stored["id"])


def test_format_parameter_with_an_unencoded_plus_is_understood(admin: httpx.Client, stored: dict) -> None:
    """`?_format=application/fhir+xml` as typed in a browser arrives with a space for the plus."""
    reply = admin.get(f"Patient/{stored['id']}?_format=application/fhir+xml")
    assert reply.status_code == 200
    assert is_xml_patient(reply, stored["id"])


def test_errors_are_rendered_in_the_requested_format(admin: httpx.Client) -> None:
    reply = admin.get(f"Patient/{new_id()}", headers={"Accept": "application/fhir+xml"})
    assert_xml_error(reply, 404, "not-found")


def test_search_bundles_are_served_as_xml(admin: httpx.Client, stored: dict) -> None:
    reply = admin.get("Patient", params={"_id": stored["id"]}, headers={"Accept": "application/fhir+xml"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == XML_CONTENT_TYPE
    root = xml_root(reply)
    assert root.tag == f"{{{FHIR_NS}}}Bundle"
    assert xml_value(root, "entry/resource/Patient/id") == stored["id"]


# -- request bodies ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    JSON_TYPES + ["application/fhir+json; charset=utf-8", "application/fhir+json; fhirVersion=4.0"],
)
def test_create_accepts_every_json_type(admin: httpx.Client, content_type: str) -> None:
    reply = admin.post("Patient", content=orjson.dumps(patient()), headers={"Content-Type": content_type})
    assert reply.status_code == 201, reply.text


@pytest.mark.parametrize(
    "content_type",
    XML_TYPES + ["application/fhir+xml; charset=utf-8", "application/fhir+xml; fhirVersion=4.0"],
)
def test_create_with_an_xml_body_stores_the_resource(admin: httpx.Client, content_type: str) -> None:
    marker = new_id()
    reply = admin.post("Patient", content=patient_xml(marker), headers={"Content-Type": content_type})
    assert reply.status_code == 201, reply.text
    created = reply.json()
    assert created["identifier"] == [{"system": TEST_SYSTEM, "value": marker}]
    assert created["active"] is True
    assert created["name"] == [{"family": "Gärtner", "given": ["Jörg"]}]
    assert admin.get(f"Patient/{created['id']}").json() == created


def test_update_with_an_xml_body_stores_a_new_version(admin: httpx.Client) -> None:
    marker = new_id()
    created = admin.post("Patient", content=patient_xml(marker), headers=XML_BODY).json()
    reply = admin.put(
        f"Patient/{created['id']}",
        content=patient_xml(marker, created["id"], active="false"),
        headers=XML_BODY | {"Accept": FHIR_XML},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["etag"] == 'W/"2"'
    assert xml_value(xml_root(reply), "active") == "false"
    assert admin.get(f"Patient/{created['id']}").json()["active"] is False


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/fhir+json", b"\xef\xbb\xbf" + orjson.dumps(patient())),
        ("application/fhir+xml", b"\xef\xbb\xbf" + patient_xml(new_id())),
        (
            "application/fhir+xml",
            b'<?xml version="1.0" encoding="ISO-8859-1"?>' + patient_xml(new_id()).decode().encode("latin-1"),
        ),
    ],
    ids=["json-with-bom", "xml-with-bom", "xml-in-latin-1"],
)
def test_bodies_in_other_encodings_of_the_same_format_are_read(
    admin: httpx.Client, content_type: str, body: bytes
) -> None:
    """A UTF-8 byte order mark, or XML that declares another encoding, is still FHIR JSON or XML."""
    reply = admin.post("Patient", content=body, headers={"Content-Type": content_type})
    assert reply.status_code == 201, reply.text
    expected = "Musterfrau" if content_type.endswith("json") else "Gärtner"
    assert reply.json()["name"][0]["family"] == expected


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/pdf"]
)
def test_a_body_of_another_type_is_415(server: Server, admin: httpx.Client, content_type: str) -> None:
    before = server.counts()
    reply = admin.post("Patient", content=orjson.dumps(patient()), headers={"Content-Type": content_type})
    assert_error(reply, 415, "unsupported-media-type")
    assert server.counts() == before


# -- XML hardening -----------------------------------------------------------------------------------
HOSTILE_XML = {
    "doctype": "<!DOCTYPE Patient>",
    "entity-declaration": '<!DOCTYPE Patient [<!ENTITY name "Musterfrau">]>',
    "external-entity": '<!DOCTYPE Patient [<!ENTITY secret SYSTEM "file:///etc/passwd">]>',
    "processing-instruction": '<?xml-stylesheet type="text/xsl" href="http://example.org/x.xsl"?>',
}


@pytest.mark.parametrize("prolog", HOSTILE_XML.values(), ids=HOSTILE_XML.keys())
def test_hostile_xml_is_400_and_stores_nothing(server: Server, admin: httpx.Client, prolog: str) -> None:
    """DOCTYPE, entity declarations and processing instructions are refused before anything is read."""
    marker = new_id()
    before = server.counts()
    reply = admin.post(
        "Patient", content=patient_xml(marker, prolog='<?xml version="1.0"?>' + prolog), headers=XML_BODY
    )
    assert_error(reply, 400, "invalid")
    assert server.counts() == before
    assert search(admin, "Patient", identifier=f"{TEST_SYSTEM}|{marker}") == []


def test_an_entity_reference_in_xml_is_400(server: Server, admin: httpx.Client) -> None:
    body = (
        f'<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY x "y">]><Patient xmlns="{FHIR_NS}">'
        f'<name><family value="&x;"/></name></Patient>'
    ).encode()
    before = server.counts()
    assert_error(admin.post("Patient", content=body, headers=XML_BODY), 400, "invalid")
    assert server.counts() == before


def test_a_processing_instruction_inside_the_resource_is_400(server: Server, admin: httpx.Client) -> None:
    body = f'<Patient xmlns="{FHIR_NS}"><?evil payload?><active value="true"/></Patient>'.encode()
    before = server.counts()
    assert_error(admin.post("Patient", content=body, headers=XML_BODY), 400, "invalid")
    assert server.counts() == before


def test_the_xml_declaration_and_comments_are_accepted(admin: httpx.Client) -> None:
    body = patient_xml(new_id(), prolog='<?xml version="1.0" encoding="UTF-8"?><!-- a comment -->')
    assert admin.post("Patient", content=body, headers=XML_BODY).status_code == 201


# -- size limits -------------------------------------------------------------------------------------
def test_a_body_declared_over_50_mb_is_413(server: Server, admin: httpx.Client) -> None:
    """Content-Length over the limit is refused without reading the body."""
    before = server.counts()
    size = MAX_BODY + 1
    reply = admin.post(
        "Patient",
        content=oversized_body(size),
        headers={"Content-Type": "application/fhir+json", "Content-Length": str(size)},
    )
    assert_error(reply, 413, "too-large")
    assert server.counts() == before


def test_a_streamed_body_over_50_mb_is_413(server: Server, admin: httpx.Client) -> None:
    """Without Content-Length (chunked), the server counts as it reads."""
    before = server.counts()
    reply = admin.post("Patient", content=oversized_body(MAX_BODY + 1024), headers=JSON_BODY)
    assert_error(reply, 413, "too-large")
    assert server.counts() == before


def test_a_bundle_over_10000_entries_is_413(server: Server, admin: httpx.Client) -> None:
    entry = {"request": {"method": "GET", "url": "Patient?_count=1"}}
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry] * 10_001}
    before = server.counts()
    assert_error(admin.post("", json=bundle), 413, "too-large")
    assert server.counts() == before


def test_an_xml_bundle_over_10000_entries_is_413(server: Server, admin: httpx.Client) -> None:
    entry = '<entry><request><method value="GET"/><url value="Patient?_count=1"/></request></entry>'
    body = f'<Bundle xmlns="{FHIR_NS}"><type value="batch"/>{entry * 10_001}</Bundle>'.encode()
    before = server.counts()
    assert_error(admin.post("", content=body, headers=XML_BODY), 413, "too-large")
    assert server.counts() == before
