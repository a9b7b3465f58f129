"""The practice-sync face (contract 5, 116117 TVS): what a practice's appointment system calls beyond REST.

`POST /fhir/Slot/{id}/$slotstatus_aktualisieren` sets a Slot of the practice `free` or `busy`; the booking
core decides whether it may. Schedules and Slots themselves are written through REST (their rules for
practices: `terminhub.api.practice_rules`). Importing the module registers the operation (app.py does).
"""

from __future__ import annotations

from terminhub.api import fhir_endpoint
from terminhub.api.context import Context, Reply
from terminhub.api.fhir_endpoint import Call
from terminhub.api.idempotent import replay_or_run
from terminhub.booking.service import PRACTICE_STATUSES
from terminhub.fhir import capability
from terminhub.fhir.capability import Operation, OperationParam
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.parameters import read_parameters
from terminhub.fhir.validation import valid_id
from terminhub.store.repository import Stored

STATUS_PARAMS = (
    OperationParam(
        "status",
        "in",
        1,
        "1",
        "code",
        "free: the Slot can be booked again (refused while an Appointment or a hold has it); busy: the "
        "practice has taken it, so it is neither held nor booked until set free again.",
    ),
)
SLOT_STATUS = Operation(
    code="slotstatus_aktualisieren",
    name="Slotstatus_Aktualisieren",
    resource=("Slot",),
    system=False,
    type=False,
    instance=True,
    url=None,
    description="A practice sets the status of one of its Slots to free or busy: 204 (with the Slot's "
    "ETag); a new Slot version only when its status changes. Setting free a Slot with an active "
    "Appointment or a running hold is 409 slot-unavailable. Accepts Idempotency-Key.",
    parameters=STATUS_PARAMS,
    affects_state=True,
)


def update_slot_status(ctx: Context, call: Call) -> Reply:
    """Role first (403), then the interaction (405), then the body (400), then the Slot (404)."""
    ctx.audit_entity = "Slot"
    ctx.policy.check_operation(SLOT_STATUS.code)
    slot_id = call.headers.get("x-terminhub-instance")
    if slot_id is None:
        raise FhirError("method-not-allowed", f"${SLOT_STATUS.code} is invoked on a Slot: Slot/<id>/$….")
    if call.method != "POST":
        raise FhirError("method-not-allowed", f"${SLOT_STATUS.code} is invoked with POST.")
    body = call.resource()
    return replay_or_run(ctx, call, body, lambda: _update_slot_status(ctx, slot_id, body))


def _update_slot_status(ctx: Context, slot_id: str, body: dict) -> Reply:
    status = read_parameters(body, STATUS_PARAMS, f"${SLOT_STATUS.code}").one("status")
    if status not in PRACTICE_STATUSES:
        raise FhirError("invalid", "status must be free or busy.", diagnostics="status")
    slot = _visible_slot(ctx, slot_id)
    stored = ctx.booking().set_practice_status(slot, status)
    return Reply(204, None, {"ETag": stored.etag})


def _visible_slot(ctx: Context, slot_id: str) -> Stored:
    """The Slot, or 404 when unknown, deleted or outside the caller's scope."""
    ctx.audit_entity = f"Slot/{slot_id}" if valid_id(slot_id) else "Slot"
    stored = ctx.repo.get("Slot", slot_id) if valid_id(slot_id) else None
    if stored is None or stored.deleted or not ctx.visible("Slot", slot_id):
        raise FhirError("not-found", f"Slot/{slot_id} is not known.")
    return stored


capability.register_operation(SLOT_STATUS)
fhir_endpoint.register_operation("Slot", SLOT_STATUS.code, update_slot_status)
