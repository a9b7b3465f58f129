"""The German 116117 faces (contract 4.2, 4.3): referral codes for referring practices (PVS) and third-party
booking (Dritte).

Every operation is `POST /fhir/$<name>` with a Parameters body. The face reads the Parameters, resolves
the referral code through the referral core (which counts failed look-ups and keeps the status table), and
leaves every decision about a Slot to the booking core. A code is a bearer credential, so it never appears
in a link, an audit entity or a log line. Importing the module registers the operations (app.py does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from itertools import islice

import orjson

from terminhub.api import fhir_endpoint, rest
from terminhub.api.bundles import embed
from terminhub.api.context import Context, Reply
from terminhub.api.fhir_endpoint import Call
from terminhub.api.idempotent import replay_or_run
from terminhub.booking.offer import (
    Offer,
    managed_locations,
    managed_locations_of,
    offer,
    schedule_organization,
    slot_location,
)
from terminhub.booking.service import ACTIVE
from terminhub.clock import instant
from terminhub.fhir import capability
from terminhub.fhir.capability import Operation, OperationParam
from terminhub.fhir.dates import DateError, parse_instant, parse_range
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.parameters import Inputs, ParametersBuilder, parameters_of, read_parameters
from terminhub.fhir.search_request import DEFAULT_COUNT, MAX_COUNT
from terminhub.fhir.validation import valid_id, validate
from terminhub.referral import code as codes
from terminhub.referral.service import ANR_SYSTEM, BSNR_SYSTEM, Referral, ReferralService
from terminhub.referral.urgency import priority_element, requested
from terminhub.store import directory_cache
from terminhub.store.free_slots import Candidate, free_slots
from terminhub.store.generations import DIRECTORY_TYPES
from terminhub.store.indexer import split_reference
from terminhub.store.repository import Repository, Stored

KBV_DEFINITIONS = "https://fhir.kbv.de/OperationDefinition/"
CODE_PARAM = "vermittlungscode"
THIRD_PARTY = "third-party"
FORMULARE = ("muster6", "ptv11")
TERMINTYPEN = ("praesenz", "video")
REFERRER_ONLY = ("bsnr", "ueberweisenderArzt", "patient", "formular")
PRIORITY_RANK = {"asap": 1, "urgent": 2, "routine": 5}
Entry = tuple[tuple[str, str], dict | orjson.Fragment]  # a Bundle entry's resource, with its type and id


def _param(name: str, use: str, card: tuple[int, str], fhir_type: str, documentation: str) -> OperationParam:
    return OperationParam(name, use, card[0], card[1], fhir_type, documentation)


CODE_IN = _param(
    CODE_PARAM,
    "in",
    (1, "1"),
    "string",
    "The Vermittlungscode, with or without hyphens, as valueString or as valueIdentifier with the "
    "system " + codes.SYSTEM + ".",
)

REQUEST_PARAMS = (
    _param("leistungsmerkmale", "in", (1, "100"), "Coding", "The services (Leistungsmerkmale) referred to."),
    _param(
        "dringlichkeit",
        "in",
        (0, "1"),
        "Coding",
        "Urgency: SNOMED CT 103391001 urgent (default) or 50811001 routine, or "
        "http://hl7.org/fhir/request-priority urgent|routine.",
    ),
    _param(
        "bsnr",
        "in",
        (0, "1"),
        "Identifier",
        "Referrers only (required): the referring practice's BSNR, one of the caller's numbers.",
    ),
    _param(
        "ueberweisenderArzt",
        "in",
        (0, "1"),
        "Practitioner",
        "Referrers only (required): the referring physician with ANR (7 digits) or LANR (9 digits) and a "
        "family name.",
    ),
    _param("patient", "in", (0, "1"), "Patient", "Referrers only: the patient."),
    _param("formular", "in", (0, "1"), "code", "Referrers only: muster6 (default) or ptv11."),
    _param(
        CODE_PARAM,
        "out",
        (1, "1"),
        "Identifier",
        "The new code: hyphenated XXXX-XXXX-XXXX for referrers, without hyphens for third parties.",
    ),
    _param("url", "out", (0, "1"), "url", "Referrers: where patients learn how to book with the code."),
    _param("druckzeile", "out", (0, "1"), "string", "Referrers: the line to print on the referral form."),
)
SEARCH_PARAMS = (
    CODE_IN,
    _param("von", "in", (0, "1"), "dateTime", "Only Slots starting at or after this."),
    _param("bis", "in", (0, "1"), "dateTime", "Only Slots starting before this."),
    _param("plz", "in", (0, "1"), "string", "Postal-code prefix of the Slot's Location (not for video)."),
    _param(
        "near",
        "in",
        (0, "1"),
        "string",
        "lat|lon|distance[|km|m] around the Slot's Location (not for video; Slots without position never "
        "match).",
    ),
    _param("termintyp", "in", (0, "1"), "code", "praesenz or video."),
    _param("_count", "in", (0, "1"), "integer", "Page size (default 50, at most 1000)."),
    _param("page", "in", (0, "1"), "integer", "Page number, 1-based."),
    _param(
        "return",
        "out",
        (1, "1"),
        "Bundle",
        "searchset: free Slots the code may book, sorted by start then id, with their Schedule, "
        "Organization and Location (include).",
    ),
)
BOOK_PARAMS = (
    CODE_IN,
    _param("slotId", "in", (1, "1"), "string", "The id of the Slot to book."),
    _param("patientendaten", "in", (1, "1"), "Patient", "The patient; stored as a new Patient."),
)
CODE_ONLY = (CODE_IN,)
INFO_PARAMS = (
    CODE_IN,
    _param(
        "return",
        "out",
        (1, "1"),
        "Bundle",
        "collection: the code's active Appointment, its Schedule, Organization and Location.",
    ),
)
STATUS_PARAMS = (
    CODE_IN,
    _param(
        "return",
        "out",
        (1, "1"),
        "Bundle",
        "collection: the code's ServiceRequest reduced to id, meta, identifier, status, intent, priority "
        "and performerType.",
    ),
)


def _operation(
    code: str, name: str, url: str | None, description: str, params: tuple, state: bool
) -> Operation:
    return Operation(
        code=code,
        name=name,
        resource=(),
        system=True,
        type=False,
        instance=False,
        url=url,
        description=description,
        parameters=params,
        affects_state=state,
    )


REQUEST = _operation(
    "vermittlungscode_anfordern",
    "KBV_OD_116117_TERMINSERVICE_VCA_Vermittlungscode_Request",
    KBV_DEFINITIONS + "KBV_OD_116117_TERMINSERVICE_VCA_Vermittlungscode_Request",
    "Issue a referral code (Vermittlungscode). Referrers (PVS) give bsnr, ueberweisenderArzt and "
    "optionally patient and formular; third parties only leistungsmerkmale and dringlichkeit, for "
    "services that need no referral. Accepts Idempotency-Key.",
    REQUEST_PARAMS,
    True,
)
SEARCH = _operation(
    "termine_suchen",
    "KBV_TS_DRITTE_Termine_Suchen",
    None,
    "Free Slots a referral code may book (draft or revoked codes); opens the code's window at the first "
    "call. Links never carry the code.",
    SEARCH_PARAMS,
    True,
)
BOOK = _operation(
    "termin_buchen",
    "KBV_TS_DRITTE_Termin_Buchen",
    None,
    "Book a Slot with a referral code: 204 with ETag and Last-Modified of the code's ServiceRequest. "
    "Accepts Idempotency-Key.",
    BOOK_PARAMS,
    True,
)
CANCEL = _operation(
    "termin_absagen",
    "KBV_OD_KV_DIGITAL_TS_DRITTE_Appointment_Cancellation",
    KBV_DEFINITIONS + "KBV_OD_KV_DIGITAL_TS_DRITTE_Appointment_Cancellation",
    "Cancel the future booking of an active referral code (patient side): 204 with ETag and "
    "Last-Modified of the code's ServiceRequest. Accepts Idempotency-Key.",
    CODE_ONLY,
    True,
)
INFO = _operation(
    "buchungsinformationen_abrufen",
    "KBV_TS_DRITTE_Buchungsinformationen_Abrufen",
    None,
    "The booking of an active referral code with its Schedule, Organization and Location.",
    INFO_PARAMS,
    False,
)
STATUS = _operation(
    "vermittlungscodestatus_abrufen",
    "KBV_TS_DRITTE_Vermittlungscodestatus_Abrufen",
    None,
    "The status of any existing referral code (its ServiceRequest, reduced).",
    STATUS_PARAMS,
    False,
)


# -- $vermittlungscode_anfordern ------------------------------------------------------------------------
def request_code(ctx: Context, call: Call) -> Reply:
    """Issue a code: one handler, two callers (referrer 4.2, third party 4.3)."""
    body = _body(ctx, call, REQUEST)
    return replay_or_run(ctx, call, body, lambda: _request_code(ctx, body))


def _request_code(ctx: Context, body: dict) -> Reply:
    inputs = read_parameters(body, REQUEST_PARAMS, "$" + REQUEST.code)
    leistungsmerkmale = [_coding(c) for c in inputs.all("leistungsmerkmale")]
    service = _referrals(ctx)
    if ctx.caller.role == THIRD_PARTY:
        given = [name for name in REFERRER_ONLY if name in inputs]
        if given:
            raise FhirError(
                "invalid",
                f"Third parties do not give {', '.join(given)}; only leistungsmerkmale and dringlichkeit.",
                diagnostics=given[0],
            )
        priority = requested(inputs.one("dringlichkeit"))
        ref = service.issue(leistungsmerkmale=leistungsmerkmale, priority=priority, issuer=ctx.caller)
        ctx.audit_entity = f"ServiceRequest/{ref.service_request.id}"
        out = ParametersBuilder().value(
            CODE_PARAM, "valueIdentifier", {"system": codes.SYSTEM, "value": ref.code}
        )
        return Reply(200, out.build())
    formular = inputs.one("formular") or "muster6"
    if formular not in FORMULARE:
        raise FhirError("invalid", "formular must be muster6 or ptv11.", diagnostics="formular")
    bsnr = _referrer_bsnr(ctx, inputs.one("bsnr"))
    practitioner = _referring_physician(inputs.one("ueberweisenderArzt"))
    patient = inputs.one("patient")
    if patient is not None:
        validate(patient, "Patient")
    priority = requested(inputs.one("dringlichkeit"), formular)
    ref = service.issue(
        leistungsmerkmale=leistungsmerkmale,
        priority=priority,
        issuer=ctx.caller,
        bsnr=bsnr,
        practitioner=practitioner,
        patient=patient,
        formular=formular,
    )
    ctx.audit_entity = f"ServiceRequest/{ref.service_request.id}"
    shown = codes.display(ref.code)
    url = ctx.settings.base_url.rstrip("/") + "/termin"
    out = ParametersBuilder().value(CODE_PARAM, "valueIdentifier", {"system": codes.SYSTEM, "value": shown})
    out.value("url", "valueUrl", url)
    out.value("druckzeile", "valueString", f"Vermittlungscode: {shown} {url} Tel: 116117")
    return Reply(200, out.build())


def _coding(coding: dict) -> dict:
    """A Leistungsmerkmal needs a system and a code (they are matched against what Slots offer)."""
    system, code = coding.get("system"), coding.get("code")
    if not isinstance(system, str) or not system or not isinstance(code, str) or not code:
        raise FhirError(
            "invalid", "Every Leistungsmerkmal needs a system and a code.", diagnostics="leistungsmerkmale"
        )
    return {k: coding[k] for k in ("system", "version", "code", "display") if k in coding}


def _referrer_bsnr(ctx: Context, identifier: dict | None) -> str:
    if identifier is None:
        raise FhirError("invalid", "The parameter bsnr is required.", diagnostics="bsnr")
    value = identifier.get("value")
    if identifier.get("system") != BSNR_SYSTEM or value not in ctx.caller.bsnrs:
        raise FhirError(
            "forbidden", "bsnr must be one of your own practice numbers (BSNR).", diagnostics="bsnr"
        )
    return value


def _referring_physician(practitioner: dict | None) -> dict:
    """The Practitioner with an ANR (7 digits) or LANR (9 digits) and a family name, else 400."""
    if practitioner is None:
        raise FhirError(
            "invalid", "The parameter ueberweisenderArzt is required.", diagnostics="ueberweisenderArzt"
        )
    validate(practitioner, "Practitioner")
    anr = [
        i.get("value")
        for i in practitioner.get("identifier") or []
        if i.get("system") == ANR_SYSTEM
        and isinstance(i.get("value"), str)
        and i["value"].isascii()
        and i["value"].isdigit()
        and len(i["value"]) in (7, 9)
    ]
    family = any(
        isinstance(n.get("family"), str) and n["family"].strip() for n in practitioner.get("name") or []
    )
    if not anr or not family:
        raise FhirError(
            "invalid",
            "ueberweisenderArzt needs an ANR (7 digits) or LANR (9 digits) of system "
            f"{ANR_SYSTEM} and a name with family.",
            diagnostics="ueberweisenderArzt",
        )
    return practitioner


# -- $termine_suchen ------------------------------------------------------------------------------------
@dataclass
class Place:
    """Where a Schedule's Slots take place: postal code and position (cached per Schedule)."""

    postal_code: str | None
    position: tuple[float, float] | None
    organization: str | None
    location: dict | None


