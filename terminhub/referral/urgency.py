"""Urgency (Dringlichkeit) and the search window it opens (contract 4.1)."""

from __future__ import annotations

from terminhub.fhir.outcome import FhirError

SNOMED = "http://snomed.info/sct"
REQUEST_PRIORITY = "http://hl7.org/fhir/request-priority"
URGENCY_EXTENSION = "urn:terminhub:urgency"
SNOMED_OF = {"asap": "709122007", "urgent": "103391001", "routine": "50811001"}
PRIORITY_OF = {code: priority for priority, code in SNOMED_OF.items()}
HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US


def requested(coding: dict | None, formular: str | None = None) -> str:
    """The priority a caller asks for: default urgent; only urgent and routine can be requested; a PTV 11
    referral is urgent only."""
    if coding is None:
        priority = "urgent"
    else:
        system, code = coding.get("system"), coding.get("code")
        if system == SNOMED and code in PRIORITY_OF:
            priority = PRIORITY_OF[code]
        elif system == REQUEST_PRIORITY and code in SNOMED_OF:
            priority = code
        else:
            raise FhirError(
                "invalid",
                "dringlichkeit must be a SNOMED CT urgency (709122007, 103391001, "
                "50811001) or a http://hl7.org/fhir/request-priority code.",
            )
    if priority == "asap":
        raise FhirError("urgency-not-allowed", "Urgency asap cannot be requested here.")
    if formular == "ptv11" and priority != "urgent":
        raise FhirError("urgency-not-allowed", "A PTV 11 referral is always urgent.")
    return priority


def window_us(priority: str, acute: bool) -> int:
    """How long the window stays open once it opened: 24 h, 35 days (14 for acute psychotherapy), 168 days."""
    if priority == "asap":
        return 24 * HOUR_US
    if priority == "urgent":
        return (14 if acute else 35) * DAY_US
    return 168 * DAY_US


def priority_element(priority: str) -> tuple[str, dict]:
    """`priority` and its `_priority` with the SNOMED urgency extension."""
    return priority, {
        "extension": [
            {"url": URGENCY_EXTENSION, "valueCoding": {"system": SNOMED, "code": SNOMED_OF[priority]}}
        ]
    }
