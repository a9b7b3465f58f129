"""References in request bodies: every one must point at something the caller may see (2.2)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from terminhub.api.context import Context
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.searchparams import RESOURCE_TYPES
from terminhub.store.indexer import split_reference

UNRESOLVED = "A referenced resource does not exist or is not visible to you."


def references(node: Any) -> Iterator[str]:
    """Every literal relative reference (`Type/id`) in a resource, contained ones excluded."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "contained":
                continue
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def check_references(ctx: Context, resource: dict) -> None:
    """422 (same text whether missing or invisible) for a reference the caller may not follow."""
    for reference in references(resource):
        if reference.startswith(("#", "urn:")):
            continue
        target = split_reference(reference.removeprefix(ctx.base + "/"))
        if target is None or target[0] not in RESOURCE_TYPES:
            if reference.startswith(("http://", "https://")) and not reference.startswith(ctx.base):
                continue
            raise FhirError("business-rule", UNRESOLVED, diagnostics=reference)
        stored = ctx.repo.get(*target)
        if stored is None or stored.deleted or not _readable(ctx, target[0]) or not ctx.visible(*target):
            raise FhirError("business-rule", UNRESOLVED, diagnostics=reference)


def _readable(ctx: Context, resource_type: str) -> bool:
    try:
        ctx.policy.check_read(resource_type)
    except FhirError:
        return False
    return True


def check_appointment_slot(ctx: Context, resource: dict) -> None:
    """Even admin writes need an Appointment's Slots to exist (2.2)."""
    if resource.get("resourceType") != "Appointment":
        return
    for slot in resource.get("slot") or []:
        target = split_reference(slot.get("reference", "")) if isinstance(slot, dict) else None
        stored = ctx.repo.get(*target) if target and target[0] == "Slot" else None
        if stored is None or stored.deleted:
            raise FhirError("business-rule", "The Appointment's Slot does not exist.",
                            diagnostics=str(slot.get("reference") if isinstance(slot, dict) else slot))