@dataclass
class Near:
    lat: float
    lon: float
    km: float

    def holds(self, position: tuple[float, float] | None) -> bool:
        if position is None:
            return False
        kx = 111.32 * math.cos(math.radians(self.lat))
        ky = 110.57
        dy, dx = (position[0] - self.lat) * ky, (position[1] - self.lon) * kx
        return dx * dx + dy * dy <= self.km * self.km + 1e-9


@dataclass
class SlotFilter:
    """What a code's search asks of a Slot beyond `free` and the start range (done in SQL)."""

    ref: Referral
    service: ReferralService
    plz: str | None
    near: Near | None
    termintyp: str | None
    directory: _CachingRepo | None = None
    offers: dict[str, Offer] = field(default_factory=dict)  # of the Slots judged, for the Bundle


def search_slots(ctx: Context, call: Call) -> Reply:
    """Free Slots the code may book; the window opens at the first search."""
    body = _body(ctx, call, SEARCH)
    raw, inputs = _code_and_inputs(body, SEARCH_PARAMS, SEARCH)
    von = _instant(inputs.one("von"), "von", ctx)
    bis = _instant(inputs.one("bis"), "bis", ctx, end=True)
    plz = inputs.one("plz")
    near = _near(inputs.one("near"))
    termintyp = inputs.one("termintyp")
    if termintyp is not None and termintyp not in TERMINTYPEN:
        raise FhirError("invalid", "termintyp must be praesenz or video.", diagnostics="termintyp")
    count = inputs.one("_count")
    count = DEFAULT_COUNT if count is None else count
    page = inputs.one("page") or 1
    if count < 0 or page < 1:
        raise FhirError("invalid", "_count must not be negative and page starts at 1.")
    count = min(count, MAX_COUNT)
    service = _referrals(ctx)
    ref = service.lookup_to_search(raw, ctx.caller.client_id)
    ctx.audit_entity = "Slot"
    service.guard(ref, "search")
    ref = service.open_window(ref)
    now = ctx.clock.now_us()
    lo = max(now, von) if von is not None else now
    hi = min(ref.window_end or now, bis) if bis is not None else (ref.window_end or now)
    wanted = SlotFilter(ref, service, plz, near, termintyp)
    matches = _matching_slots(ctx, wanted, lo, hi, (page - 1) * count, count)
    return Reply(200, _searchset(ctx, wanted, matches))


