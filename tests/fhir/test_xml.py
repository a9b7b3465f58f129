"""The FHIR XML wire format: what terminhub reads and writes when a client speaks XML.

Read as a specification: FHIR XML (https://hl7.org/fhir/R4/xml.html) maps losslessly onto the
FHIR JSON that terminhub stores, in both directions, and hostile XML is refused before it can
make the server read a file or a URL.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from terminhub.fhir import structure
from terminhub.fhir.xml import XmlInputError, parse_resource_xml, resource_to_xml

EXAMPLES = sorted(Path("/work/shared/fhir-examples/r4").glob("*.json"))
KBV_BUNDLE = Path("/work/shared/kbv-examples/TVS-Appointment-searchset-Response1.xml")
FHIR = "http://hl7.org/fhir"
XHTML = "http://www.w3.org/1999/xhtml"
DIV = '<div xmlns="http://www.w3.org/1999/xhtml">'
EXT_URL = "http://example.org/fhir/StructureDefinition/note"


def fhir_xml(body: str, root: str = "Patient") -> bytes:
    """A small FHIR XML document with ``body`` inside a ``root`` resource."""
    return f'<{root} xmlns="{FHIR}">{body}</{root}>'.encode()


def observation_with_value(raw: str) -> bytes:
    """An Observation whose ``valueQuantity.value`` attribute is ``raw``."""
    return fhir_xml(
        f'<status value="final"/><code><text value="w"/></code><valueQuantity><value value="{raw}"/>'
        "</valueQuantity>",
        root="Observation",
    )


def comparable(value: Any) -> Any:
    """JSON made comparable: numbers by value (1 == 1.0), but true never equals 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", Decimal(str(value)))
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def assert_round_trips(resource: dict[str, Any]) -> None:
    """JSON -> XML -> JSON gives the same JSON, with the same JSON types."""
    assert comparable(parse_resource_xml(resource_to_xml(resource))) == comparable(resource)


def canonical_xml(data: bytes) -> bytes:
    """XML reduced to what it means: no insignificant whitespace, no comments (C14N)."""
    parser = etree.XMLParser(remove_blank_text=True, remove_comments=True)
    return etree.tostring(etree.fromstring(data, parser), method="c14n")


def kbv_entry(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    """The first resource of a type in a Bundle."""
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type)


# --- The official R4 examples ----------------------------------------------------------------


def test_all_official_examples_are_present() -> None:
    """The round-trip guarantee below is checked on the 89 official R4 examples."""
    assert len(EXAMPLES) == 89


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_official_example_survives_json_to_xml_and_back(path: Path) -> None:
    """json -> xml -> json gives the original resource (numbers compared as numbers); xml is stable."""
    original = json.loads(path.read_text(encoding="utf-8"))
    xml = resource_to_xml(original)
    back = parse_resource_xml(xml)
    assert comparable(back) == comparable(original)
    assert resource_to_xml(back) == xml


def test_xml_follows_definition_order_whatever_the_json_key_order() -> None:
    """FHIR XML is ordered; JSON is not, so key order must not leak into the XML."""
    original = json.loads((EXAMPLES[0].parent / "Patient-example.json").read_text(encoding="utf-8"))
    reversed_keys = _reverse_keys(copy.deepcopy(original))
    assert list(reversed_keys) != list(original)
    assert resource_to_xml(reversed_keys) == resource_to_xml(original)


