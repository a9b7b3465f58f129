"""What a practice writes of its Terminprofile (Schedules) and Terminslots (Slots) (contract 5, 3.1).

Admin writes are stored as sent. A practice's Schedule names one of its own PractitionerRoles among its
actors; its Slots are created `free` (a missing status means free) and change afterwards only through the
operations. The Terminprofil fields of 3.1 are typed for every writer, so that every reader can rely on them.
"""

from __future__ import annotations

from terminhub.api.context import Context
from terminhub.fhir.outcome import FhirError
from terminhub.store.indexer import split_reference

SCHEDULE_NAME = "urn:terminhub:schedule-name"
DEFAULT_SLOT_MINUTES = "urn:terminhub:default-slot-minutes"
TERMINPROFIL_FIELDS = {SCHEDULE_NAME: "valueString", DEFAULT_SLOT_MINUTES: "valuePositiveInt"}


def practice_defaults(ctx: Context, resource_type: str, resource: dict) -> dict:
    """A Slot a practice creates without a status is a free one (before the body is validated)."""
    if ctx.caller.role == "practice" and resource_type == "Slot" and "status" not in resource:
        return {**resource, "status": "free"}
    return resource


def check_terminprofil_fields(resource: dict) -> None:
    """400 when a Terminprofil field of a Schedule carries another kind of value than 3.1 gives it."""
    if resource.get("resourceType") != "Schedule":
        return
    for extension in resource.get("extension") or []:
        wanted = TERMINPROFIL_FIELDS.get(extension.get("url")) if isinstance(extension, dict) else None
        if wanted is None:
            continue
        values = [key for key in extension if key.startswith("value")]
        if values != [wanted]:
            raise FhirError(
                "invalid",
                f"The Schedule extension {extension['url']} carries a {wanted}.",
                diagnostics=", ".join(values) or "no value",
            )


def check_practice_write(ctx: Context, resource: dict) -> None:
    """A practice's Schedule has one of its own PractitionerRoles as actor; its new Slot is free (422)."""
    if ctx.caller.role != "practice":
        return
    resource_type = resource.get("resourceType")
    if resource_type == "Schedule" and not any(
        _own_role(ctx, actor) for actor in resource.get("actor") or []
    ):
        raise FhirError(
            "business-rule", "A Terminprofil (Schedule) needs one of your PractitionerRoles as an actor."
        )
    if resource_type == "Slot" and resource.get("status") != "free":
        raise FhirError(
            "business-rule",
            "A practice creates its Slots free; change their status with $slotstatus_aktualisieren.",
            diagnostics=str(resource.get("status")),
        )


def _own_role(ctx: Context, actor: object) -> bool:
    """Whether an actor reference names an existing PractitionerRole in the caller's scope."""
    reference = actor.get("reference") if isinstance(actor, dict) else None
    if not isinstance(reference, str) or reference.startswith(("#", "urn:")):
        return False
    local = reference.removeprefix(ctx.base + "/")
    target = split_reference(local) if not local.startswith(("http://", "https://")) else None
    if target is None or target[0] != "PractitionerRole":
        return False
    stored = ctx.repo.get(*target)
    return stored is not None and not stored.deleted and ctx.visible(*target)