def _matching_slots(
    ctx: Context, wanted: SlotFilter, lo: int, hi: int, skip: int, count: int
) -> list[Stored]:
    """Free Slots with start in [lo, hi) that pass the filter, in (start, id) order: page `skip`…+count.

    Candidates come from the offer rows by start; those whose place (their Schedule's, from the directory
    cache) or appointment type cannot match are dropped before their claims or the Slots are read."""
    if lo >= hi:
        return []
    repo = wanted.directory = _CachingRepo(ctx.repo)
    found: list[Stored] = []
    codings = list(wanted.ref.leistungsmerkmale)
    kept = free_slots(
        ctx.conn, codings, lo, hi, ctx.clock.now_us(), lambda offers: _may_match(repo, wanted, offers)
    )
    while len(found) < skip + count:
        # Slots are read a page's worth at a time: most candidates left pass, and few are read in vain.
        chunk = list(islice(kept, max(20, skip + count - len(found))))
        if not chunk:
            break
        loaded = {s.id: s for s in ctx.repo.get_many("Slot", [c.slot_id for c in chunk])}
        repo.prime_directory(loaded.values())
        for candidate in chunk:
            slot = loaded.get(candidate.slot_id)
            if slot is not None and _passes(repo, wanted, slot):
                found.append(slot)
                if len(found) >= skip + count:
                    break
    return ctx.present(found[skip : skip + count])


