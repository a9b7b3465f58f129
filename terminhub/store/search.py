"""Search: a SearchRequest compiled to one SQL query over resources and index rows.

Paging is keyset paging (sort keys then id) through an opaque cursor, so a page never repeats or skips a
resource that matched throughout, whatever is written meanwhile; `page` is plain offset paging.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)

from terminhub.fhir import searchparams
from terminhub.fhir.dates import MAX_US, DateError, parse_range, split_prefix
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.search_request import Criterion, SearchRequest
from terminhub.store import schema
from terminhub.store.dialect import one_of
from terminhub.store.indexer import normalise_text, split_reference
from terminhub.store.repository import Stored

# Which ids of a type the caller may see: a Select of ids, None for all.
Scope = Callable[[str], Select | None]

R = schema.resources
S = schema.search_index
OFFERS = schema.slot_offers

# A server-written Provenance's `recorded` is its `meta.lastUpdated` (its feed position): searched and
# sorted on the resource row itself.
FEED_POSITION = ("Provenance", "recorded")

# Searches of these types without an `active` criterion return only those whose `active` is true or absent.
DEFAULT_ACTIVE = frozenset({"HealthcareService", "Schedule"})


@dataclass
class SearchResult:
    matches: list[Stored]
    includes: list[Stored] = field(default_factory=list)
    total: int | None = None
    next_cursor: dict | None = None
    prev_cursor: dict | None = None
    has_next: bool = False


class SearchEngine:
    """Runs searches on one connection with the caller's scope."""

    def __init__(
        self, conn: Connection, tz: ZoneInfo, scope: Scope, base_url: str = "", now_us: int | None = None
    ) -> None:
        self.conn = conn
        self.tz = tz
        self.scope = scope
        self.base_url = base_url
        self.now_us = now_us

    # -- the main query ------------------------------------------------------------------------------
    def run(self, request: SearchRequest) -> SearchResult:
        where = self.where(request.resource_type, request.criteria, default_active=request.default_active)
        sort_cols = self._sort_columns(request)
        result = SearchResult(matches=[])
        if request.total or request.count == 0:
            result.total = self.conn.execute(select(func.count()).select_from(R).where(*where)).scalar_one()
        if request.count == 0:
            return result
        backwards = bool(request.cursor and request.cursor.get("d") == "prev")
        query = self._page_query(request, where, sort_cols)  # checks the cursor, whichever query runs
        rows = self._feed_page(request, sort_cols)
        if rows is None:
            rows = list(self.conn.execute(query))
        more = len(rows) > request.count
        rows = rows[: request.count]
        if backwards:
            rows.reverse()
        result.matches = [
            Stored(
                request.resource_type,
                row.id,
                row.version_id,
                row.last_updated,
                False,
                row.content,
                row.created_by,
            )
            for row in rows
        ]
        n = len(sort_cols)
        if rows:
            first, last = list(rows[0][-n:]), list(rows[-1][-n:])
            has_later = backwards or more
            has_earlier = more if backwards else bool(request.cursor or (request.page or 1) > 1)
            result.next_cursor = {"k": last, "d": "next"} if has_later else None
            result.prev_cursor = {"k": first, "d": "prev"} if has_earlier else None
        result.has_next = result.next_cursor is not None
        result.includes = self.includes(request, result.matches)
        return result

    def _page_query(
        self, request: SearchRequest, where: list[ColumnElement], sort_cols: list[tuple[ColumnElement, bool]]
    ) -> Select:
        """A page of the matches of `where`: after the cursor, in the sort order, one row more than asked."""
        keys = [col for col, _ in sort_cols]
        query = select(R.c.id, R.c.version_id, R.c.last_updated, R.c.content, R.c.created_by, *keys)
        query = query.where(*where)
        backwards = bool(request.cursor and request.cursor.get("d") == "prev")
        if request.cursor:
            query = query.where(_after(sort_cols, request.cursor["k"], backwards))
        order = [(col.desc() if desc != backwards else col.asc()) for col, desc in sort_cols]
        query = query.order_by(*order).limit(request.count + 1)
        if request.page and not request.cursor:
            query = query.offset((request.page - 1) * request.count)
        return query

    def _feed_page(self, request: SearchRequest, sort_cols: list[tuple[ColumnElement, bool]]) -> list | None:
        """A practice's change-feed page, read from its own feed positions; None where this does not apply.

        Its Provenances are a small share of all (one practice's of a country's): found by walking every
        Provenance in feed order, a page of 1,000 read some 100,000. Its `feed_owners` rows carry the
        positions (one per change, each stamped once), so the page's window is found there first (the
        next `count` + 1 positions from the start), and the page is searched within that window. Where
        the window holds fewer Provenances than positions (one gone meanwhile) the ordinary query answers."""
        start = _feed_start(request, self.tz)
        visible = self.scope("Provenance") if start is not None else None
        F = schema.feed_owners
        if visible is None or F not in visible.get_final_froms():
            return None
        positions = (
            visible.with_only_columns(F.c.recorded)
            .where(F.c.recorded >= start)
            .distinct()
            .order_by(F.c.recorded)
            .limit(request.count + 1)
        )
        window = [row.recorded for row in self.conn.execute(positions)]
        if not window:
            return []
        inside = visible.where(F.c.recorded >= start, F.c.recorded <= window[-1])
        where = self.where("Provenance", request.criteria, within=inside)
        where += [R.c.last_updated >= start, R.c.last_updated <= window[-1]]
        rows = list(self.conn.execute(self._page_query(request, where, sort_cols)))
        return rows if len(rows) == len(window) else None

    def where(
        self,
        resource_type: str,
        criteria: list[Criterion],
        *,
        default_active: bool = True,
        within: Select | None = None,
    ) -> list[ColumnElement]:
        """The clauses of a search; `within`: the ids to search instead of the caller's whole scope."""
        clauses: list[ColumnElement] = [R.c.type == resource_type, R.c.deleted.is_(False)]
        visible = within if within is not None else self.scope(resource_type)
        if visible is not None:
            clauses.append(R.c.id.in_(visible))
        for criterion in criteria:
            clauses.append(self._criterion(resource_type, criterion))
        if default_active and resource_type in DEFAULT_ACTIVE and all(c.name != "active" for c in criteria):
            clauses.append(~self._has_token(resource_type, "active", "false"))
        return clauses

    def _sort_columns(self, request: SearchRequest) -> list[tuple[ColumnElement, bool]]:
        cols: list[tuple[ColumnElement, bool]] = []
        for name, descending in request.sort:
            if name == "_lastUpdated" or (request.resource_type, name) == FEED_POSITION:
                cols.append((R.c.last_updated, descending))
            elif name == "_id":
                continue
            else:
                sub = (
                    select(func.coalesce(func.min(S.c.lo), MAX_US))
                    .where(S.c.type == request.resource_type, S.c.id == R.c.id, S.c.param == name)
                    .scalar_subquery()
                )
                cols.append((sub.label(f"sort_{len(cols)}"), descending))
        cols.append((R.c.id, any(d for n, d in request.sort if n == "_id")))
        return cols

    # -- criteria ------------------------------------------------------------------------------------
    def _criterion(self, resource_type: str, c: Criterion) -> ColumnElement:
        if c.modifier == "missing":
            present = self._has_param(resource_type, c.name)
            wanted_missing = c.values[0] == "true"
            return not_(present) if wanted_missing else present
        if c.name == "_id":
            return R.c.id.in_(list(c.values))
        if c.name == "_lastUpdated" or (resource_type, c.name) == FEED_POSITION:
            return or_(*[_date_compare(R.c.last_updated, R.c.last_updated + 1, v, self.tz) for v in c.values])
        param = c.param
        assert param is not None
        if param.kind == "special" or not param.paths:
            return self._special(resource_type, c)
        if resource_type == "Slot" and c.name == "status" and self.now_us is not None and c.modifier is None:
            return or_(*[self._slot_status(v) for v in c.values])
        matches = or_(*[self._value(param, c.modifier, v) for v in c.values])
        sub = select(S.c.id).where(S.c.type == resource_type, S.c.param == c.name, matches)
        if c.modifier == "not":
            return R.c.id.not_in(sub)
        return R.c.id.in_(sub)

    def _slot_status(self, value: str) -> ColumnElement:
        """A Slot's status as readers see it now: a hold or unconfirmed booking that ran out has ended
        already, before the sweep writes it down (2.4)."""
        code = value.split("|")[-1]
        C = schema.slot_claims
        now = self.now_us

        def stored(*codes: str) -> ColumnElement:
            return R.c.id.in_(
                select(S.c.id).where(S.c.type == "Slot", S.c.param == "status", S.c.code.in_(codes))
            )

        lapsed = select(C.c.slot_id).where(
            or_(
                and_(C.c.hold_owner.is_not(None), C.c.held_until <= now),
                and_(C.c.appointment_id.is_not(None), C.c.claim_until <= now),
            )
        )
        lapsed_to = select(C.c.slot_id).where(C.c.slot_id.in_(lapsed), C.c.base_status == code)
        if code in ("busy", "busy-tentative"):
            return and_(stored(code), R.c.id.not_in(lapsed))
        return or_(stored(code), and_(stored("busy", "busy-tentative"), R.c.id.in_(lapsed_to)))

    def _has_param(self, resource_type: str, name: str) -> ColumnElement:
        return exists().where(S.c.type == resource_type, S.c.id == R.c.id, S.c.param == name)

    def _has_token(self, resource_type: str, name: str, code: str) -> ColumnElement:
        return exists().where(
            S.c.type == resource_type, S.c.id == R.c.id, S.c.param == name, S.c.code == code
        )

    def _value(self, param: searchparams.SearchParam, modifier: str | None, value: str) -> ColumnElement:
        if param.kind == "token" or (param.kind == "reference" and modifier == "identifier"):
            return _token(value)
        if param.kind == "reference":
            return self._reference(param, modifier, value)
        if param.kind == "date":
            return _date_compare(S.c.lo, S.c.hi, value, self.tz)
        if param.kind == "string":
            text = _like_escape(normalise_text(value))
            if modifier == "exact":
                return S.c.code == value  # the value as written: case and accents matter
            if modifier == "contains":
                return S.c.text.like(f"%{text}%", escape="\\")
            return S.c.text.like(f"{text}%", escape="\\")
        if param.kind == "uri":
            return S.c.text == value
        raise FhirError("invalid", f"Search parameter {param.name} cannot be used here.")

    def _reference(self, param: searchparams.SearchParam, modifier: str | None, value: str) -> ColumnElement:
        local = value.removeprefix(self.base_url.rstrip("/") + "/fhir/")
        target = split_reference(local) if "/" in value else None
        if target:
            ref_type, ref_id = target
        else:
            ref_type, ref_id = (modifier if modifier and modifier[:1].isupper() else None), value
        clauses = [S.c.ref_id == ref_id]
        if ref_type:
            clauses.append(S.c.ref_type == ref_type)
        return and_(*clauses)

    def _special(self, resource_type: str, c: Criterion) -> ColumnElement:
        if resource_type == "Slot" and c.name in ("specialty", "service-type"):
            return self._slot_offers(c)
        if resource_type == "Location" and c.name == "near":
            return or_(*[_near(v) for v in c.values])
        if resource_type == "Appointment" and c.name in ("bsnr", "lanr"):
            return self._appointments_of_practice(c)
        raise FhirError("invalid", f"Search parameter {c.name} is not supported for {resource_type}.")

    def _slot_offers(self, c: Criterion) -> ColumnElement:
        """A Slot offers the codings of its own `specialty` and `serviceType`, or, where it has none, those
        of its Schedule (3.1); `specialty` and `service-type` both match every coding it offers. Kept in
        `slot_offers` as the Slot is written."""
        offered = R.c.id.in_(select(OFFERS.c.slot_id).where(or_(*[_offered(v) for v in c.values])))
        return not_(offered) if c.modifier == "not" else offered

    def _appointments_of_practice(self, c: Criterion) -> ColumnElement:
        """`bsnr` and `lanr` (contract 5): Appointments on Slots of Schedules with a PractitionerRole actor
        whose Organization carries the BSNR, or whose Practitioner has an ANR/LANR with the same first 7
        digits (values are checked when the request is parsed: 9 digits, 7 or 9 digits)."""
        if c.name == "bsnr":
            organizations = select(S.c.id).where(
                S.c.type == "Organization",
                S.c.param == "identifier",
                S.c.system == searchparams.BSNR_SYSTEM,
                S.c.code.in_(list(c.values)),
            )
            roles = referring("PractitionerRole", "organization", "Organization", organizations)
        else:
            # An ANR is 7 digits, a LANR the ANR and a 2-digit specialty code: equal first 7 digits.
            anrs = sorted({v[:7] for v in c.values})
            numbers = [*anrs, *(f"{anr}{n:02d}" for anr in anrs for n in range(100))]
            practitioners = select(S.c.id).where(
                S.c.type == "Practitioner",
                S.c.param == "identifier",
                S.c.system == searchparams.ANR_SYSTEM,
                S.c.code.in_(numbers),
            )
            roles = referring("PractitionerRole", "practitioner", "Practitioner", practitioners)
        schedules = referring("Schedule", "actor", "PractitionerRole", roles)
        slots = referring("Slot", "schedule", "Schedule", schedules)
        return R.c.id.in_(referring("Appointment", "slot", "Slot", slots))

    # -- includes ------------------------------------------------------------------------------------
    def includes(self, request: SearchRequest, matches: list[Stored]) -> list[Stored]:
        seen = {(m.type, m.id) for m in matches}
        found: list[Stored] = []
        frontier = list(matches)
        first_round = True
        while frontier:
            new: list[Stored] = []
            for source, param_name, target, iterate in request.includes:
                if not first_round and not iterate:
                    continue
                ids = [s.id for s in frontier if s.type == source]
                if ids:
                    new += self._follow(source, param_name, target, ids, seen)
            for source, param_name, _target, iterate in request.revincludes:
                if not first_round and not iterate:
                    continue
                new += self._follow_back(source, param_name, frontier, seen)
            found += new
            frontier = new if any(i[3] for i in request.includes + request.revincludes) else []
            first_round = False
        return found

    def _follow(
        self, source: str, param_name: str, target: str | None, ids: list[str], seen: set[tuple[str, str]]
    ) -> list[Stored]:
        query = select(S.c.ref_type, S.c.ref_id).where(
            S.c.type == source, S.c.param == param_name, self._among(S.c.id, ids), S.c.ref_id.is_not(None)
        )
        if target:
            query = query.where(S.c.ref_type == target)
        wanted: dict[str, list[str]] = {}
        for ref_type, ref_id in self.conn.execute(query):
            if (ref_type, ref_id) not in seen:
                seen.add((ref_type, ref_id))
                wanted.setdefault(ref_type, []).append(ref_id)
        return self._load_visible(wanted)

    def _follow_back(
        self, source: str, param_name: str, frontier: list[Stored], seen: set[tuple[str, str]]
    ) -> list[Stored]:
        by_type: dict[str, list[str]] = {}
        for s in frontier:
            by_type.setdefault(s.type, []).append(s.id)
        wanted: dict[str, list[str]] = {}
        for ref_type, ids in by_type.items():
            query = select(S.c.id).where(
                S.c.type == source,
                S.c.param == param_name,
                S.c.ref_type == ref_type,
                self._among(S.c.ref_id, ids),
            )
            for (rid,) in self.conn.execute(query):
                if (source, rid) not in seen:
                    seen.add((source, rid))
                    wanted.setdefault(source, []).append(rid)
        return self._load_visible(wanted)

    def _among(self, column, ids: list[str]):  # noqa: ANN001, ANN202 - a column; a SQL expression
        """A feed page's 1,000 targets as an IN list made a new statement text for each page, written out
        and parsed again (a fifth of the page's time)."""
        return one_of(column, self.conn.dialect.name, ids)

    def _load_visible(self, wanted: dict[str, list[str]]) -> list[Stored]:
        loaded: list[Stored] = []
        for resource_type, ids in wanted.items():
            query = select(R.c.id, R.c.version_id, R.c.last_updated, R.c.content, R.c.created_by).where(
                R.c.type == resource_type, self._among(R.c.id, ids), R.c.deleted.is_(False)
            )
            visible = self.scope(resource_type)
            if visible is not None:
                query = query.where(_in_scope(visible))
            for row in self.conn.execute(query.order_by(R.c.id)):
                loaded.append(
                    Stored(
                        resource_type,
                        row.id,
                        row.version_id,
                        row.last_updated,
                        False,
                        row.content,
                        row.created_by,
                    )
                )
        return loaded


