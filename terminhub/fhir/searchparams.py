"""The search parameters terminhub serves: name, kind and where their values sit in a resource.

One table drives three things: the index rows written with each resource, the parsing of search
requests, and the CapabilityStatement, so what is declared is what works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"


@dataclass(frozen=True)
class SearchParam:
    """A search parameter: `paths` are dotted JSON paths (lists are walked through)."""

    name: str
    kind: str  # token | reference | date | string | uri | special
    paths: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    description: str = ""
    own: bool = False  # defined by terminhub (served as a SearchParameter resource)
    sortable: bool = False
    expression: str = ""
    extra: dict = field(default_factory=dict)
    pattern: str = ""  # what every value must look like (a regular expression), else 400


def _p(
    name: str,
    kind: str,
    *paths: str,
    targets: tuple[str, ...] = (),
    sortable: bool = False,
    description: str = "",
    own: bool = False,
) -> SearchParam:
    return SearchParam(name, kind, tuple(paths), targets, description, own, sortable)


_ACTOR_TYPES = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
    "Device",
    "HealthcareService",
    "Location",
)

PARAMS: dict[str, dict[str, SearchParam]] = {}


def _define(resource_type: str, *params: SearchParam) -> None:
    PARAMS[resource_type] = {p.name: p for p in params}


_define(
    "Slot",
    _p("schedule", "reference", "schedule", targets=("Schedule",), description="The Schedule of the Slot"),
    _p("start", "date", "start", sortable=True, description="Appointment date/time"),
    _p(
        "status",
        "token",
        "status",
        description="free | busy | busy-unavailable | busy-tentative | entered-in-error",
    ),
    _p(
        "service-type",
        "special",
        "serviceType",
        description="A service the Slot offers (own or its Schedule's)",
    ),
    _p(
        "specialty", "special", "specialty", description="A specialty the Slot offers (own or its Schedule's)"
    ),
    _p("identifier", "token", "identifier"),
    _p("appointment-type", "token", "appointmentType"),
)
_define(
    "Schedule",
    _p(
        "actor",
        "reference",
        "actor",
        targets=(
            "Practitioner",
            "PractitionerRole",
            "Location",
            "HealthcareService",
            "Patient",
            "Device",
            "RelatedPerson",
        ),
    ),
    _p("active", "token", "active"),
    _p("date", "date", "planningHorizon", sortable=True),
    _p("service-type", "token", "serviceType"),
    _p("specialty", "token", "specialty"),
    _p("identifier", "token", "identifier"),
)
_define(
    "Appointment",
    _p("actor", "reference", "participant.actor", targets=_ACTOR_TYPES),
    _p("patient", "reference", "participant.actor", targets=("Patient",)),
    _p("practitioner", "reference", "participant.actor", targets=("Practitioner",)),
    _p("location", "reference", "participant.actor", targets=("Location",)),
    _p("date", "date", "start", sortable=True),
    _p("status", "token", "status"),
    _p("slot", "reference", "slot", targets=("Slot",)),
    _p("based-on", "reference", "basedOn", targets=("ServiceRequest",)),
    _p("identifier", "token", "identifier"),
    _p("service-type", "token", "serviceType"),
    _p("specialty", "token", "specialty"),
    # The practice-sync parameters of contract 5, chains the engine follows at query time (no paths, so
    # nothing is indexed for them).
    SearchParam(
        "bsnr",
        "token",
        description="BSNR (9 digits): Appointments on Slots of Schedules with a PractitionerRole actor whose "
        "Organization carries this number (identifier system " + BSNR_SYSTEM + ").",
        own=True,
        expression="Appointment.slot.resolve().schedule.resolve().actor.resolve().ofType(PractitionerRole)"
        ".organization.resolve().identifier.where(system = '" + BSNR_SYSTEM + "').value",
        pattern="[0-9]{9}",
        extra={"format": "a BSNR of 9 digits"},
    ),
    SearchParam(
        "lanr",
        "token",
        description="ANR (7 digits) or LANR (9 digits): Appointments on Slots of Schedules with a "
        "PractitionerRole actor whose Practitioner has an ANR or LANR (identifier system " + ANR_SYSTEM + ") "
        "with the same first 7 digits.",
        own=True,
        expression="Appointment.slot.resolve().schedule.resolve().actor.resolve().ofType(PractitionerRole)"
        ".practitioner.resolve().identifier.where(system = '" + ANR_SYSTEM + "').value.substring(0, 7)",
        pattern="[0-9]{7}(?:[0-9]{2})?",
        extra={"format": "an ANR of 7 or a LANR of 9 digits"},
    ),
)
_define(
    "AppointmentResponse",
    _p("appointment", "reference", "appointment", targets=("Appointment",)),
    _p("actor", "reference", "actor", targets=_ACTOR_TYPES),
    _p("part-status", "token", "participantStatus"),
    _p("identifier", "token", "identifier"),
)
_define(
    "PractitionerRole",
    _p("organization", "reference", "organization", targets=("Organization",)),
    _p("practitioner", "reference", "practitioner", targets=("Practitioner",)),
    _p("location", "reference", "location", targets=("Location",)),
    _p("specialty", "token", "specialty"),
    _p("service", "reference", "healthcareService", targets=("HealthcareService",)),
    _p("active", "token", "active"),
    _p("role", "token", "code"),
    _p("identifier", "token", "identifier"),
)
_define(
    "HealthcareService",
    _p("organization", "reference", "providedBy", targets=("Organization",)),
    _p("location", "reference", "location", targets=("Location",)),
    _p("service-category", "token", "category"),
    _p("service-type", "token", "type"),
    _p("specialty", "token", "specialty"),
    _p("active", "token", "active"),
    _p("name", "string", "name"),
    _p("identifier", "token", "identifier"),
)
_define(
    "Organization",
    _p("identifier", "token", "identifier"),
    _p("name", "string", "name", "alias"),
    _p("address-postalcode", "string", "address.postalCode"),
    _p("address-city", "string", "address.city"),
    _p("active", "token", "active"),
    _p("partof", "reference", "partOf", targets=("Organization",)),
)
_define(
    "Location",
    _p("address-postalcode", "string", "address.postalCode"),
    _p("address-city", "string", "address.city"),
    _p("organization", "reference", "managingOrganization", targets=("Organization",)),
    _p("near", "special", "position", description="lat|lon|distance|units from Location.position"),
    _p("name", "string", "name", "alias"),
    _p("status", "token", "status"),
    _p("identifier", "token", "identifier"),
)
_define(
    "Practitioner",
    _p("identifier", "token", "identifier"),
    _p("name", "string", "name.text", "name.family", "name.given", "name.prefix", "name.suffix"),
    _p("family", "string", "name.family"),
    _p("given", "string", "name.given"),
    _p("active", "token", "active"),
)
_define(
    "Patient",
    _p("identifier", "token", "identifier"),
    _p("family", "string", "name.family"),
    _p("given", "string", "name.given"),
    _p("name", "string", "name.text", "name.family", "name.given", "name.prefix", "name.suffix"),
    _p("birthdate", "date", "birthDate"),
    _p("gender", "token", "gender"),
)
_define(
    "ServiceRequest",
    _p("identifier", "token", "identifier"),
    _p("status", "token", "status"),
    _p("subject", "reference", "subject", targets=("Patient", "Group", "Location", "Device")),
    _p("authored", "date", "authoredOn", sortable=True),
)
_define(
    "Provenance",
    _p("target", "reference", "target", targets=()),
    _p("recorded", "date", "recorded", sortable=True),
)
_define(
    "AuditEvent",
    _p("date", "date", "recorded", sortable=True),
    _p("outcome", "token", "outcome"),
    _p("agent", "reference", "agent.who", targets=()),
    _p("entity", "reference", "entity.what", targets=()),
    _p("action", "token", "action"),
    _p("type", "token", "type"),
)
_define("OperationDefinition", _p("url", "uri", "url"), _p("code", "token", "code"))
_define("SearchParameter", _p("url", "uri", "url"), _p("code", "token", "code"))

RESOURCE_TYPES: tuple[str, ...] = (
    "Organization",
    "Location",
    "Practitioner",
    "PractitionerRole",
    "HealthcareService",
    "Schedule",
    "Slot",
    "Appointment",
    "AppointmentResponse",
    "Patient",
    "ServiceRequest",
    "Provenance",
    "AuditEvent",
)

# Parameters every type accepts, handled by the search engine itself.
COMMON = ("_id", "_lastUpdated")
RESULT_PARAMS = frozenset(
    {
        "_count",
        "page",
        "_cursor",
        "_sort",
        "_total",
        "_include",
        "_revinclude",
        "_include:iterate",
        "_revinclude:iterate",
        "_format",
        "_summary",
        "_elements",
        "_pretty",
    }
)

INCLUDES: dict[str, tuple[str, ...]] = {
    "Slot": ("schedule",),
    "Schedule": ("actor",),
    "Appointment": ("slot", "patient", "actor"),
    "PractitionerRole": ("practitioner", "organization", "location"),
    "HealthcareService": ("organization", "location"),
    "Provenance": ("target",),
}
REVINCLUDES: tuple[tuple[str, str], ...] = (("Slot", "schedule"), ("Provenance", "target"))


def param(resource_type: str, name: str) -> SearchParam | None:
    return PARAMS.get(resource_type, {}).get(name)


def sortable(resource_type: str) -> dict[str, SearchParam]:
    return {name: p for name, p in PARAMS.get(resource_type, {}).items() if p.sortable}
