"""The Austrian scheduling face (contract 3; HL7 Austria Scheduling IG, served on R4).

`POST Slot/$hold`, `POST Appointment/$book` and `GET|POST HealthcareService/$findHSP`. The face reads
Parameters, resolves what they name as the caller may see it, and leaves every decision about a Slot to
the booking core; the declarations below are both what the reader checks and what the served
OperationDefinitions say. Importing the module registers the operations (app.py does).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from terminhub.api import fhir_endpoint
from terminhub.api.context import Context, Reply
from terminhub.api.fhir_endpoint import Call
from terminhub.api.find_hsp import find_providers, provider_query
from terminhub.api.idempotent import replay_or_run
from terminhub.api.references import UNRESOLVED, check_references
from terminhub.booking.offer import offer
from terminhub.booking.service import Booker, BookingService
from terminhub.clock import instant
from terminhub.fhir import capability, media, searchparams
from terminhub.fhir.capability import Operation, OperationParam
from terminhub.fhir.outcome import FhirError, information
from terminhub.fhir.parameters import Inputs, ParametersBuilder, read_parameters, read_query
from terminhub.fhir.search_request import DEFAULT_COUNT, MAX_COUNT, Criterion, SearchRequest
from terminhub.fhir.validation import valid_id, validate
from terminhub.store.indexer import split_reference
from terminhub.store.repository import Stored

AT_DEFINITIONS = "http://hl7.at/fhir/TC-FHIR-AG-Scheduling-R5/R5/OperationDefinition/"
HOLD_STATUSES = ("busy-tentative", "free")


def _param(name: str, use: str, card: tuple[int, str], fhir_type: str, documentation: str) -> OperationParam:
    return OperationParam(name, use, card[0], card[1], fhir_type, documentation)


HOLD_PARAMS = (
    _param("slot-reference", "in", (0, "1"), "Reference", "The Slot (Slot/<id>); or give slot-identifier."),
    _param(
        "slot-identifier",
        "in",
        (0, "*"),
        "Identifier",
        "Business identifiers of the Slot; together they must find exactly one Slot.",
    ),
    _param(
        "slot-status",
        "in",
        (1, "1"),
        "code",
        "busy-tentative: hold the Slot (the holder may renew once); free: release the caller's hold.",
    ),
    _param("slot", "out", (1, "1"), "Slot", "The Slot as now stored (busy-tentative or free)."),
    _param("held-until", "out", (0, "1"), "dateTime", "When the hold ends; holds only."),
    _param("outcome", "out", (1, "1"), "OperationOutcome", "What happened (severity information)."),
)
BOOK_PARAMS = (
    _param(
        "appointment-resource",
        "in",
        (1, "1"),
        "Appointment",
        "The Appointment to book: status proposed, exactly one slot, at least one Patient participant.",
    ),
    _param(
        "appointment",
        "out",
        (1, "1"),
        "Appointment",
        "The stored Appointment: booked, or pending where the Schedule needs confirmation.",
    ),
    _param("outcome", "out", (1, "1"), "OperationOutcome", "What happened (severity information)."),
)
FIND_PARAMS = (
    _param(
        "healthcareService-reference", "in", (0, "1"), "Reference", "HealthcareService/<id> (by GET too)."
    ),
    _param(
        "healthcareService-category",
        "in",
        (0, "1"),
        "string",
        "Token system|code of HealthcareService.category.",
    ),
    _param(
        "healthcareService-type", "in", (0, "1"), "string", "Token system|code of HealthcareService.type."
    ),
    _param(
        "healthcareService-specialty",
        "in",
        (0, "1"),
        "string",
        "Token system|code of HealthcareService.specialty.",
    ),
    _param(
        "healthcareService-location",
        "in",
        (0, "*"),
        "Reference",
        "Location/<id> where the service is offered.",
    ),
    _param(
        "healthcareService-zipCodeArea",
        "in",
        (0, "*"),
        "string",
        "Postal-code prefix of the service's Locations, else of its providedBy Organization.",
    ),
    _param(
        "available-from",
        "in",
        (0, "1"),
        "dateTime",
        "Only services with a free Slot starting at or after this (stands in for R5 Availability).",
    ),
    _param(
        "available-until", "in", (0, "1"), "dateTime", "Only services with a free Slot starting before this."
    ),
    _param(
        "result",
        "out",
        (1, "1"),
        "Bundle",
        "searchset: the matching active HealthcareServices (match) with their Organization, Locations, "
        "PractitionerRoles offering their codings and those roles' Practitioners (include).",
    ),
)
FIND_REQUIRED = "At least one of healthcareService-reference, -category, -type or -specialty is required."

HOLD = Operation(
    code="hold",
    name="Hold_Slot_Operation",
    resource=("Slot",),
    system=False,
    type=True,
    instance=False,
    url=AT_DEFINITIONS + "slot-hold",
    description="Hold a free Slot for the calling client for TERMINHUB_HOLD_MINUTES (renewable once), or "
    "release the caller's hold. Accepts Idempotency-Key.",
    parameters=HOLD_PARAMS,
    affects_state=True,
)
BOOK = Operation(
    code="book",
    name="Book_Appointment_Operation",
    resource=("Appointment",),
    system=False,
    type=True,
    instance=False,
    url=AT_DEFINITIONS + "appointment-book",
    description="Book a proposed Appointment on one free Slot (or one held by the caller). A refusal is an "
    "error response and stores nothing. Accepts Idempotency-Key.",
    parameters=BOOK_PARAMS,
    affects_state=True,
)
FIND_HSP = Operation(
    code="findHSP",
    name="Find_HealthcareService_Provider",
    resource=("HealthcareService",),
    system=False,
    type=True,
    instance=False,
    url=AT_DEFINITIONS + "healthcareService-provider-find",
    description="Find active HealthcareServices and their providers. " + FIND_REQUIRED + " _count limits "
    "the services returned (default 50, at most 1000).",
    parameters=FIND_PARAMS,
    affects_state=False,
)


# -- $hold ----------------------------------------------------------------------------------------------
def hold(ctx: Context, call: Call) -> Reply:
    """Hold (or renew once) or release a Slot for the calling client."""
    body = _operation_body(ctx, call, HOLD, "Slot")
    return replay_or_run(ctx, call, body, lambda: _hold(ctx, body))


def _hold(ctx: Context, body: dict) -> Reply:
    inputs = read_parameters(body, HOLD_PARAMS, "$hold")
    status = inputs.one("slot-status")
    if status not in HOLD_STATUSES:
        raise FhirError("invalid", "slot-status must be busy-tentative (hold) or free (release).")
    slot = _slot_to_hold(ctx, inputs)
    core, booker = _core(ctx), _booker(ctx)
    out = ParametersBuilder()
    if status == "free":
        released = core.release(slot, booker)
        out.resource("slot", _content(released))
        text = "The Slot is not held by you (any more)."
    else:
        held = core.hold(slot, booker)
        out.resource("slot", _content(held.slot))
        out.value("held-until", "valueDateTime", instant(held.held_until))
        text = f"The Slot is held for you until {instant(held.held_until)}."
    return Reply(200, out.resource("outcome", information(text)).build())


def _slot_to_hold(ctx: Context, inputs: Inputs) -> Stored:
    """The one Slot named by slot-reference and/or slot-identifier (they must agree)."""
    reference, identifiers = inputs.one("slot-reference"), inputs.all("slot-identifier")
    if reference is None and not identifiers:
        raise FhirError("invalid", "Name the Slot with slot-reference or slot-identifier.")
    named = set()
    if reference is not None:
        named.add(_slot_of_reference(ctx, reference))
    if identifiers:
        named.add(_slot_by_identifiers(ctx, identifiers))
    if len(named) > 1:
        raise FhirError("invalid", "slot-reference and slot-identifier name different Slots.")
    return _visible_slot(ctx, named.pop())


def _slot_of_reference(ctx: Context, reference: dict) -> str:
    """A literal reference `Slot/<id>`, or a logical one by identifier."""
    logical = reference.get("identifier")
    if "reference" not in reference and isinstance(logical, dict):
        return _slot_by_identifiers(ctx, [logical])
    return _reference_id(ctx, reference.get("reference"), "Slot", "slot-reference")


def _slot_by_identifiers(ctx: Context, identifiers: list[dict]) -> str:
    """The id of the one visible Slot carrying all these identifiers: 404 for none, 400 for several."""
    values = []
    for identifier in identifiers:
        value, system = identifier.get("value"), identifier.get("system")
        if not isinstance(value, str) or not value:
            raise FhirError("invalid", "A slot-identifier needs a value.")
        values.append(f"{system}|{value}" if system else value)
    param = searchparams.param("Slot", "identifier")
    criteria = [Criterion("identifier", None, (v,), param) for v in values]
    matches = ctx.engine().run(SearchRequest("Slot", criteria, count=2)).matches
    if not matches:
        raise FhirError("not-found", "No Slot you can see has this identifier.")
    if len(matches) > 1:
        raise FhirError("invalid", "slot-identifier does not resolve to exactly one Slot.")
    return matches[0].id


# -- $book ----------------------------------------------------------------------------------------------
def book(ctx: Context, call: Call) -> Reply:
    """Book a proposed Appointment on its Slot; every refusal is an error and stores nothing."""
    body = _operation_body(ctx, call, BOOK, "Appointment")
    return replay_or_run(ctx, call, body, lambda: _book(ctx, body))


def _book(ctx: Context, body: dict) -> Reply:
    appointment = read_parameters(body, BOOK_PARAMS, "$book").one("appointment-resource")
    validate(appointment, "Appointment")
    slots = [_visible_slot(ctx, slot_id) for slot_id in _slot_ids(ctx, appointment)]
    _check_request(ctx, appointment, slots)
    core, booker = _core(ctx), _booker(ctx)
    found = offer(ctx.repo, slots[0])
    core.check_bookable(found, appointment, booker)
    core.check_matching(found, appointment, booker)
    stored = core.book(slots[0], appointment, booker, found=found)
    ctx.audit_entity = f"Appointment/{stored.id}"
    status = stored.resource().get("status")
    out = ParametersBuilder().resource("appointment", _content(stored))
    out.resource("outcome", information(f"Appointment/{stored.id} is {status}."))
    return Reply(200, out.build())


def _slot_ids(ctx: Context, appointment: dict) -> list[str]:
    """The ids the Appointment's `slot` references name (404 for one that names no Slot)."""
    return [
        _reference_id(ctx, s.get("reference"), "Slot", "Appointment.slot", missing="not-found")
        for s in appointment.get("slot") or []
    ]


