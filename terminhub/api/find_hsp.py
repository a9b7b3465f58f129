"""`$findHSP` (contract 3): active HealthcareServices by service, place and free Slots, with providers.

Everything is answered from the search index: the services by the search engine's own criteria plus two
clauses of this module (postal-code area, free Slots in a window), their providers by one query per type.
Whom a Slot is bookable by is not indexed, so each candidate Slot's Offer is read to confirm it; the
first bookable one settles a service.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from sqlalchemy import ColumnElement, and_, exists, not_, or_, select

from terminhub.api.context import Context
from terminhub.booking.offer import Coding, offer
from terminhub.booking.service import Booker
from terminhub.clock import instant
from terminhub.fhir import searchparams
from terminhub.fhir.dates import MAX_US, DateError, parse_range
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.parameters import Inputs
from terminhub.fhir.search_request import Criterion
from terminhub.fhir.validation import valid_id
from terminhub.store import schema
from terminhub.store.indexer import normalise_text, split_reference
from terminhub.store.repository import Repository, Stored
from terminhub.store.search import SearchEngine

R = schema.resources
S = schema.search_index

REFERENCE = "healthcareService-reference"
LOCATION = "healthcareService-location"
ZIP_AREA = "healthcareService-zipCodeArea"
FROM, UNTIL = "available-from", "available-until"
# Token inputs -> the HealthcareService search parameter they filter on.
TOKENS = {
    "healthcareService-category": "service-category",
    "healthcareService-type": "service-type",
    "healthcareService-specialty": "specialty",
}
CODING_PARAMS = ("specialty", "service-type")  # where a Slot or Schedule keeps what it offers
ROLE_CODING_PARAMS = ("specialty", "role")  # PractitionerRole.specialty and .code
SLOT_PAGE = 50


@dataclass(frozen=True)
class ProviderQuery:
    """What a `$findHSP` call asks for; every given part must hold (AND), repeated values are OR'd."""

    service_id: str | None = None
    tokens: tuple[tuple[str, str], ...] = ()  # (HealthcareService search parameter, "system|code")
    locations: tuple[str, ...] = ()
    zip_areas: tuple[str, ...] = ()
    window: tuple[int, int] | None = None  # free Slot starting in [lo, hi), microseconds


# -- the inputs ---------------------------------------------------------------------------------------
def provider_query(inputs: Inputs, ctx: Context) -> ProviderQuery:
    """The checked query; 400 without any of reference, category, type, specialty."""
    tokens = tuple(
        (param, _token(name, inputs.one(name))) for name, param in TOKENS.items() if name in inputs
    )
    if REFERENCE not in inputs and not tokens:
        raise FhirError(
            "invalid",
            "$findHSP needs at least one of healthcareService-reference, -category, -type or -specialty.",
        )
    service = inputs.one(REFERENCE)
    base = ctx.base
    return ProviderQuery(
        service_id=_reference_id(service, "HealthcareService", REFERENCE, base) if service else None,
        tokens=tokens,
        locations=tuple(_reference_id(v, "Location", LOCATION, base) for v in inputs.all(LOCATION)),
        zip_areas=tuple(area.strip() for area in inputs.all(ZIP_AREA) if area.strip()),
        window=_window(inputs.one(FROM), inputs.one(UNTIL), ctx),
    )


def _token(name: str, value: str) -> str:
    system, bar, code = value.partition("|")
    if not (bar and system and code):
        raise FhirError(
            "invalid", f"{name} must be a token system|code, both parts given.", diagnostics=value
        )
    return value


def _reference_id(value: dict, resource_type: str, name: str, base: str) -> str:
    """The id of a literal reference to `resource_type` (`Type/id`, absolute, or a bare id by GET)."""
    text = value.get("reference") if isinstance(value.get("reference"), str) else ""
    local = text.removeprefix(base.rstrip("/") + "/")
    target = split_reference(local) if "/" in local else (resource_type, local)
    if target is None or target[0] != resource_type or not valid_id(target[1]):
        raise FhirError(
            "invalid", f"{name} must be a reference {resource_type}/<id>.", diagnostics=text or str(value)
        )
    return target[1]


def _window(start: str | None, end: str | None, ctx: Context) -> tuple[int, int] | None:
    """[max(now, from), until): a date-only `until` includes its day; a window never starts in the past."""
    if start is None and end is None:
        return None
    try:
        lo = parse_range(start, ctx.tz)[0] if start else 0
        hi = MAX_US
        if end:
            span = parse_range(end, ctx.tz)
            hi = span[0] if "T" in end else span[1]
    except DateError as exc:
        raise FhirError("invalid", f"available-from/-until: {exc}") from exc
    return max(lo, ctx.clock.now_us()), hi


