"""Validation on write. A batch or transaction Bundle's shell (its entries without their resources) is
judged as the whole shell would be, with a refusal that names the entry's own position; a resource is
judged by the model once per shape, and refused exactly where the model refuses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from terminhub.fhir.outcome import FhirError
from terminhub.fhir.validation import _check_elements, _check_model, validate, validate_bundle_shell


def _shell(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _put(resource_id: str, **request: str) -> dict:
    url = f"Slot/{resource_id}"
    return {"fullUrl": f"urn:uuid:{resource_id}", "request": {"method": "PUT", "url": url} | request}


def _refusal(check, shell: dict) -> FhirError:  # noqa: ANN001 - validate or validate_bundle_shell
    with pytest.raises(FhirError) as refused:
        check(shell)
    return refused.value


def test_a_shell_of_many_entries_is_valid_when_each_entry_is() -> None:
    validate_bundle_shell(_shell(*(_put(f"s{n}") for n in range(1000))))


def test_a_refused_entry_is_named_by_its_own_position() -> None:
    shell = _shell(*(_put(f"s{n}") for n in range(5)), _put("s5", ifNoneExist=""), _put("s6"))
    refused = _refusal(validate_bundle_shell, shell)
    whole = _refusal(lambda b: validate(b, "Bundle"), shell)
    assert (refused.code, refused.status) == ("invalid", 400)
    assert refused.diagnostics == whole.diagnostics
    assert "entry.5.request.ifNoneExist" in refused.diagnostics


@pytest.mark.parametrize(
    "entry",
    [
        {"request": {"method": "PUT", "url": "Slot/a"}, "unknown": 1},  # an element R4 does not have
        {"request": {"method": "PUT"}},  # request.url is required
        {"request": {"method": "FETCH", "url": "Slot/a"}},  # not an HTTP verb of the value set
        {"fullUrl": 7, "request": {"method": "PUT", "url": "Slot/a"}},  # a uri is a string
        {"request": {"method": "PUT", "url": "Slot/a\u0001"}},  # no control characters
        None,  # a null entry
    ],
)
def test_what_the_whole_shell_refuses_is_refused(entry: dict | None) -> None:
    shell = _shell(_put("first"), entry, _put("last"))
    whole = _refusal(lambda b: validate(b, "Bundle"), shell)
    refused = _refusal(validate_bundle_shell, shell)
    assert (refused.code, refused.text, refused.diagnostics) == (whole.code, whole.text, whole.diagnostics)


def test_a_uri_is_never_refused_for_its_value() -> None:
    """What masking fullUrl and request.url rests on: the model takes any string as a uri."""
    validate(_shell({"fullUrl": "not a uri at all", "request": {"method": "PUT", "url": " "}}), "Bundle")


# -- a resource is judged by its shape ------------------------------------------------------------------
EXAMPLES = sorted(Path("/work/shared/fhir-examples/r4").glob("*.json"))
# Values each primitive type refuses somewhere: empty, spaced, not a date, a date that does not exist.
BAD_VALUES = ["", " padded ", "not-a-date", "2026-02-30", "2026-12-08T25:00:00+01:00", "a b"]


def _slot(slot_id: str, start: str, **more: object) -> dict:
    return {
        "resourceType": "Slot",
        "id": slot_id,
        "identifier": [{"system": "urn:terminhub:demo-slot", "value": slot_id}],
        "schedule": {"reference": "Schedule/s1"},
        "status": "free",
        "start": start,
        "end": start.replace(":00+", ":10+", 1),
    } | more


def _model_verdict(resource: dict) -> str | None:
    """The model's own judgement of the whole resource: None where it passes, else its diagnostics."""
    try:
        _check_model(resource, resource["resourceType"])
    except FhirError as refused:
        return refused.diagnostics or refused.text
    return None


def _strings(node: object, path: tuple = ()) -> Iterator[tuple]:
    """The path of every string value in a JSON resource (but resourceType)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "resourceType":
                yield from _strings(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, (*path, index))
    elif isinstance(node, str):
        yield path


def _replaced(resource: dict, path: tuple, value: str) -> dict:
    copy = orjson.loads(orjson.dumps(resource))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return copy


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_what_the_shape_passes_the_model_passes(example: Path) -> None:
    """Every string of every official example, replaced by each of BAD_VALUES once its shape is known:
    the resource is refused exactly where the model refuses it, and with the model's own diagnostics."""
    resource = orjson.loads(example.read_bytes())
    validate(resource)  # its shape is now known
    for path in _strings(resource):
        for bad in BAD_VALUES:
            mutated = _replaced(resource, path, bad)
            expected = _model_verdict(mutated)
            try:
                validate(mutated)
            except FhirError as refused:
                if refused.diagnostics:  # the model's refusal, not one of the checks before it
                    assert refused.diagnostics == expected, path
                continue
            assert expected is None, f"{example.stem} {path} = {bad!r} passed: {expected}"


def test_resources_differing_in_their_values_share_a_shape() -> None:
    first = _check_elements(_slot("a1", "2026-12-08T08:30:00+01:00"), "Slot", "Slot", 0)
    other = _check_elements(_slot("b2", "2027-01-04T16:00:00+01:00"), "Slot", "Slot", 0)
    assert first == other
    coded = _slot("c3", "2027-01-04T16:00:00+01:00", status="busy")
    assert _check_elements(coded, "Slot", "Slot", 0) != first  # codes are kept as sent


@pytest.mark.parametrize(
    "change",
    [
        {"start": "2026-12-08T08:30:00"},  # no offset (checked before the model)
        {"start": "2026-12-08"},  # an instant needs a time
        {"end": "2026-12-32T08:30:00+01:00"},  # no such day
        {"id": "a b"},  # not an id
        {"comment": ""},  # FHIR strings are not empty
        {"overbooked": "yes"},  # a boolean is true or false
    ],
)
def test_a_known_shape_does_not_pass_a_bad_value(change: dict) -> None:
    validate(_slot("a1", "2026-12-08T08:30:00+01:00", comment="ok", overbooked=False))
    with pytest.raises(FhirError) as refused:
        validate(_slot("a1", "2026-12-08T08:30:00+01:00", comment="ok", overbooked=False) | change)
    assert refused.value.code == "invalid"