def _may_match(repo: _CachingRepo, wanted: SlotFilter, chunk: list[Candidate]) -> list[Candidate]:
    """The candidates `_passes` may keep, as far as appointment type and place tell.

    Whether a Schedule's place matches is judged once per place asked for while the directory stands
    (kept with the directory, under a bound of its own): a page of offers holds Slots of some hundred
    Schedules, and the same Schedules come up search after search. Judged afresh, that was a fifth of a
    search."""
    if wanted.termintyp is not None:
        chunk = [c for c in chunk if c.video == (wanted.termintyp == "video")]
    if wanted.plz is None and wanted.near is None:
        return chunk
    judged = repo.directory.judgements()
    near = wanted.near
    where = ("place-match", wanted.plz) + ((near.lat, near.lon, near.km) if near else ())
    unjudged = {c.schedule_id for c in chunk if not c.video and (where, c.schedule_id) not in judged}
    if unjudged:
        repo.prime_schedules({s for s in unjudged if s})
        for schedule_id in unjudged:
            judged[(where, schedule_id)] = _place_matches(wanted, _schedule_place(repo, schedule_id))
    return [c for c in chunk if c.video or judged[(where, c.schedule_id)]]


def _place_matches(wanted: SlotFilter, place: Place) -> bool:
    if wanted.plz is not None and not (place.postal_code or "").startswith(wanted.plz):
        return False
    return wanted.near is None or wanted.near.holds(place.position)


def _passes(repo: _CachingRepo, wanted: SlotFilter, slot: Stored) -> bool:
    found = wanted.offers[slot.id] = offer(repo, slot)  # type: ignore[arg-type]
    ref = wanted.ref
    if not (
        found.schedule_active
        and any(found.offers(c) for c in ref.leistungsmerkmale)
        and found.bookable_by_face(THIRD_PARTY)
        and wanted.service.offers_urgency(found.bookable_urgency, ref)
    ):
        return False
    if wanted.termintyp is not None and found.appointment_type != wanted.termintyp:
        return False
    if found.appointment_type == "video" or (wanted.plz is None and wanted.near is None):
        return True
    return _place_matches(wanted, _place(repo, wanted, found))


def _place(repo: _CachingRepo, _wanted: SlotFilter, found: Offer) -> Place:
    return _schedule_place(repo, found.schedule_id())