def _check_request(ctx: Context, appointment: dict, slots: list[Stored]) -> None:
    """The 422 checks of the request itself, in the contract's order (the Slot's come from the core)."""
    if appointment.get("status") != "proposed":
        raise FhirError("business-rule", "An Appointment to book must have status proposed.")
    if len(slots) != 1:
        raise FhirError("business-rule", "An Appointment to book refers to exactly one slot.")
    patients = [p for p in map(_patient_id, appointment.get("participant") or []) if p is not None]
    if not patients:
        raise FhirError("business-rule", "An Appointment to book needs a Patient participant.")
    for patient in patients:
        stored = ctx.repo.get("Patient", patient) if valid_id(patient) else None
        if stored is None or stored.deleted or not ctx.visible("Patient", patient):
            raise FhirError("business-rule", UNRESOLVED, diagnostics=f"Patient/{patient}")
    if ctx.policy.checks_references:
        check_references(ctx, appointment)


def _patient_id(participant: dict) -> str | None:
    target = split_reference(((participant.get("actor") or {}).get("reference")) or "")
    return target[1] if target and target[0] == "Patient" else None


# -- $findHSP -------------------------------------------------------------------------------------------
def find_hsp(ctx: Context, call: Call) -> Reply:
    """Active HealthcareServices by service, place and free Slots, with their providers."""
    ctx.audit_entity = "HealthcareService"
    ctx.policy.check_operation(FIND_HSP.code)
    _type_level(call, FIND_HSP)
    if call.method not in ("GET", "POST"):
        raise FhirError("method-not-allowed", "$findHSP is invoked with GET or POST.")
    bundle = find_providers(ctx, provider_query(_find_inputs(call), ctx), _count(call.params))
    return Reply(200, ParametersBuilder().resource("result", bundle).build())


