"""The Parameters reader and writer of the operations (unit tests; no server, no database)."""

from __future__ import annotations

import orjson
import pytest

from terminhub.fhir.capability import OperationParam
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.parameters import (
    ParametersBuilder,
    check_names,
    read_parameters,
    read_query,
    resource_of,
    value_key,
    value_of,
    values_of,
)

DECLARED = (
    OperationParam("status", "in", 1, "1", "code"),
    OperationParam("target", "in", 0, "1", "Reference"),
    OperationParam("ids", "in", 0, "*", "Identifier"),
    OperationParam("count", "in", 0, "1", "integer"),
    OperationParam("flag", "in", 0, "1", "boolean"),
    OperationParam("who", "in", 0, "1", "Patient"),
    OperationParam("result", "out", 1, "1", "Bundle"),
)


def body(*parts: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(parts)}


def refused(call, *args, **kwargs) -> str:  # noqa: ANN001 - any reader
    with pytest.raises(FhirError) as caught:
        call(*args, **kwargs)
    assert (caught.value.code, caught.value.status) == ("invalid", 400)
    return caught.value.text


@pytest.mark.parametrize(
    ("fhir_type", "key"),
    [
        ("code", "valueCode"),
        ("dateTime", "valueDateTime"),
        ("Reference", "valueReference"),
        ("Appointment", "resource"),
        ("Resource", "resource"),
        ("positiveInt", "valuePositiveInt"),
    ],
)
def test_value_key(fhir_type: str, key: str) -> None:
    assert value_key(fhir_type) == key


def test_values_are_read_with_their_type() -> None:
    params = body(
        {"name": "status", "valueCode": "free"},
        {"name": "ids", "valueIdentifier": {"system": "s", "value": "1"}},
        {"name": "ids", "valueIdentifier": {"value": "2"}},
        {"name": "who", "resource": {"resourceType": "Patient"}},
    )
    assert value_of(params, "status", "valueCode") == "free"
    assert values_of(params, "ids", "valueIdentifier") == [{"system": "s", "value": "1"}, {"value": "2"}]
    assert value_of(params, "missing", "valueCode") is None
    assert resource_of(params, "who", "Patient") == {"resourceType": "Patient"}
    inputs = read_parameters(params, DECLARED, "$op")
    assert inputs.one("status") == "free" and len(inputs.all("ids")) == 2 and "target" not in inputs


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"resourceType": "Patient"}, "Parameters"),
        (body({"valueCode": "free"}), "name"),
        (body({"name": "status", "valueString": "free"}), "valueCode"),
        (body({"name": "status", "valueCode": 7}), "malformed"),
        (body({"name": "status", "valueCode": "a"}, {"name": "status", "valueCode": "b"}), "at most"),
        (body({"name": "target", "valueReference": {"reference": "Slot/1"}}), "required"),
        (body({"name": "status", "valueCode": "a"}, {"name": "flag", "valueBoolean": "yes"}), "malformed"),
        (body({"name": "status", "valueCode": "a"}, {"name": "count", "valueInteger": True}), "malformed"),
        (
            body({"name": "status", "valueCode": "a"}, {"name": "who", "resource": {"resourceType": "Slot"}}),
            "Patient",
        ),
        (
            body({"name": "status", "valueCode": "a"}, {"name": "result", "valueString": "x"}),
            "expected: status",
        ),
        (body({"name": "status", "valueCode": "a\x00"}), "malformed"),
        (
            body({"name": "status", "valueCode": "a"}, {"name": "ids", "valueIdentifier": {"value": "\x01"}}),
            "malformed",
        ),
    ],
)
def test_malformed_parameters_are_refused_with_a_clear_text(params: dict, words: str) -> None:
    assert words in refused(read_parameters, params, DECLARED, "$op")


def test_unknown_names_are_listed_with_the_expected_ones() -> None:
    text = refused(check_names, body({"name": "b"}, {"name": "a"}), ["x", "y"], "$op")
    assert text == "Unknown parameters for $op: a, b; expected: x, y."


def test_the_url_reader_gives_the_same_inputs() -> None:
    query = [
        ("status", "free"),
        ("target", "Slot/1"),
        ("ids", "urn:s|1"),
        ("ids", "2"),
        ("count", "3"),
        ("flag", "true"),
        ("_format", "xml"),
    ]
    inputs = read_query(query, DECLARED, "$op")
    assert inputs.one("status") == "free"
    assert inputs.one("target") == {"reference": "Slot/1"}
    assert inputs.all("ids") == [{"system": "urn:s", "value": "1"}, {"value": "2"}]
    assert (inputs.one("count"), inputs.one("flag")) == (3, True)
    assert "expected" in refused(read_query, [("status", "free"), ("other", "1")], DECLARED, "$op")
    assert "whole number" in refused(read_query, [("status", "a"), ("count", "x")], DECLARED, "$op")
    assert "true or false" in refused(read_query, [("status", "a"), ("flag", "1")], DECLARED, "$op")
    assert "POST" in refused(read_query, [("status", "a"), ("who", "Patient/1")], DECLARED, "$op")
    assert "required" in refused(read_query, [], DECLARED, "$op")


def test_the_builder_embeds_stored_bytes_untouched() -> None:
    stored = b'{"resourceType":"Slot","id":"s1","status":"free"}'
    built = (
        ParametersBuilder()
        .resource("slot", stored)
        .value("held-until", "valueDateTime", "2030-01-01T10:00:00Z")
        .part("detail", ParametersBuilder().value("n", "valueInteger", 1))
        .build()
    )
    assert orjson.loads(orjson.dumps(built)) == {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "slot", "resource": {"resourceType": "Slot", "id": "s1", "status": "free"}},
            {"name": "held-until", "valueDateTime": "2030-01-01T10:00:00Z"},
            {"name": "detail", "part": [{"name": "n", "valueInteger": 1}]},
        ],
    }
