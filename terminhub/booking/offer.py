"""What a Slot offers (contract 3.1): services, appointment type, who may book, where it takes place."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from terminhub.store import schema
from terminhub.store.indexer import split_reference
from terminhub.store.repository import Repository, Stored
from terminhub.store.slot_offers import appointment_type

BOOKABLE_BY = "urn:terminhub:bookable-by"
BOOKABLE_URGENCY = "urn:terminhub:bookable-urgency"
REQUIRES_CONFIRMATION = "urn:terminhub:requires-confirmation"

Coding = tuple[str | None, str]


@dataclass(frozen=True)
class Offer:
    """A Slot together with what its Schedule lends it."""

    slot: Stored
    slot_resource: dict
    schedule: dict | None
    codings: frozenset[Coding]
    appointment_type: str
    bookable_by: frozenset[str] | None
    bookable_urgency: frozenset[Coding] | None
    schedule_active: bool
    requires_confirmation: bool

    @property
    def start(self) -> str:
        return self.slot_resource["start"]

    @property
    def end(self) -> str:
        return self.slot_resource["end"]

    def offers(self, coding: Coding) -> bool:
        return coding in self.codings

    def bookable_by_face(self, face: str) -> bool:
        return self.bookable_by is None or face in self.bookable_by

    def schedule_id(self) -> str | None:
        ref = split_reference((self.slot_resource.get("schedule") or {}).get("reference", ""))
        return ref[1] if ref and ref[0] == "Schedule" else None


def _codings(concepts: list | None) -> set[Coding]:
    found: set[Coding] = set()
    for concept in concepts or []:
        for coding in concept.get("coding") or []:
            if coding.get("code"):
                found.add((coding.get("system"), coding["code"]))
    return found


def _extension_values(resource: dict, url: str, key: str) -> list:
    return [ext[key] for ext in resource.get("extension") or [] if ext.get("url") == url and key in ext]


def offer(repo: Repository, slot: Stored) -> Offer:
    """The Offer of a stored Slot (its Schedule read in the same transaction)."""
    resource = slot.resource()
    schedule = None
    ref = split_reference((resource.get("schedule") or {}).get("reference", ""))
    if ref and ref[0] == "Schedule":
        stored = repo.get("Schedule", ref[1])
        schedule = stored.resource() if stored and not stored.deleted else None
    own = _codings(resource.get("specialty")) | _codings(resource.get("serviceType"))
    inherited = (
        (_codings(schedule.get("specialty")) | _codings(schedule.get("serviceType"))) if schedule else set()
    )
    bookable_by = _extension_values(resource, BOOKABLE_BY, "valueCode") or (
        _extension_values(schedule, BOOKABLE_BY, "valueCode") if schedule else []
    )
    urgencies = _extension_values(resource, BOOKABLE_URGENCY, "valueCoding") or (
        _extension_values(schedule, BOOKABLE_URGENCY, "valueCoding") if schedule else []
    )
    confirm = _extension_values(schedule, REQUIRES_CONFIRMATION, "valueBoolean") if schedule else []
    return Offer(
        slot=slot,
        slot_resource=resource,
        schedule=schedule,
        codings=frozenset(own or inherited),
        appointment_type=appointment_type(resource),
        bookable_by=frozenset(bookable_by) if bookable_by else None,
        bookable_urgency=frozenset((c.get("system"), c.get("code")) for c in urgencies)
        if urgencies
        else None,
        schedule_active=bool(schedule) and schedule.get("active", True) is not False,
        requires_confirmation=bool(confirm and confirm[0] is True),
    )


def schedule_organization(repo: Repository, schedule: dict | None) -> str | None:
    """The Organization a Schedule belongs to, through its PractitionerRole, Location or service actor."""
    for actor in (schedule or {}).get("actor") or []:
        ref = split_reference(actor.get("reference", ""))
        if not ref:
            continue
        field = {
            "PractitionerRole": "organization",
            "Location": "managingOrganization",
            "HealthcareService": "providedBy",
        }.get(ref[0])
        if not field:
            continue
        stored = repo.get(*ref)
        if stored and not stored.deleted:
            org = split_reference((stored.resource().get(field) or {}).get("reference", ""))
            if org and org[0] == "Organization":
                return org[1]
    return None


def slot_location(repo: Repository, schedule: dict | None) -> dict | None:
    """The Slot's Location (3.1): the Schedule's first Location actor, else the first location of its first
    PractitionerRole actor, else the only active Location managed by that role's Organization."""
    actors = [split_reference(a.get("reference", "")) for a in (schedule or {}).get("actor") or []]
    actors = [a for a in actors if a]
    for kind, ident in actors:
        if kind == "Location":
            stored = repo.get("Location", ident)
            if stored and not stored.deleted:
                return stored.resource()
    role_ref = next((a for a in actors if a[0] == "PractitionerRole"), None)
    if role_ref is None:
        return None
    stored_role = repo.get(*role_ref)
    if not stored_role or stored_role.deleted:
        return None
    role = stored_role.resource()
    for loc in role.get("location") or []:
        ref = split_reference(loc.get("reference", ""))
        if ref and ref[0] == "Location":
            stored = repo.get(*ref)
            if stored and not stored.deleted:
                return stored.resource()
    org = split_reference((role.get("organization") or {}).get("reference", ""))
    if not org:
        return None
    cached = getattr(repo, "managed_locations", None)  # a search's caching reader has them read ahead
    found = cached(org[1]) if cached else managed_locations(repo, org[1])
    active = [loc for loc in found if loc.get("status", "active") == "active"]
    return active[0] if len(active) == 1 else None


def managed_locations(repo: Repository, organization_id: str) -> list[dict]:
    """The Locations an Organization manages (at most 3: only "exactly one" matters)."""
    from terminhub.fhir import searchparams  # noqa: PLC0415 - only for this fallback
    from terminhub.fhir.search_request import Criterion, SearchRequest  # noqa: PLC0415
    from terminhub.store.search import SearchEngine  # noqa: PLC0415

    engine = SearchEngine(repo.conn, repo.tz, lambda _t: None)
    criterion = Criterion(
        "organization",
        None,
        (f"Organization/{organization_id}",),
        searchparams.param("Location", "organization"),
    )
    return [s.resource() for s in engine.run(SearchRequest("Location", [criterion], count=3)).matches]


def managed_locations_of(repo: Repository, organization_ids: list[str]) -> dict[str, list[dict]]:
    """`managed_locations` of several Organizations in two queries."""
    if not organization_ids:
        return {}
    S = schema.search_index
    query = select(S.c.id, S.c.ref_id).where(
        S.c.type == "Location", S.c.param == "organization", S.c.ref_type == "Organization",
        S.c.ref_id.in_(organization_ids),
    )  # fmt: skip
    owners: dict[str, list[str]] = {org: [] for org in organization_ids}
    for location_id, org in repo.conn.execute(query):
        owners[org].append(location_id)
    stored = {
        s.id: s.resource() for s in repo.get_many("Location", sorted({i for v in owners.values() for i in v}))
    }
    return {org: [stored[i] for i in sorted(ids) if i in stored][:3] for org, ids in owners.items()}
