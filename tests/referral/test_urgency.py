"""Urgency: what can be requested, and how long the window stays open."""

from __future__ import annotations

import pytest

from terminhub.fhir.outcome import FhirError
from terminhub.referral.urgency import DAY_US, HOUR_US, requested, window_us

SNOMED = "http://snomed.info/sct"
PRIORITY = "http://hl7.org/fhir/request-priority"


@pytest.mark.parametrize(
    ("coding", "expected"),
    [
        (None, "urgent"),
        ({"system": SNOMED, "code": "103391001"}, "urgent"),
        ({"system": SNOMED, "code": "50811001"}, "routine"),
        ({"system": PRIORITY, "code": "routine"}, "routine"),
        ({"system": PRIORITY, "code": "urgent"}, "urgent"),
    ],
)
def test_urgent_and_routine_can_be_requested(coding: dict | None, expected: str) -> None:
    assert requested(coding) == expected


@pytest.mark.parametrize(
    "coding", [{"system": SNOMED, "code": "709122007"}, {"system": PRIORITY, "code": "asap"}]
)
def test_asap_cannot_be_requested(coding: dict) -> None:
    with pytest.raises(FhirError) as refused:
        requested(coding)
    assert refused.value.code == "urgency-not-allowed"


def test_a_ptv11_referral_is_urgent_only() -> None:
    assert requested(None, "ptv11") == "urgent"
    with pytest.raises(FhirError) as refused:
        requested({"system": PRIORITY, "code": "routine"}, "ptv11")
    assert refused.value.code == "urgency-not-allowed"


@pytest.mark.parametrize(
    "coding", [{"system": "urn:other", "code": "urgent"}, {"system": SNOMED, "code": "1"}]
)
def test_other_codings_are_invalid(coding: dict) -> None:
    with pytest.raises(FhirError) as refused:
        requested(coding)
    assert refused.value.code == "invalid"


def test_windows_are_exact_durations() -> None:
    assert window_us("asap", False) == 24 * HOUR_US
    assert window_us("urgent", False) == 35 * DAY_US
    assert window_us("urgent", True) == 14 * DAY_US
    assert window_us("routine", False) == 168 * DAY_US