def _find_inputs(call: Call) -> Inputs:
    """By GET (or a POST without body) from the URL, by POST from Parameters or a form body."""
    if call.method == "GET" or not call.body.strip():
        return read_query(call.params, FIND_PARAMS, "$findHSP")
    if (call.content_type or "").split(";")[0].strip().lower() == media.FORM_TYPE:
        try:
            form = parse_qsl(call.body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError as exc:
            raise FhirError("invalid", "The form body is not UTF-8.") from exc
        return read_query(call.params + form, FIND_PARAMS, "$findHSP")
    return read_parameters(call.resource(), FIND_PARAMS, "$findHSP")


def _count(params: list[tuple[str, str]]) -> int:
    value = next((v for k, v in params if k == "_count"), None)
    if value is None:
        return DEFAULT_COUNT
    if not (value.isascii() and value.isdigit()):
        raise FhirError("invalid", "_count must be a whole number.")
    return min(int(value), MAX_COUNT)


# -- shared ---------------------------------------------------------------------------------------------
def _operation_body(ctx: Context, call: Call, operation: Operation, audit_type: str) -> dict:
    """Role first (403), then the interaction (405), then the body (400/415)."""
    ctx.audit_entity = audit_type
    ctx.policy.check_operation(operation.code)
    _type_level(call, operation)
    if call.method != "POST":
        raise FhirError("method-not-allowed", f"${operation.code} is invoked with POST.")
    return call.resource()


def _type_level(call: Call, operation: Operation) -> None:
    if call.headers.get("x-terminhub-instance") is not None:
        raise FhirError("method-not-allowed", f"${operation.code} is invoked on the type, not an instance.")


def _reference_id(
    ctx: Context, reference: object, resource_type: str, name: str, *, missing: str = "invalid"
) -> str:
    """The id of a literal reference to `resource_type`; `missing` is the error for one that names
    something else."""
    text = reference if isinstance(reference, str) else ""
    target = split_reference(text.removeprefix(ctx.base + "/")) if text else None
    if target is None or target[0] != resource_type:
        raise FhirError(missing, f"{name} must refer to a {resource_type}.", diagnostics=text or None)
    return target[1]


def _visible_slot(ctx: Context, slot_id: str) -> Stored:
    """The Slot, or 404 when unknown, deleted or not visible to the caller."""
    ctx.audit_entity = f"Slot/{slot_id}" if valid_id(slot_id) else "Slot"
    stored = ctx.repo.get("Slot", slot_id) if valid_id(slot_id) else None
    if stored is None or stored.deleted or not ctx.visible("Slot", slot_id):
        raise FhirError("not-found", f"Slot/{slot_id} is not known.")
    return stored


def _core(ctx: Context) -> BookingService:
    settings = ctx.settings
    return BookingService(
        ctx.repo,
        hold_minutes=settings.hold_minutes,
        max_holds=settings.max_holds,
        confirm_hours=settings.confirm_hours,
        tz=ctx.tz,
    )


def _booker(ctx: Context) -> Booker:
    return Booker(ctx.caller.client_id, ctx.caller.role)


def _content(stored: Stored | None) -> bytes:
    assert stored is not None and stored.content is not None
    return stored.content


for _operation, _type, _handler in (
    (HOLD, "Slot", hold),
    (BOOK, "Appointment", book),
    (FIND_HSP, "HealthcareService", find_hsp),
):
    capability.register_operation(_operation)
    fhir_endpoint.register_operation(_type, _operation.code, _handler)