# -- the search ---------------------------------------------------------------------------------------
def find_providers(ctx: Context, query: ProviderQuery, count: int) -> dict:
    """A searchset Bundle: the matching services (mode match), then their providers (mode include)."""
    engine = ctx.engine()
    services = _matching_services(ctx, engine, query, count)
    providers = _providers(ctx, engine, services)
    entries = [_entry(ctx, s, "match") for s in services] + [_entry(ctx, s, "include") for s in providers]
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "meta": {"lastUpdated": instant(ctx.clock.now_us())},
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def _entry(ctx: Context, stored: Stored, mode: str) -> dict:
    return {
        "fullUrl": f"{ctx.base}/{stored.type}/{stored.id}",
        "resource": orjson.Fragment(stored.content),
        "search": {"mode": mode},
    }


def _matching_services(ctx: Context, engine: SearchEngine, query: ProviderQuery, count: int) -> list[Stored]:
    """Active services meeting the criteria, by id; with a window, scanned in batches until `count` have
    a free Slot."""
    clauses = engine.where("HealthcareService", _criteria(query))
    if query.zip_areas:
        clauses.append(_in_zip_areas(query.zip_areas))
    if query.window is None:
        return _load(ctx, "HealthcareService", clauses, count)
    found: list[Stored] = []
    batch = max(count, 100)
    after = None
    while len(found) < count:
        page = _load(ctx, "HealthcareService", clauses, batch, after)
        found += [s for s in page if _available(ctx, engine, s, query.window)]
        if len(page) < batch:
            break
        after = page[-1].id
    return found[:count]


def _criteria(query: ProviderQuery) -> list[Criterion]:
    def criterion(name: str, values: Iterable[str]) -> Criterion:
        return Criterion(name, None, tuple(values), searchparams.param("HealthcareService", name))

    criteria = [criterion(param, [token]) for param, token in query.tokens]
    if query.service_id:
        criteria.append(criterion("_id", [query.service_id]))
    if query.locations:
        criteria.append(criterion("location", [f"Location/{i}" for i in query.locations]))
    return criteria


def _load(
    ctx: Context,
    resource_type: str,
    clauses: list[ColumnElement],
    limit: int | None,
    after: str | None = None,
) -> list[Stored]:
    query = select(R.c.id, R.c.version_id, R.c.last_updated, R.c.content, R.c.created_by).where(*clauses)
    if after is not None:
        query = query.where(R.c.id > after)
    query = query.order_by(R.c.id)
    if limit is not None:
        query = query.limit(limit)
    return [
        Stored(resource_type, row.id, row.version_id, row.last_updated, False, row.content, row.created_by)
        for row in ctx.conn.execute(query)
    ]