def holding(scope: Select | CompoundSelect, resource_id) -> Select:  # noqa: ANN001 - a value, bind or column
    """The rows of `scope` (a query of ids) with this id: the id is tested inside the scope's query, each arm
    of a union and each level of a practice's scope found by index, not the scope computed whole and then
    searched."""
    ids = scope.subquery()
    return select(literal(1)).select_from(ids).where(ids.c[0] == resource_id)


def _in_scope(scope: Select | CompoundSelect) -> ColumnElement:
    """The resource row is in `scope`, tested for that row. As `id IN (scope)`, PostgreSQL planned the scope
    of a feed page's 500 Appointments (four nested levels) as a whole and took 3 to 20 s, where a page of
    Slots took 0.15. OFFSET 0 keeps the test per row (not pulled up into a join the planner misjudges)."""
    return exists(holding(scope, R.c.id).offset(0))


def referring(source: str, param: str, target_type: str, targets: Select) -> Select:
    """Ids of `source` resources whose reference `param` points to one of `targets` (of `target_type`).
    The type leads ix_search_ref: without it, a lookup reads the whole index."""
    return select(S.c.id).where(
        S.c.type == source, S.c.param == param, S.c.ref_type == target_type, S.c.ref_id.in_(targets)
    )


def _token(value: str) -> ColumnElement:
    if "|" not in value:
        return S.c.code == value
    system, _, code = value.partition("|")
    if not system:
        return and_(S.c.system.is_(None), S.c.code == code)
    if not code:
        return and_(S.c.system == system, S.c.code.is_not(None))  # rows of ix_search_token
    return and_(S.c.system == system, S.c.code == code)