def _reverse_keys(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {key: _reverse_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(item) for item in value]
    return value


def test_rendered_xml_has_declaration_and_fhir_namespace() -> None:
    """The document starts with the UTF-8 declaration; the root is the resource type in FHIR's namespace."""
    data = resource_to_xml({"resourceType": "Slot", "id": "s1", "status": "free"})
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = etree.fromstring(data)
    assert root.tag == f"{{{FHIR}}}Slot"
    assert [child.get("value") for child in root] == ["s1", "free"]


# --- The KBV 116117 example (XML as the German clients send it) -----------------------------


@pytest.fixture(scope="module")
def kbv_bundle() -> dict[str, Any]:
    """The KBV searchset Bundle, read from XML."""
    return parse_resource_xml(KBV_BUNDLE.read_bytes())


def test_kbv_bundle_is_stable_through_json_and_xml(kbv_bundle: dict[str, Any]) -> None:
    """xml -> json -> xml -> json gives the same JSON, and writing it twice gives the same bytes."""
    xml_again = resource_to_xml(kbv_bundle)
    assert parse_resource_xml(xml_again) == kbv_bundle
    assert resource_to_xml(parse_resource_xml(xml_again)) == xml_again


def test_kbv_bundle_written_back_is_equivalent_to_the_original_xml(kbv_bundle: dict[str, Any]) -> None:
    """Apart from whitespace and comments, terminhub writes the XML it was given."""
    assert canonical_xml(resource_to_xml(kbv_bundle)) == canonical_xml(KBV_BUNDLE.read_bytes())


def test_kbv_extension_on_family_lands_in_underscore_family(kbv_bundle: dict[str, Any]) -> None:
    """An extension on a primitive goes to ``_family`` next to the value."""
    name = kbv_entry(kbv_bundle, "Patient")["name"][0]
    assert name["family"] == "Schaumberg"
    assert name["_family"] == {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix", "valueString": "von"}
        ]
    }
    assert name["prefix"] == ["Prof. Dr."]
    assert name["_prefix"][0]["extension"][0]["valueCode"] == "AC"


def test_kbv_address_line_with_two_extensions(kbv_bundle: dict[str, Any]) -> None:
    """A repeating primitive (``line``) with extensions: parallel ``line`` and ``_line`` lists."""
    address = kbv_entry(kbv_bundle, "Patient")["address"][0]
    assert address["line"] == ["Siegburger Str. 155"]
    assert [ext["valueString"] for ext in address["_line"][0]["extension"]] == ["Siegburger Str.", "155"]
    assert address["city"] == "Köln"


def test_kbv_appointment_priority_is_an_extension_without_value(kbv_bundle: dict[str, Any]) -> None:
    """The urgency is an extension on ``priority``, which itself has no value."""
    appointment = kbv_entry(kbv_bundle, "Appointment")
    assert "priority" not in appointment
    (urgency,) = appointment["_priority"]["extension"]
    assert urgency["url"].endswith("KBV_EX_116117_TERMINSERVICE_TVS_TERMINSYNCHRONISATION_Urgency")
    assert urgency["valueCoding"]["code"] == "103391001"


def test_kbv_based_on_carries_the_referral_code(kbv_bundle: dict[str, Any]) -> None:
    """The Vermittlungscode arrives as ``basedOn.identifier``."""
    appointment = kbv_entry(kbv_bundle, "Appointment")
    assert appointment["basedOn"] == [
        {
            "identifier": {
                "system": "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode",
                "value": "XN6P-F4HP-Z5KX",
            }
        }
    ]


def test_kbv_bundle_numbers_and_escaped_urls(kbv_bundle: dict[str, Any]) -> None:
    """``total`` is an integer; ``&amp;`` in a value attribute is an ``&`` in JSON."""
    assert kbv_bundle["total"] == 1 and type(kbv_bundle["total"]) is int
    assert kbv_bundle["link"][0]["url"].endswith("XN6PF4HPZ5KX&_count=10")
    assert [entry["search"]["mode"] for entry in kbv_bundle["entry"]] == ["match", "include", "include"]


# --- Hardening: hostile or broken XML is refused --------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    b'<Patient xmlns="http://hl7.org/fhir"><gender value="&lol3;"/></Patient>'
)
NO_DOCTYPE = "DOCTYPE and entity declarations are not allowed"