def _like_prefix(text: str) -> str:
    escaped = normalise_text(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _in_zip_areas(areas: tuple[str, ...]) -> ColumnElement:
    """A postal code of the service's Locations starts so; for a service whose Locations have none, that
    of its providedBy Organization."""

    def postal(kind: str, prefixed: bool = True) -> ColumnElement:
        match = or_(*[S.c.text.like(_like_prefix(a), escape="\\") for a in areas]) if prefixed else None
        query = select(S.c.id).where(S.c.type == kind, S.c.param == "address-postalcode")
        return query.where(match) if match is not None else query

    def services(param: str, kind: str, targets: ColumnElement) -> ColumnElement:
        return R.c.id.in_(
            select(S.c.id).where(
                S.c.type == "HealthcareService",
                S.c.param == param,
                S.c.ref_type == kind,
                S.c.ref_id.in_(targets),
            )
        )

    by_location = services("location", "Location", postal("Location"))
    has_located = services("location", "Location", postal("Location", prefixed=False))
    by_organization = services("organization", "Organization", postal("Organization"))
    return or_(by_location, and_(not_(has_located), by_organization))


# -- availability -------------------------------------------------------------------------------------
def _available(ctx: Context, engine: SearchEngine, service: Stored, window: tuple[int, int]) -> bool:
    """A free Slot starting in the window, in a Schedule of the service or of a PractitionerRole of its
    Organization, offering one of the service's codings and bookable by the caller's face."""
    resource = service.resource()
    codings = _codings(resource.get("type")) | _codings(resource.get("specialty"))
    if not codings:
        return False
    schedules = _schedules(ctx, engine, service.id, _ref_id(resource.get("providedBy"), "Organization"))
    if not schedules:
        return False
    slot_criteria = [
        Criterion(
            "schedule",
            None,
            tuple(f"Schedule/{i}" for i in schedules),
            searchparams.param("Slot", "schedule"),
        ),
        Criterion("status", None, ("free",), searchparams.param("Slot", "status")),
    ]
    clauses = [*engine.where("Slot", slot_criteria), _starts_within(window), _offers_any(codings)]
    face = Booker(ctx.caller.client_id, ctx.caller.role).face
    after = None
    while True:
        page = _load(ctx, "Slot", clauses, SLOT_PAGE, after)
        if any(_bookable(ctx.repo, slot, face, codings) for slot in page):
            return True
        if len(page) < SLOT_PAGE:
            return False
        after = page[-1].id


def _schedules(ctx: Context, engine: SearchEngine, service_id: str, organization: str | None) -> list[str]:
    """Active Schedules (visible to the caller) whose actor is the service or a role of its Organization."""
    actor = and_(S.c.ref_type == "HealthcareService", S.c.ref_id == service_id)
    if organization:
        roles = select(S.c.id).where(
            S.c.type == "PractitionerRole",
            S.c.param == "organization",
            S.c.ref_type == "Organization",
            S.c.ref_id == organization,
        )
        actor = or_(actor, and_(S.c.ref_type == "PractitionerRole", S.c.ref_id.in_(roles)))
    of_service = R.c.id.in_(select(S.c.id).where(S.c.type == "Schedule", S.c.param == "actor", actor))
    query = select(R.c.id).where(*engine.where("Schedule", []), of_service)
    return list(ctx.conn.execute(query).scalars())


def _starts_within(window: tuple[int, int]) -> ColumnElement:
    lo, hi = window
    return R.c.id.in_(
        select(S.c.id).where(S.c.type == "Slot", S.c.param == "start", S.c.lo >= lo, S.c.lo < hi)
    )


def _coding_match(codings: Iterable[Coding]) -> ColumnElement:
    return or_(
        *[
            and_(S.c.system == system if system else S.c.system.is_(None), S.c.code == code)
            for system, code in codings
        ]
    )


def _offers_any(codings: set[Coding]) -> ColumnElement:
    """The Slot offers one of the codings: its own, or its Schedule's where it has none (3.1)."""
    match = _coding_match(codings)
    own = select(S.c.id).where(S.c.type == "Slot", S.c.param.in_(CODING_PARAMS), match)
    has_own = exists().where(S.c.type == "Slot", S.c.id == R.c.id, S.c.param.in_(CODING_PARAMS))
    schedules = select(S.c.id).where(S.c.type == "Schedule", S.c.param.in_(CODING_PARAMS), match)
    of_schedules = select(S.c.id).where(
        S.c.type == "Slot", S.c.param == "schedule", S.c.ref_id.in_(schedules)
    )
    return or_(R.c.id.in_(own), and_(R.c.id.in_(of_schedules), not_(has_own)))


def _bookable(repo: Repository, slot: Stored, face: str, codings: set[Coding]) -> bool:
    found = offer(repo, slot)
    return found.schedule_active and found.bookable_by_face(face) and any(found.offers(c) for c in codings)


# -- the providers ------------------------------------------------------------------------------------
def _providers(ctx: Context, engine: SearchEngine, services: list[Stored]) -> list[Stored]:
    """Organization, Locations, PractitionerRoles of that Organization offering the service's codings and
    their Practitioners; each once, only what the caller may see."""
    wanted: dict[str, list[str]] = {"Organization": [], "Location": [], "PractitionerRole": []}
    for service in services:
        resource = service.resource()
        organization = _ref_id(resource.get("providedBy"), "Organization")
        wanted["Location"] += [i for i in map(_location_id, resource.get("location") or []) if i]
        if organization is None:
            continue
        wanted["Organization"].append(organization)
        codings = _codings(resource.get("type")) | _codings(resource.get("specialty"))
        wanted["PractitionerRole"] += _offering_roles(ctx, engine, organization, codings)
    loaded = {kind: _load_ids(ctx, engine, kind, ids) for kind, ids in wanted.items()}
    practitioners = [
        _ref_id(role.resource().get("practitioner"), "Practitioner") for role in loaded["PractitionerRole"]
    ]
    loaded["Practitioner"] = _load_ids(ctx, engine, "Practitioner", [p for p in practitioners if p])
    return [
        stored
        for kind in ("Organization", "Location", "PractitionerRole", "Practitioner")
        for stored in loaded[kind]
    ]


def _offering_roles(ctx: Context, engine: SearchEngine, organization: str, codings: set[Coding]) -> list[str]:
    """Active PractitionerRoles of the Organization whose specialty or code is one of the codings."""
    if not codings:
        return []
    criteria = [
        Criterion(
            "organization",
            None,
            (f"Organization/{organization}",),
            searchparams.param("PractitionerRole", "organization"),
        ),
        Criterion("active", "not", ("false",), searchparams.param("PractitionerRole", "active")),
    ]
    offering = select(S.c.id).where(
        S.c.type == "PractitionerRole", S.c.param.in_(ROLE_CODING_PARAMS), _coding_match(codings)
    )
    query = select(R.c.id).where(*engine.where("PractitionerRole", criteria), R.c.id.in_(offering))
    return list(ctx.conn.execute(query).scalars())


def _load_ids(ctx: Context, engine: SearchEngine, resource_type: str, ids: list[str]) -> list[Stored]:
    unique = sorted(set(ids))
    if not unique:
        return []
    clauses = engine.where(resource_type, [Criterion("_id", None, tuple(unique))], default_active=False)
    return _load(ctx, resource_type, clauses, None)


# -- small readers ------------------------------------------------------------------------------------
def _codings(concepts: list | None) -> set[Coding]:
    return {
        (coding.get("system"), coding["code"])
        for concept in concepts or []
        for coding in concept.get("coding") or []
        if coding.get("code")
    }


def _ref_id(reference: dict | None, resource_type: str) -> str | None:
    target = split_reference((reference or {}).get("reference") or "")
    return target[1] if target and target[0] == resource_type else None


def _location_id(reference: dict) -> str | None:
    return _ref_id(reference, "Location")