def _offered(value: str) -> ColumnElement:
    """A token value against `slot_offers`, where an absent system is stored as ''."""
    if "|" not in value:
        return OFFERS.c.code == value
    system, _, code = value.partition("|")
    if not code:
        return OFFERS.c.system == system
    return and_(OFFERS.c.system == system, OFFERS.c.code == code)


def _date_compare(lo: ColumnElement, hi: ColumnElement, value: str, tz: ZoneInfo) -> ColumnElement:
    """R4 prefix semantics between the resource's range [lo, hi) and the value's range [plo, phi)."""
    prefix, raw = split_prefix(value)
    try:
        plo, phi = parse_range(raw, tz)
    except DateError as exc:
        raise FhirError("invalid", str(exc)) from exc
    return and_(lo.is_not(None), _date_prefix(lo, hi, prefix, plo, phi))  # rows of ix_search_date


def _date_prefix(lo: ColumnElement, hi: ColumnElement, prefix: str, plo: int, phi: int) -> ColumnElement:
    if prefix == "eq":
        return and_(lo >= plo, hi <= phi)
    if prefix == "ne":
        return not_(and_(lo >= plo, hi <= phi))
    if prefix == "gt":
        return hi > phi
    if prefix == "lt":
        return lo < plo
    if prefix == "ge":
        return or_(hi > phi, lo >= plo)
    if prefix == "le":
        return or_(lo < plo, hi <= phi)
    if prefix == "sa":
        return lo >= phi
    if prefix == "eb":
        return hi <= plo
    return and_(lo < phi, hi > plo)  # ap: overlaps


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _near(value: str) -> ColumnElement:
    """`lat|lon|distance|units` (km by default; m accepted): a radius around a point."""
    parts = value.split("|")
    try:
        lat, lon = float(parts[0]), float(parts[1])
        distance = float(parts[2]) if len(parts) > 2 and parts[2] else None
    except (ValueError, IndexError) as exc:
        raise FhirError("invalid", "near must be latitude|longitude|distance|units.") from exc
    if distance is None:
        raise FhirError("invalid", "near needs a distance: latitude|longitude|distance|units.")
    unit = parts[3] if len(parts) > 3 and parts[3] else "km"
    if unit in ("m", "urn:ucum|m"):
        distance /= 1000
    elif unit not in ("km", "urn:ucum|km"):
        raise FhirError("invalid", "near distance units must be km or m.")
    P = schema.positions
    kx = 111.32 * math.cos(math.radians(lat))
    ky = 110.57
    dlat = (distance / ky) + 1e-9
    dlon = (distance / max(kx, 1e-6)) + 1e-9
    dist2 = (P.c.latitude - lat) * (P.c.latitude - lat) * (ky * ky) + (P.c.longitude - lon) * (
        P.c.longitude - lon
    ) * (kx * kx)
    inside = select(P.c.id).where(
        P.c.type == "Location",
        P.c.latitude.between(lat - dlat, lat + dlat),
        P.c.longitude.between(lon - dlon, lon + dlon),
        dist2 <= literal(distance * distance),
    )
    return R.c.id.in_(inside)


