"""Patient identifier systems whose format is checked (contract 3): the value must look right."""

from __future__ import annotations

import re

from terminhub.fhir.outcome import FhirError

FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "http://fhir.de/sid/gkv/kvid-10": (re.compile(r"^[A-Z][0-9]{9}$"), "one capital letter and 9 digits"),
    "urn:oid:1.2.40.0.10.1.4.3.1": (re.compile(r"^[0-9]{10}$"), "10 digits"),
    "urn:oid:1.2.752.129.2.1.3.1": (re.compile(r"^[0-9]{12}$"), "12 digits"),
}


def check_patient_identifiers(resource: dict) -> None:
    """400 `invalid` for a German KVNR, Austrian social security or Swedish personal identity number
    of the wrong form; identifiers of other systems are stored unchecked."""
    if resource.get("resourceType") != "Patient":
        return
    for identifier in resource.get("identifier") or []:
        rule = FORMATS.get(identifier.get("system", ""))
        if rule and not rule[0].match(str(identifier.get("value", ""))):
            raise FhirError(
                "invalid",
                f"An identifier of system {identifier['system']} must be {rule[1]}.",
                diagnostics=f"value: {identifier.get('value')!r}",
            )
