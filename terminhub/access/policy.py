"""Who may see and do what (contract 2.2), in one place that every face asks.

`Policy.scope(type)` is the reusable query filter: a Select of the ids of `type` the caller may see, or
None for all. Faces never decide access themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, false, select

from terminhub.fhir.outcome import FhirError
from terminhub.fhir.searchparams import BSNR_SYSTEM
from terminhub.store import feed, schema
from terminhub.store.search import referring

S = schema.search_index
R = schema.resources

DIRECTORY = frozenset({"Organization", "Location", "Practitioner", "PractitionerRole", "HealthcareService"})
SCHEDULING = frozenset({"Schedule", "Slot"})
REFERRAL_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode"
SERVER_WRITTEN = frozenset({"Provenance", "AuditEvent"})
DEFINITIONS = frozenset({"OperationDefinition", "SearchParameter"})
_THIRD_PARTY_OPERATIONS = (
    "termine_suchen",
    "termin_buchen",
    "termin_absagen",
    "buchungsinformationen_abrufen",
    "vermittlungscodestatus_abrufen",
)
# The operation rows of 2.2: operation code -> the roles that may call it (scopes are checked by the
# operation). An operation not listed here is refused to everyone.
OPERATION_ROLES: dict[str, frozenset[str]] = {
    "hold": frozenset({"admin", "scheduling-client"}),
    "findHSP": frozenset({"admin", "scheduling-client"}),
    "book": frozenset({"admin", "scheduling-client"}),
    "slotstatus_aktualisieren": frozenset({"admin", "practice"}),
    "vermittlungscode_anfordern": frozenset({"referrer", "third-party"}),
    **dict.fromkeys(_THIRD_PARTY_OPERATIONS, frozenset({"third-party"})),
}


@dataclass(frozen=True)
class Caller:
    """The authenticated client as the policy sees it."""

    client_id: str
    role: str
    name: str
    bsnrs: tuple[str, ...] = ()


class Policy:
    """The role table of 2.2 for one caller."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.role = caller.role

    # -- reading -------------------------------------------------------------------------------------
    def check_read(self, resource_type: str) -> None:
        """403 when the role may never read this type (by id)."""
        if not self._may_read(resource_type):
            raise FhirError("forbidden", f"The role {self.role} may not read {resource_type}.")

    def check_search(self, resource_type: str) -> None:
        """403 when the role may not search this type (third parties read by id only)."""
        self.check_read(resource_type)
        if self.role == "third-party":
            raise FhirError(
                "forbidden",
                f"The role third-party may not search {resource_type}; use $termine_suchen to find Slots.",
            )

    def _may_read(self, resource_type: str) -> bool:
        role = self.role
        if resource_type in DEFINITIONS or role == "admin":
            return True
        if role == "practice":
            return resource_type not in ("AuditEvent",)
        if role == "third-party":
            return resource_type in DIRECTORY | SCHEDULING
        if role == "scheduling-client":
            return resource_type in DIRECTORY | SCHEDULING | {"Appointment", "Patient", "AppointmentResponse"}
        return False

    def scope(self, resource_type: str) -> Select | None:
        """The ids of `resource_type` this caller may see; None means all of them."""
        if self.role in ("admin", "third-party") or resource_type in DEFINITIONS:
            return None
        if self.role == "practice":
            return practice_scope(self.caller.bsnrs, resource_type)
        if self.role == "scheduling-client":
            return self._scheduling_client_scope(resource_type)
        return select(R.c.id).where(false())

    def _scheduling_client_scope(self, resource_type: str) -> Select | None:
        if resource_type in DIRECTORY | SCHEDULING:
            return None
        mine = select(R.c.id).where(R.c.type == "Appointment", R.c.created_by == self.caller.client_id)
        if resource_type == "Appointment":
            return mine
        if resource_type == "Patient":
            created = select(R.c.id).where(R.c.type == "Patient", R.c.created_by == self.caller.client_id)
            in_mine = _refs_from("Appointment", "patient", "Patient", mine)
            # UNION ALL: a membership test stops at the first arm that finds the id
            return created.union_all(in_mine)
        if resource_type == "AppointmentResponse":
            return referring("AppointmentResponse", "appointment", "Appointment", mine)
        return select(R.c.id).where(false())

    # -- operations ----------------------------------------------------------------------------------
    def check_operation(self, name: str) -> None:
        """403 unless the role may call the operation `name` (with or without its `$`) at all."""
        code = name.removeprefix("$")
        if self.role not in OPERATION_ROLES.get(code, frozenset()):
            raise FhirError("forbidden", f"The role {self.role} may not call ${code}.")

    # -- writing -------------------------------------------------------------------------------------
    def check_write(self, resource_type: str, interaction: str, resource: dict | None = None) -> None:
        """405 for interactions not offered to this role or type, 403 for types the role may not write.

        `interaction` is create, update, update-as-create or delete.
        """
        if resource_type in SERVER_WRITTEN:
            raise FhirError("method-not-allowed", f"{resource_type} is written by the server only.")
        if resource_type in DEFINITIONS:
            raise FhirError("method-not-allowed", f"{resource_type} resources are defined by the server.")
        if resource_type == "ServiceRequest" and is_referral(resource):
            raise FhirError(
                "method-not-allowed", "Referral codes are issued and changed by their operations only."
            )
        if self.role == "admin":
            return
        if interaction == "update-as-create":
            raise FhirError("method-not-allowed", "Only admin may create a resource with a chosen id.")
        if resource_type == "Appointment" and interaction == "create":
            raise FhirError("method-not-allowed", "Appointments are booked with $book or $termin_buchen.")
        if resource_type == "Slot" and interaction == "update":
            raise FhirError("method-not-allowed", "Slots change only through the booking operations.")
        if not self._may_write(resource_type, interaction):
            raise FhirError("forbidden", f"The role {self.role} may not {interaction} {resource_type}.")

    def _may_write(self, resource_type: str, interaction: str) -> bool:
        if self.role == "scheduling-client":
            return (
                (resource_type == "Patient" and interaction in ("create", "update"))
                or (resource_type == "Appointment" and interaction == "update")
                or (resource_type == "AppointmentResponse" and interaction == "create")
            )
        if self.role == "practice":
            return (
                (resource_type == "Schedule" and interaction in ("create", "update"))
                or (resource_type == "Slot" and interaction in ("create", "delete"))
                or (resource_type == "Appointment" and interaction == "update")
                or (resource_type == "AppointmentResponse" and interaction == "create")
            )
        return False

    @property
    def checks_references(self) -> bool:
        """Admin writes are stored as sent; everyone else may refer only to what it can see."""
        return self.role != "admin"