# name: (document, what the error message says)
HOSTILE_OR_BROKEN: dict[str, tuple[bytes, str]] = {
    "doctype": (b'<?xml version="1.0"?><!DOCTYPE Patient><Patient xmlns="http://hl7.org/fhir"/>', NO_DOCTYPE),
    "billion-laughs": (BILLION_LAUGHS, NO_DOCTYPE),
    "external-entity": (
        b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
        b'<div xmlns="http://www.w3.org/1999/xhtml">&xxe;</div></text></Patient>',
        NO_DOCTYPE,
    ),
    "external-entity-in-attribute": (
        b'<!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<Patient xmlns="http://hl7.org/fhir"><gender value="&xxe;"/></Patient>',
        NO_DOCTYPE,
    ),
    "processing-instruction": (
        b'<?xml-stylesheet href="evil.xsl"?><Patient xmlns="http://hl7.org/fhir"/>',
        "processing instructions are not allowed",
    ),
    "processing-instruction-inside": (
        fhir_xml('<?php echo 1; ?><active value="true"/>'),
        "processing instructions are not allowed",
    ),
    "malformed": (fhir_xml('<active value="true">'), "malformed XML"),
    "empty-body": (b"", "malformed XML"),
    "wrong-root-namespace": (
        b'<Patient xmlns="http://example.org/fhir"><active value="true"/></Patient>',
        "<Patient> is in namespace http://example.org/fhir, expected http://hl7.org/fhir",
    ),
    "no-namespace": (b'<Patient><active value="true"/></Patient>', "<Patient> is in no namespace"),
    "unknown-resource-type": (
        fhir_xml('<family value="x"/>', root="HumanName"),
        "<HumanName> is not a known FHIR resource type",
    ),
    "unknown-element": (fhir_xml('<colour value="red"/>'), "Patient: unexpected element <colour>"),
    "element-in-foreign-namespace": (
        fhir_xml('<x:active xmlns:x="urn:x" value="true"/>'),
        "Patient: unexpected element <active> in namespace urn:x",
    ),
    "bad-boolean": (fhir_xml('<active value="yes"/>'), "Patient.active: 'yes' is not a boolean"),
    "bad-integer": (
        fhir_xml('<multipleBirthInteger value="1.5"/>'),
        "Patient.multipleBirthInteger: '1.5' is not a valid integer",
    ),
    "bad-decimal": (observation_with_value("1,5"), "'1,5' is not a valid decimal"),
    "positive-int-zero": (
        fhir_xml(
            '<status value="proposed"/><minutesDuration value="0"/>'
            '<participant><status value="needs-action"/></participant>',
            root="Appointment",
        ),
        "Appointment.minutesDuration: '0' is out of range for positiveInt",
    ),
    "empty-value": (fhir_xml('<gender value=""/>'), "the value attribute must not be empty"),
    "element-out-of-order": (
        fhir_xml('<gender value="male"/><active value="true"/>'),
        "element <active> is out of order",
    ),
    "single-element-repeated": (
        fhir_xml('<active value="true"/><active value="false"/>'),
        "element <active> may occur only once",
    ),
    "two-choice-types": (
        fhir_xml('<deceasedBoolean value="true"/><deceasedDateTime value="2020"/>'),
        "<deceasedBoolean> and <deceasedDateTime> exclude each other",
    ),
    "text-content": (fhir_xml('<gender value="male">male</gender>'), "unexpected text 'male'"),
    "unknown-attribute": (fhir_xml('<active value="true" colour="red"/>'), "unexpected attribute 'colour'"),
    "primitive-without-value": (fhir_xml("<active/>"), "has neither a value nor extensions"),
    "element-id-as-child": (
        fhir_xml('<name><id value="n1"/><family value="x"/></name>'),
        "Patient.name: unexpected element <id>",
    ),
    "two-resources-in-one-wrapper": (
        fhir_xml("<contained><Patient/><Patient/></contained>"),
        "expected exactly one resource, found 2",
    ),
}


