"""References in request bodies: every one must point at something the caller may see (2.2)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select, text

from terminhub.api.context import Context
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.searchparams import BSNR_SYSTEM, RESOURCE_TYPES
from terminhub.store import schema
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


def check_house_rules(ctx: Context, resource: dict) -> None:
    """The checks every written body passes, admin's included (2.2): an Appointment's Slots exist, and a
    BSNR is carried by one Organization only."""
    check_unique_bsnr(ctx, resource)
    check_appointment_slot(ctx, resource)


def check_appointment_slot(ctx: Context, resource: dict) -> None:
    """Even admin writes need an Appointment's Slots to exist."""
    if resource.get("resourceType") != "Appointment":
        return
    for slot in resource.get("slot") or []:
        target = split_reference(slot.get("reference", "")) if isinstance(slot, dict) else None
        stored = ctx.repo.get(*target) if target and target[0] == "Slot" else None
        if stored is None or stored.deleted:
            raise FhirError(
                "business-rule",
                "The Appointment's Slot does not exist.",
                diagnostics=str(slot.get("reference") if isinstance(slot, dict) else slot),
            )


def check_unique_bsnr(ctx: Context, resource: dict) -> None:
    """409 `conflict` when another Organization already carries one of this Organization's BSNRs (2.2).

    Runs before the resource is saved (single requests) or after it (transaction and batch entries, whose
    checks are deferred until all entries are written): a new Organization without an id that this request
    already saved counts once among the carriers, so it is not mistaken for its own duplicate. On PostgreSQL
    a transaction-scoped advisory lock per BSNR makes concurrent registrations wait for each other.
    """
    if resource.get("resourceType") != "Organization":
        return
    own_id = resource.get("id")
    for bsnr in sorted(_bsnrs(resource)):
        if ctx.conn.dialect.name == "postgresql":
            lock = zlib.crc32(f"bsnr:{bsnr}".encode())
            ctx.conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock})
        carriers = _carriers(ctx, bsnr)
        if own_id:
            carriers.discard(own_id)
            clash = bool(carriers)
        else:
            written_here = {c.id for c in ctx.repo.changes if c.type == "Organization"}
            clash = len(carriers) > (1 if carriers & written_here else 0)
        if clash:
            raise FhirError(
                "conflict", f"Another Organization already carries the BSNR {bsnr}.", diagnostics=bsnr
            )


def _bsnrs(resource: dict) -> set[str]:
    return {
        i["value"]
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and i.get("system") == BSNR_SYSTEM and isinstance(i.get("value"), str)
    }


def _carriers(ctx: Context, bsnr: str) -> set[str]:
    """Ids of the (not deleted) Organizations whose index carries this BSNR."""
    s = schema.search_index
    query = select(s.c.id).where(
        s.c.type == "Organization", s.c.param == "identifier", s.c.system == BSNR_SYSTEM, s.c.code == bsnr
    )
    return {row.id for row in ctx.conn.execute(query)}