def is_referral(resource: dict | None) -> bool:
    if not resource:
        return False
    identifiers = resource.get("identifier") or []
    return any(isinstance(i, dict) and i.get("system") == REFERRAL_SYSTEM for i in identifiers)


def _refs_from(source: str, param: str, target_type: str, ids: Select) -> Select:
    """Ids of `target_type` referenced by `param` of the `source` resources in `ids`. The target type lets
    a test of one id find its referrers through ix_search_ref instead of reading all of `ids`."""
    return select(S.c.ref_id).where(
        S.c.type == source, S.c.param == param, S.c.ref_type == target_type, S.c.id.in_(ids)
    )


def practice_scope(bsnrs: tuple[str, ...], resource_type: str) -> Select:
    """The practice scope chain of 2.2, as a query over the index (reused by every face); its change feed
    is what was recorded for it when each change was written (section 5)."""
    if resource_type == "Provenance":
        return feed.owned_by(bsnrs)
    organizations = select(S.c.id).where(
        S.c.type == "Organization",
        S.c.param == "identifier",
        S.c.system == BSNR_SYSTEM,
        S.c.code.in_(list(bsnrs) or ["-"]),
    )
    if resource_type == "Organization":
        return organizations
    locations = referring("Location", "organization", "Organization", organizations)
    roles = referring("PractitionerRole", "organization", "Organization", organizations)
    chain: dict[str, Select] = {
        "Location": locations,
        "PractitionerRole": roles,
        "Practitioner": _refs_from("PractitionerRole", "practitioner", "Practitioner", roles),
        "HealthcareService": referring("HealthcareService", "organization", "Organization", organizations),
    }
    if resource_type in chain:
        return chain[resource_type]
    schedules = select(S.c.id).where(
        S.c.type == "Schedule",
        S.c.param == "actor",
        ((S.c.ref_type == "PractitionerRole") & S.c.ref_id.in_(roles))
        | ((S.c.ref_type == "Location") & S.c.ref_id.in_(locations)),
    )
    if resource_type == "Schedule":
        return schedules
    slots = referring("Slot", "schedule", "Schedule", schedules)
    if resource_type == "Slot":
        return slots
    appointments = referring("Appointment", "slot", "Slot", slots)
    if resource_type == "Appointment":
        return appointments
    if resource_type == "Patient":
        return _refs_from("Appointment", "patient", "Patient", appointments)
    if resource_type == "ServiceRequest":
        return _refs_from("Appointment", "based-on", "ServiceRequest", appointments)
    if resource_type == "AppointmentResponse":
        return referring("AppointmentResponse", "appointment", "Appointment", appointments)
    return select(R.c.id).where(false())