@pytest.mark.parametrize(("data", "message"), HOSTILE_OR_BROKEN.values(), ids=HOSTILE_OR_BROKEN.keys())
def test_hostile_or_broken_xml_is_refused_with_a_readable_reason(data: bytes, message: str) -> None:
    """Each raises XmlInputError (a ValueError) saying where and what, fit for an OperationOutcome."""
    with pytest.raises(XmlInputError) as raised:
        parse_resource_xml(data)
    assert isinstance(raised.value, ValueError)
    assert message in str(raised.value)


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    """Answers with an entity declaration and records every request it gets."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the name http.server wants)
        self.requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'<!ENTITY x "fetched">')

    def log_message(self, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture()
def counting_server() -> Any:
    """A local HTTP server that tells whether the parser fetched anything."""
    _CountingHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _CountingHandler.requests
    server.shutdown()
    server.server_close()


def test_nothing_is_fetched_over_the_network(counting_server: Any) -> None:
    """External DTDs and entities pointing at a URL are refused without a single request."""
    base, requests = counting_server
    documents = [
        f'<!DOCTYPE Patient SYSTEM "{base}/a.dtd"><Patient xmlns="{FHIR}"/>',
        f'<!DOCTYPE p [<!ENTITY % e SYSTEM "{base}/b.dtd"> %e;]><Patient xmlns="{FHIR}"/>',
        f'<!DOCTYPE p [<!ENTITY x SYSTEM "{base}/c">]><Patient xmlns="{FHIR}"><gender value="&x;"/>'
        "</Patient>",
    ]
    for document in documents:
        with pytest.raises(XmlInputError):
            parse_resource_xml(document.encode())
    assert requests == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_nothing_is_read_from_local_files(tmp_path: Path) -> None:
    """A DOCTYPE naming a local file is refused without opening it.

    The file is a named pipe: opening it for reading would block until a writer comes, so a
    parse that is still running after two seconds has tried to read it.
    """
    pipe = tmp_path / "evil.dtd"
    os.mkfifo(pipe)
    outcome: list[BaseException] = []

    def parse() -> None:
        try:
            parse_resource_xml(f'<!DOCTYPE Patient SYSTEM "file://{pipe}"><Patient xmlns="{FHIR}"/>'.encode())
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            outcome.append(exc)

    thread = threading.Thread(target=parse, daemon=True)
    thread.start()
    thread.join(2)
    if thread.is_alive():  # release the blocked reader before failing
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("the parser opened a local file named in a DOCTYPE")
    assert len(outcome) == 1 and isinstance(outcome[0], XmlInputError)


def test_comments_and_schema_location_are_ignored() -> None:
    """Comments and ``xsi:schemaLocation`` carry no FHIR content and are dropped."""
    data = (
        b'<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xsi:schemaLocation="http://hl7.org/fhir patient.xsd"><!-- note --><active value="true"/></Patient>'
    )
    assert parse_resource_xml(data) == {"resourceType": "Patient", "active": True}


# --- Primitives ----------------------------------------------------------------------------


def test_primitive_list_with_extension_on_second_item_only() -> None:
    """``_given`` is a list parallel to ``given``, with null where an item has no extension."""
    data = fhir_xml(
        "<name>"
        '<given value="Peter"/>'
        f'<given value="James"><extension url="{EXT_URL}"><valueString value="middle"/></extension></given>'
        "</name>"
    )
    resource = parse_resource_xml(data)
    assert resource["name"] == [
        {
            "given": ["Peter", "James"],
            "_given": [None, {"extension": [{"url": EXT_URL, "valueString": "middle"}]}],
        }
    ]
    assert canonical_xml(resource_to_xml(resource)) == canonical_xml(data)


def test_primitive_list_item_with_only_an_extension_is_null_in_the_value_list() -> None:
    """An item without value is null in ``given``; items without extension are null in ``_given``."""
    data = fhir_xml(
        f'<name><given value="Peter"/><given id="g2"><extension url="{EXT_URL}"><valueCode value="x"/>'
        "</extension></given></name>"
    )
    name = parse_resource_xml(data)["name"][0]
    assert name == {
        "given": ["Peter", None],
        "_given": [None, {"id": "g2", "extension": [{"url": EXT_URL, "valueCode": "x"}]}],
    }
    assert_round_trips({"resourceType": "Patient", "name": [name]})


def test_primitive_id_and_extension_go_to_the_underscore_property() -> None:
    """``<birthDate id=".." value="..">`` keeps the value in ``birthDate`` and the rest in ``_birthDate``."""
    data = fhir_xml(
        f'<birthDate id="bd" value="1970-03-30"><extension url="{EXT_URL}">'
        '<valueDateTime value="1970-03-30T14:35:45-05:00"/></extension></birthDate>'
    )
    resource = parse_resource_xml(data)
    assert resource["birthDate"] == "1970-03-30"
    assert resource["_birthDate"] == {
        "id": "bd",
        "extension": [{"url": EXT_URL, "valueDateTime": "1970-03-30T14:35:45-05:00"}],
    }
    assert canonical_xml(resource_to_xml(resource)) == canonical_xml(data)


def test_primitive_values_get_their_json_types() -> None:
    """Booleans become true/false, integers int; decimals int without '.', float with it."""
    appointment = parse_resource_xml(
        fhir_xml(
            '<status value="booked"/><priority value="5"/><minutesDuration value="20"/>', root="Appointment"
        )
    )
    assert appointment["priority"] == 5 and type(appointment["priority"]) is int
    assert observation_value("3") == 3 and type(observation_value("3")) is int
    for raw, expected in [("1.50", 1.5), ("-0.25", -0.25), ("1e3", 1000.0)]:
        value = observation_value(raw)
        assert value == expected and type(value) is float


def observation_value(raw: str) -> Any:
    """The JSON value of ``Observation.valueQuantity.value`` read from XML."""
    return parse_resource_xml(observation_with_value(raw))["valueQuantity"]["value"]


def test_decimals_are_written_as_json_has_them() -> None:
    """JSON numbers (and Decimals, to keep trailing zeros) are written without loss."""
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "w"},
        "component": [
            {"code": {"text": "a"}, "valueQuantity": {"value": 0.1}},
            {"code": {"text": "b"}, "valueQuantity": {"value": 72}},
            {"code": {"text": "c"}, "valueQuantity": {"value": Decimal("1.50")}},
        ],
    }
    values = [
        element.get("value")
        for element in etree.fromstring(resource_to_xml(observation)).iter(f"{{{FHIR}}}value")
    ]
    assert values == ["0.1", "72", "1.50"]


def test_attribute_values_are_escaped_and_restored() -> None:
    """Quotes, ampersands, angle brackets and line breaks survive a value attribute."""
    text = 'a "quoted" <tag> & line\nbreak\ttab'
    patient = {"resourceType": "Patient", "name": [{"text": text}]}
    assert_round_trips(patient)


def test_extension_url_and_element_id_are_attributes() -> None:
    """``Extension.url`` and ``Element.id`` are XML attributes, not child elements."""
    patient = {
        "resourceType": "Patient",
        "extension": [{"id": "e1", "url": EXT_URL, "valueBoolean": True}],
        "name": [{"id": "n1", "family": "Chalmers"}],
    }
    root = etree.fromstring(resource_to_xml(patient))
    extension = root.find(f"{{{FHIR}}}extension")
    assert extension.attrib == {"id": "e1", "url": EXT_URL}
    assert root.find(f"{{{FHIR}}}name").get("id") == "n1"
    assert_round_trips(patient)


# --- Narrative ---------------------------------------------------------------------------------


def test_narrative_div_is_the_exact_xhtml_string() -> None:
    """The div becomes a string with ``xmlns`` on the div, as in the FHIR JSON examples."""
    div = f'{DIV}<p class="x">Hello <b>World</b> &amp; &lt;you&gt; &quot;all&quot;<br/></p></div>'
    data = fhir_xml(f'<text><status value="generated"/>{div}</text><active value="true"/>')
    patient = parse_resource_xml(data)
    assert patient["text"] == {"status": "generated", "div": div}
    assert_round_trips(patient)
    written = etree.fromstring(resource_to_xml(patient)).find(f"{{{FHIR}}}text/{{{XHTML}}}div")
    assert written is not None and written.find(f"{{{XHTML}}}p/{{{XHTML}}}b").text == "World"


def test_narrative_div_with_prefixed_namespace_is_normalised() -> None:
    """A div written with an ``xhtml:`` prefix is stored with the default namespace."""
    data = fhir_xml(
        '<text><status value="generated"/>'
        '<h:div xmlns:h="http://www.w3.org/1999/xhtml"><h:p xml:lang="de">Grüß Gott</h:p></h:div></text>'
    )
    assert parse_resource_xml(data)["text"]["div"] == f'{DIV}<p xml:lang="de">Grüß Gott</p></div>'


def test_narrative_div_may_contain_only_xhtml() -> None:
    """Elements of other namespaces inside the narrative are refused, in both directions."""
    foreign = '<div xmlns="http://www.w3.org/1999/xhtml"><x:script xmlns:x="urn:x"/></div>'
    with pytest.raises(XmlInputError):
        parse_resource_xml(fhir_xml(f'<text><status value="generated"/>{foreign}</text>'))
    with pytest.raises(ValueError):
        resource_to_xml({"resourceType": "Patient", "text": {"status": "generated", "div": foreign}})
    with pytest.raises(ValueError):
        resource_to_xml(
            {"resourceType": "Patient", "text": {"status": "generated", "div": "<div>no ns</div>"}}
        )


# --- Nested resources ------------------------------------------------------------------------


def test_contained_resources_are_wrapped_in_an_element_named_after_their_type() -> None:
    """``<contained><Practitioner>..</Practitioner></contained>`` is a plain resource in JSON."""
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "contained": [
            {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Careful"}]},
            {"resourceType": "Organization", "id": "org", "name": "Clinic"},
        ],
        "generalPractitioner": [{"reference": "#doc"}],
        "managingOrganization": {"reference": "#org"},
    }
    root = etree.fromstring(resource_to_xml(patient))
    wrapped = [child[0].tag for child in root.iterfind(f"{{{FHIR}}}contained")]
    assert wrapped == [f"{{{FHIR}}}Practitioner", f"{{{FHIR}}}Organization"]
    assert_round_trips(patient)


def test_parameters_with_nested_resource_and_parts() -> None:
    """Parameters carry resources (wrapped) and parts (nested parameters) at any depth."""
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "slot", "resource": {"resourceType": "Slot", "id": "s1", "status": "free"}},
            {
                "name": "patient",
                "part": [
                    {"name": "birthdate", "valueDate": "1970-01-01"},
                    {"name": "insured", "valueBoolean": True},
                    {"name": "address", "part": [{"name": "postalCode", "valueString": "51105"}]},
                ],
            },
            {"name": "count", "valueInteger": 3},
        ],
    }
    data = resource_to_xml(parameters)
    assert b'<resource><Slot><id value="s1"/><status value="free"/></Slot></resource>' in data
    assert_round_trips(parameters)


def test_bundle_with_entries_and_an_outcome() -> None:
    """Bundle entries hold resources, requests and responses with an OperationOutcome."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {
                    "resourceType": "Appointment",
                    "status": "booked",
                    "participant": [{"status": "accepted"}],
                },
                "response": {"status": "201 Created", "location": "Appointment/1/_history/1"},
            },
            {
                "response": {
                    "status": "409 Conflict",
                    "outcome": {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "conflict", "diagnostics": "slot taken"}],
                    },
                }
            },
        ],
    }
    assert_round_trips(bundle)