def _feed_start(request: SearchRequest, tz: ZoneInfo) -> int | None:
    """The first feed position a plain change-feed page can hold (its `recorded`/`_lastUpdated` lower bounds
    and, past the cursor's own, its cursor's), or None for any other search: other criteria, another
    order, offsets, paging back."""
    if request.resource_type != "Provenance" or request.page:
        return None
    if request.sort not in ([], [("recorded", False)], [("_lastUpdated", False)]):
        return None
    cursor = request.cursor  # its keys were checked by `_after`: (position, id)
    if cursor and cursor.get("d") != "next":
        return None
    start = cursor["k"][0] + 1 if cursor else -MAX_US
    for criterion in request.criteria:
        if criterion.name not in ("recorded", "_lastUpdated") or criterion.modifier:
            return None
        lowest = None
        for value in criterion.values:
            prefix, raw = split_prefix(value)
            if prefix not in ("gt", "ge"):
                return None
            try:
                plo, phi = parse_range(raw, tz)
            except DateError:
                return None
            bound = phi if prefix == "gt" else plo  # gt: its range ends before the change's; ge: begins
            lowest = bound if lowest is None else min(lowest, bound)
        if lowest is not None:
            start = max(start, lowest)
    return start


def _after(sort_cols: list[tuple[ColumnElement, bool]], keys: list, backwards: bool) -> ColumnElement:
    """Rows strictly after (or before) the cursor's keys in the sort order."""
    # Sort keys are instants (integers) and the id (a string) last, as run() hands them out.
    if (
        len(keys) != len(sort_cols)
        or not isinstance(keys[-1], str)
        or any(not isinstance(k, int) or isinstance(k, bool) or abs(k) > MAX_US for k in keys[:-1])
    ):
        raise FhirError("invalid", "The paging cursor does not belong to this search.")
    clause: ColumnElement = false()
    for i in range(len(sort_cols) - 1, -1, -1):
        col, desc = sort_cols[i]
        forward = desc == backwards  # ascending in the direction of travel
        step = col > keys[i] if forward else col < keys[i]
        clause = or_(step, and_(col == keys[i], clause)) if i < len(sort_cols) - 1 else step
    return clause if len(sort_cols) else true()