def _schedule_place(repo: _CachingRepo, schedule_id: str | None) -> Place:
    """The place of a Schedule's Slots, derived once while the directory stands."""
    places = repo.directory.derived
    key = ("place", schedule_id or "")
    if key not in places:
        stored = repo.get("Schedule", schedule_id) if schedule_id else None
        schedule = stored.resource() if stored is not None and not stored.deleted else None
        places[key] = _place_of(repo, schedule)
    return places[key]


def _place_of(repo: _CachingRepo, schedule: dict | None) -> Place:
    """3.1: postal code and position from the Slot's Location, else the Organization's first address."""
    location = slot_location(repo, schedule)  # type: ignore[arg-type]
    organization = schedule_organization(repo, schedule)  # type: ignore[arg-type]
    postal = ((location or {}).get("address") or {}).get("postalCode")
    if not postal and organization:
        stored = repo.get("Organization", organization)
        addresses = (stored.resource().get("address") or []) if stored and not stored.deleted else []
        postal = addresses[0].get("postalCode") if addresses else None
    position = (location or {}).get("position") or {}
    lat, lon = position.get("latitude"), position.get("longitude")
    point = (
        (float(lat), float(lon)) if isinstance(lat, int | float) and isinstance(lon, int | float) else None
    )
    return Place(postal, point, organization, location)


def _searchset(ctx: Context, wanted: SlotFilter, matches: list[Stored]) -> dict:
    """The Bundle; its only link is a self link without parameters (links never carry the code; clients
    page with `page`). Slots and Organizations go in as their stored bytes."""
    entries: list[dict] = [
        {"fullUrl": f"{ctx.base}/Slot/{s.id}", "resource": embed(s), "search": {"mode": "match"}}
        for s in matches
    ]
    seen: set[tuple[str, str]] = set()
    repo = wanted.directory or _CachingRepo(ctx.repo)
    for slot in matches:
        found = wanted.offers.get(slot.id) or offer(repo, slot)  # type: ignore[arg-type]
        for key, resource in _context_of(repo, wanted, found):
            if key not in seen:
                seen.add(key)
                entries.append(
                    {
                        "fullUrl": f"{ctx.base}/{key[0]}/{key[1]}",
                        "resource": resource,
                        "search": {"mode": "include"},
                    }
                )
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "meta": {"lastUpdated": instant(ctx.clock.now_us())},
        "link": [{"relation": "self", "url": f"{ctx.base}/${SEARCH.code}"}],
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def _context_of(repo: _CachingRepo, wanted: SlotFilter, found: Offer) -> list[Entry]:
    """The Slot's Schedule, Organization and Location (those that exist), each with its type and id."""
    out: list[Entry] = []
    if found.schedule is not None:
        out.append((("Schedule", found.schedule["id"]), found.schedule))
    place = _place(repo, wanted, found)
    if place.organization:
        stored = repo.get("Organization", place.organization)
        if stored is not None and not stored.deleted:
            out.append((("Organization", stored.id), embed(stored)))
    if place.location is not None and place.location.get("id"):
        out.append((("Location", place.location["id"]), place.location))
    return out