# --- Rendering refuses what it cannot write faithfully --------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient", "colour": "red"},
        {"resourceType": "Patient", "name": [{"family": "x", "nickname": "y"}]},
        {"resourceType": "Patient", "_name": [{"id": "x"}]},
        {"resourceType": "Patient", "name": [{"_id": {"id": "x"}}]},
        {"resourceType": "Patient", "active": "true"},
        {"resourceType": "Patient", "multipleBirthInteger": True},
        {"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [None]}]},
        {"resourceType": "Unicorn"},
        {"name": "no resourceType"},
    ],
    ids=[
        "unknown-property",
        "unknown-nested-property",
        "underscore-on-complex",
        "underscore-on-attribute",
        "string-for-boolean",
        "boolean-for-integer",
        "parallel-lists-differ",
        "unknown-resource-type",
        "missing-resource-type",
    ],
)
def test_rendering_refuses_unknown_or_mistyped_properties(resource: dict[str, Any]) -> None:
    """The server renders validated resources only; anything else is a bug and raises ValueError."""
    with pytest.raises(ValueError):
        resource_to_xml(resource)


# --- Structure metadata and speed ------------------------------------------------------------


def test_structure_describes_order_lists_primitives_and_choices() -> None:
    """The metadata driving the conversion: definition order, cardinality, kinds, choice groups."""
    patient = structure.type_def("Patient")
    names = [element.name for element in patient.elements]
    assert names[:8] == [
        "id",
        "meta",
        "implicitRules",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
    ]
    assert patient.by_name["name"].is_list and patient.by_name["name"].fhir_type == "HumanName"
    assert patient.by_name["active"].kind == structure.BOOLEAN
    assert patient.by_name["deceasedDateTime"].choice == "deceased"
    assert patient.by_name["contained"].kind == structure.RESOURCE
    assert structure.type_def("Extension").by_name["url"].is_attribute
    assert structure.type_def("Narrative").by_name["div"].kind == structure.XHTML
    assert structure.is_resource_type("Slot") and not structure.is_resource_type("HumanName")
    assert not structure.is_resource_type("DomainResource") and not structure.is_resource_type("../etc")


def test_rendering_a_bundle_of_1000_slots_takes_well_under_a_second() -> None:
    """The slot search is the hottest path; XML must not make it slow."""
    slot = json.loads((EXAMPLES[0].parent / "Slot-example.json").read_text(encoding="utf-8"))
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1000,
        "entry": [
            {
                "fullUrl": f"https://example.org/fhir/Slot/{n}",
                "resource": {**slot, "id": str(n)},
                "search": {"mode": "match"},
            }
            for n in range(1000)
        ],
    }
    resource_to_xml(bundle)  # warm the structure caches
    started = time.perf_counter()
    data = resource_to_xml(bundle)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    assert parse_resource_xml(data) == bundle
