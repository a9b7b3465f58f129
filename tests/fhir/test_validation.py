"""Validation of a batch or transaction Bundle's shell (its entries without their resources): judged as
the whole shell would be, with a refusal that names the entry's own position."""

from __future__ import annotations

import pytest

from terminhub.fhir.outcome import FhirError
from terminhub.fhir.validation import validate, validate_bundle_shell


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