class _CachingRepo:
    """Reads of one search: directory resources through the process's directory cache (many Slots share
    a Schedule and its directory, and searches share the directory), which is read for a whole round of
    Slots at once where it lacks them (one query per resource type instead of several per Slot)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.conn = repo.conn
        self.tz = repo.tz
        self.clock = repo.clock
        self.directory = directory_cache.for_transaction(repo.conn)
        self._cache = self.directory.stored
        self._other: dict[tuple[str, str], Stored | None] = {}
        self._managed = self.directory.managed

    def get(self, resource_type: str, resource_id: str, *, for_update: bool = False) -> Stored | None:
        if resource_type == "Slot" or for_update:
            return self.repo.get(resource_type, resource_id, for_update=for_update)
        cache = self._cache if resource_type in DIRECTORY_TYPES else self._other
        key = (resource_type, resource_id)
        if key not in cache:
            found = self.repo.get(resource_type, resource_id)
            cache[key] = _kept(found) if found is not None else None
        return cache[key]

    def managed_locations(self, organization_id: str) -> list[dict]:
        """The Locations managed by an Organization (for `slot_location`'s last fallback)."""
        if organization_id not in self._managed:
            self._managed[organization_id] = managed_locations(self.repo, organization_id)
        return self._managed[organization_id]

    def prime_directory(self, slots: Iterable[Stored]) -> None:
        """Read the Schedules of `slots`, their actors, Organizations and Locations, a type at a time."""
        refs = [_target(s.resource().get("schedule")) for s in slots]
        self.prime_schedules({ref[1] for ref in refs if ref and ref[0] == "Schedule"})

    def prime_schedules(self, schedule_ids: set[str]) -> None:
        """Read these Schedules, their actors, Organizations and Locations, a type at a time."""
        if all(("Schedule", i) in self._cache for i in schedule_ids):
            return  # their directory was read with them
        schedules = self._prime("Schedule", [("Schedule", i) for i in schedule_ids])
        actors = [_target(a) for sched in schedules for a in sched.get("actor") or []]
        roles = self._prime("PractitionerRole", actors)
        services = self._prime("HealthcareService", actors)
        locations = self._prime(
            "Location", actors + [_target(loc) for role in roles for loc in role.get("location") or []]
        )
        owners = [_target(r.get("organization")) for r in roles]
        owners += [_target(x.get("providedBy")) for x in services]
        owners += [_target(x.get("managingOrganization")) for x in locations]
        organizations = {ref[1] for ref in owners if ref and ref[0] == "Organization"}
        self._prime("Organization", [("Organization", o) for o in organizations])
        wanted = [o for o in organizations if o not in self._managed]
        for org, found in managed_locations_of(self.repo, wanted).items():
            self._managed[org] = found

    def _prime(self, resource_type: str, refs: list[tuple[str, str] | None]) -> list[dict]:
        ids = {ref[1] for ref in refs if ref and ref[0] == resource_type}
        missing = [i for i in ids if (resource_type, i) not in self._cache]
        for stored in self.repo.get_many(resource_type, missing):
            self._cache[(resource_type, stored.id)] = _kept(stored)
        for i in missing:
            self._cache.setdefault((resource_type, i), None)
        cached = (self._cache[(resource_type, i)] for i in ids)
        return [stored.resource() for stored in cached if stored is not None]


def _kept(stored: Stored) -> Stored:
    """Schedules are kept parsed (every Slot's offer reads its Schedule); the rest as their bytes, which
    take a third of the memory and are read only to derive a place or to be included."""
    return directory_cache.parsed(stored) if stored.type == "Schedule" else stored


def _target(reference: dict | None) -> tuple[str, str] | None:
    return split_reference((reference or {}).get("reference") or "") if isinstance(reference, dict) else None


def _instant(value: str | None, name: str, ctx: Context, *, end: bool = False) -> int | None:
    """A dateTime (with offset when it has a time); a date-only `bis` means the end of that day."""
    if value is None:
        return None
    try:
        lo, hi = parse_range(value, ctx.tz)
        if "T" in value:
            return parse_instant(value, ctx.tz)
    except DateError as exc:
        raise FhirError(
            "invalid", f"{name} must be a date or a dateTime with offset.", diagnostics=name
        ) from exc
    return hi if end else lo


def _near(value: str | None) -> Near | None:
    """`lat|lon|distance[|km|m]` as R4 Location `near`; a distance is required."""
    if value is None:
        return None
    parts = value.split("|")
    try:
        lat, lon = float(parts[0]), float(parts[1])
        distance = float(parts[2]) if len(parts) > 2 and parts[2] else None
    except (ValueError, IndexError) as exc:
        raise FhirError(
            "invalid", "near must be latitude|longitude|distance|units.", diagnostics="near"
        ) from exc
    if distance is None or not all(map(math.isfinite, (lat, lon, distance))) or distance < 0:
        raise FhirError(
            "invalid", "near needs a distance: latitude|longitude|distance|units.", diagnostics="near"
        )
    unit = parts[3] if len(parts) > 3 and parts[3] else "km"
    if unit not in ("km", "m") or len(parts) > 4:
        raise FhirError("invalid", "near distance units must be km or m.", diagnostics="near")
    return Near(lat, lon, distance / 1000 if unit == "m" else distance)


# -- $termin_buchen -------------------------------------------------------------------------------------
def book_slot(ctx: Context, call: Call) -> Reply:
    """Book a Slot with a code: checks in the contract's order, the booking core decides the race."""
    body = _body(ctx, call, BOOK)
    return replay_or_run(ctx, call, body, lambda: _book_slot(ctx, body))


def _book_slot(ctx: Context, body: dict) -> Reply:
    raw, inputs = _code_and_inputs(body, BOOK_PARAMS, BOOK)
    slot_id, patient = inputs.one("slotId"), inputs.one("patientendaten")
    service = _referrals(ctx)
    ref = service.lookup(raw, ctx.caller.client_id, for_update=True)
    ctx.audit_entity = "Appointment"
    if ref.status == "active" and _booked_slot(ctx, ref) == slot_id:
        return _code_reply(ref)  # a repeat of the booking that made the code active
    service.guard(ref, "book")
    stored_slot = ctx.repo.get("Slot", slot_id) if valid_id(slot_id) else None
    if stored_slot is None or stored_slot.deleted:
        raise FhirError("not-found", f"Slot/{slot_id} is not known.")
    ctx.audit_entity = f"Slot/{slot_id}"
    ref = service.open_window(ref)
    found = offer(ctx.repo, stored_slot)
    leistungsmerkmal = _check_matching(ctx, service, ref, found)
    patient = {k: v for k, v in patient.items() if k not in ("id", "meta")}
    rest.prepare(ctx, "Patient", patient)
    stored_patient = ctx.repo.save("Patient", patient)
    appointment = _appointment(ref, leistungsmerkmal, stored_patient.id)
    booked = ctx.booking().book(stored_slot, appointment, ctx.booker(), found=found)
    ctx.audit_entity = f"Appointment/{booked.id}"
    return _code_reply(service.booked(ref, booked.id))


def _booked_slot(ctx: Context, ref: Referral) -> str | None:
    stored = ctx.repo.get("Appointment", ref.appointment_id) if ref.appointment_id else None
    if stored is None or stored.deleted:
        return None
    for slot in stored.resource().get("slot") or []:
        target = split_reference(slot.get("reference", ""))
        if target and target[0] == "Slot":
            return target[1]
    return None


def _check_matching(
    ctx: Context, service: ReferralService, ref: Referral, found: Offer
) -> tuple[str | None, str]:
    """422 `slot-not-matching` unless the Slot offers one of the code's Leistungsmerkmale, inside the window,
    to third parties and the code's urgency, in an active Schedule; the Leistungsmerkmal booked."""
    offered = [c for c in ref.leistungsmerkmale if found.offers(c)]
    if not offered:
        raise FhirError("slot-not-matching", "The Slot does not offer the service of this referral code.")
    if not found.schedule_active:
        raise FhirError("slot-not-matching", "The Slot's Schedule is not active.")
    if not found.bookable_by_face(THIRD_PARTY):
        raise FhirError("slot-not-matching", "This Slot cannot be booked by third parties.")
    if not service.offers_urgency(found.bookable_urgency, ref):
        raise FhirError("slot-not-matching", "This Slot cannot be booked with the urgency of this code.")
    if not service.inside(ref, parse_instant(found.start, ctx.tz)):
        raise FhirError("slot-not-matching", "The Slot lies outside the window of this referral code.")
    return offered[0]


def _appointment(ref: Referral, leistungsmerkmal: tuple[str | None, str], patient_id: str) -> dict:
    priority, extension = priority_element(ref.priority)
    system, code = leistungsmerkmal
    coding = {"system": system, "code": code} if system else {"code": code}
    for given in (ref.service_request.resource().get("performerType") or {}).get("coding") or []:
        if (given.get("system"), given.get("code")) == leistungsmerkmal:
            coding = given
            break
    return {
        "resourceType": "Appointment",
        "status": "proposed",
        "basedOn": [
            {
                "reference": f"ServiceRequest/{ref.service_request.id}",
                "identifier": {"system": codes.SYSTEM, "value": ref.code},
            }
        ],
        "priority": _appointment_priority(priority),
        "_priority": extension,
        "serviceType": [{"coding": [coding]}],
        "participant": [{"actor": {"reference": f"Patient/{patient_id}"}, "status": "needs-action"}],
    }


def _appointment_priority(priority: str) -> int:
    """Appointment.priority is an unsignedInt in R4 (1 = most urgent), so the code's urgency is carried
    as a rank there and, exactly, as the SNOMED CT coding of the `_priority` extension (4.1)."""
    return PRIORITY_RANK[priority]


# -- $termin_absagen ------------------------------------------------------------------------------------
def cancel_booking(ctx: Context, call: Call) -> Reply:
    """Patient-side cancellation of the code's future booking."""
    body = _body(ctx, call, CANCEL)
    return replay_or_run(ctx, call, body, lambda: _cancel_booking(ctx, body))


def _cancel_booking(ctx: Context, body: dict) -> Reply:
    raw, _inputs = _code_and_inputs(body, CODE_ONLY, CANCEL)
    service = _referrals(ctx)
    ref = service.lookup(raw, ctx.caller.client_id, for_update=True)
    ctx.audit_entity = "Appointment"
    service.guard(ref, "cancel")
    appointment = _active_appointment(ctx, ref)
    ctx.audit_entity = f"Appointment/{appointment.id}"
    if parse_instant(appointment.resource()["start"], ctx.tz) <= ctx.clock.now_us():
        raise FhirError(
            "code-status",
            "The appointment of this referral code has begun; it cannot be cancelled.",
            diagnostics=ref.status,
        )
    # The code first: it lets go of the booking, so the core's "booking ended" event finds no code to
    # revoke, and the patient-side rule (forfeit after the second booking) applies.
    ref = service.cancelled(ref, patient_side=True)
    ctx.booking().cancel(appointment.id, ctx.booker())
    return _code_reply(ref)


def _active_appointment(ctx: Context, ref: Referral) -> Stored:
    stored = ctx.repo.get("Appointment", ref.appointment_id) if ref.appointment_id else None
    if stored is not None and not stored.deleted:
        [stored] = ctx.present([stored])
    if stored is None or stored.deleted or stored.resource().get("status") not in ACTIVE:
        raise FhirError("code-status", "This referral code has no active booking.", diagnostics=ref.status)
    return stored


# -- $buchungsinformationen_abrufen ---------------------------------------------------------------------
def booking_information(ctx: Context, call: Call) -> Reply:
    body = _body(ctx, call, INFO)
    raw, _inputs = _code_and_inputs(body, INFO_PARAMS, INFO)
    service = _referrals(ctx)
    ref = service.lookup(raw, ctx.caller.client_id)
    ctx.audit_entity = "Appointment"
    service.guard(ref, "info")
    appointment = _active_appointment(ctx, ref)
    ctx.audit_entity = f"Appointment/{appointment.id}"
    resources: list[Entry] = [(("Appointment", appointment.id), embed(appointment))]
    slot_id = _booked_slot(ctx, ref)
    slot = ctx.repo.get("Slot", slot_id) if slot_id else None
    if slot is not None and not slot.deleted:
        repo = _CachingRepo(ctx.repo)
        found = offer(ctx.repo, slot)
        wanted = SlotFilter(ref, service, None, None, None)
        resources += _context_of(repo, wanted, found)
    return Reply(200, _collection(ctx, resources))


# -- $vermittlungscodestatus_abrufen --------------------------------------------------------------------
def code_status(ctx: Context, call: Call) -> Reply:
    body = _body(ctx, call, STATUS)
    raw, _inputs = _code_and_inputs(body, STATUS_PARAMS, STATUS)
    service = _referrals(ctx)
    ref = service.lookup(raw, ctx.caller.client_id)
    ctx.audit_entity = f"ServiceRequest/{ref.service_request.id}"
    service.guard(ref, "status")
    reduced = service.reduced(ref)
    return Reply(200, _collection(ctx, [(("ServiceRequest", reduced.get("id", "")), reduced)]))


# -- shared ---------------------------------------------------------------------------------------------
def _body(ctx: Context, call: Call, operation: Operation) -> dict:
    """Role first (403), then the interaction (405), then the body (400/415)."""
    ctx.audit_entity = "ServiceRequest"
    ctx.policy.check_operation(operation.code)
    if call.method != "POST":
        raise FhirError("method-not-allowed", f"${operation.code} is invoked with POST.")
    return call.resource()


def _code_and_inputs(
    body: dict, declared: tuple[OperationParam, ...], operation: Operation
) -> tuple[str, Inputs]:
    """The raw code (valueString, or valueIdentifier of the Vermittlungscode system) and the other inputs."""
    items = parameters_of(body)
    given = [p for p in items if p["name"] == CODE_PARAM]
    rest_body = {"resourceType": "Parameters", "parameter": [p for p in items if p["name"] != CODE_PARAM]}
    inputs = read_parameters(rest_body, [p for p in declared if p.name != CODE_PARAM], "$" + operation.code)
    if len(given) != 1:
        raise FhirError("invalid", f"The parameter {CODE_PARAM} is required once.", diagnostics=CODE_PARAM)
    entry = given[0]
    keys = [k for k in entry if k.startswith("value") or k in ("resource", "part")]
    if keys == ["valueString"] and isinstance(entry["valueString"], str):
        return entry["valueString"], inputs
    if keys == ["valueIdentifier"] and isinstance(entry["valueIdentifier"], dict):
        identifier = entry["valueIdentifier"]
        value = identifier.get("value")
        if identifier.get("system") != codes.SYSTEM or not isinstance(value, str):
            raise FhirError(
                "invalid",
                f"A {CODE_PARAM} valueIdentifier must carry the system {codes.SYSTEM} and a value.",
                diagnostics=CODE_PARAM,
            )
        return value, inputs
    raise FhirError(
        "invalid",
        f"The parameter {CODE_PARAM} must be a valueString or a valueIdentifier.",
        diagnostics=CODE_PARAM,
    )


def _referrals(ctx: Context) -> ReferralService:
    return ReferralService(ctx.repo, ctx.settings, ctx.tz)


def _code_reply(ref: Referral) -> Reply:
    """204 with the code's version, so that the third party can apply seed 001's lastUpdated rule."""
    stored = ref.service_request
    return Reply(
        204,
        None,
        {
            "ETag": f'W/"{stored.version_id}"',
            "Last-Modified": formatdate(stored.last_updated / 1_000_000, usegmt=True),
        },
    )


def _collection(ctx: Context, resources: list[Entry]) -> dict:
    """A collection Bundle of resources, each given with its type and id."""
    seen: set[tuple[str, str]] = set()
    entries = []
    for key, resource in resources:
        if key in seen:
            continue
        seen.add(key)
        entries.append({"fullUrl": f"{ctx.base}/{key[0]}/{key[1]}", "resource": resource})
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": instant(ctx.clock.now_us()),
        "entry": entries,
    }


for _operation_def, _handler in (
    (REQUEST, request_code),
    (SEARCH, search_slots),
    (BOOK, book_slot),
    (CANCEL, cancel_booking),
    (INFO, booking_information),
    (STATUS, code_status),
):
    capability.register_operation(_operation_def)
    reads_first = _handler is search_slots  # it writes only as the code's window opens or has ended
    fhir_endpoint.register_operation(None, _operation_def.code, _handler, reads_first=reads_first)
