"""The RESTful interactions of FHIR R4: read, vread, create, update, delete, search, history."""

from __future__ import annotations

import uuid
from email.utils import formatdate
from functools import lru_cache
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import func, select

from terminhub.api import bundles
from terminhub.api import feed as feed_rules
from terminhub.api.code_search import check_codes
from terminhub.api.context import Context, Reply
from terminhub.api.practice_rules import (
    check_practice_write,
    check_terminprofil_fields,
    practice_defaults,
)
from terminhub.api.references import check_house_rules, check_references
from terminhub.clock import instant
from terminhub.fhir.identifiers import check_patient_identifiers
from terminhub.fhir.outcome import FhirError, information, operation_outcome
from terminhub.fhir.search_request import encode_cursor, parse_search
from terminhub.fhir.validation import valid_id, validate
from terminhub.store import cursors, schema
from terminhub.store.repository import Stored

MAX_HISTORY = 1000
MAX_VERSION = 2**31 - 1  # version ids are 32-bit integers in both databases


def known_id(resource_type: str, resource_id: str) -> None:
    """An id that is no FHIR id names nothing: 404 before it reaches a query (NUL breaks PostgreSQL)."""
    if not valid_id(resource_id):
        raise FhirError("not-found", f"No {resource_type} has this id: it is not a valid FHIR id.")


def check_params(params: list[tuple[str, str]]) -> None:
    """Search parameters with a NUL character are refused: no stored value holds one."""
    if any("\x00" in name or "\x00" in value for name, value in params):
        raise FhirError("invalid", "Search parameters may not contain NUL characters.")


def stored_reply(ctx: Context, stored: Stored, status: int = 200, *, location: bool = False) -> Reply:
    headers = {"ETag": stored.etag, "Last-Modified": _http_date(stored.last_updated)}
    if location:
        headers["Location"] = f"{ctx.base}/{stored.type}/{stored.id}/_history/{stored.version_id}"
    if ctx.prefer_return == "minimal":
        return Reply(status, None, headers)
    if ctx.prefer_return == "OperationOutcome":
        text = f"{stored.type}/{stored.id} version {stored.version_id} stored."
        return Reply(status, information(text), headers)
    return Reply(status, stored.content, headers)


def _http_date(us: int) -> str:
    return _http_date_of_second(us // 1_000_000)


@lru_cache(maxsize=64)
def _http_date_of_second(second: int) -> str:
    """HTTP dates name whole seconds: a Bundle's 1,000 writes, or a second's reads, format one date."""
    return formatdate(second, usegmt=True)


# -- read --------------------------------------------------------------------------------------------
def read(ctx: Context, resource_type: str, resource_id: str) -> Reply:
    ctx.policy.check_read(resource_type)
    known_id(resource_type, resource_id)
    [stored] = ctx.present([ctx.load_visible(resource_type, resource_id)])
    return Reply(200, stored.content, {"ETag": stored.etag, "Last-Modified": _http_date(stored.last_updated)})


def vread(ctx: Context, resource_type: str, resource_id: str, version: str) -> Reply:
    ctx.policy.check_read(resource_type)
    known_id(resource_type, resource_id)
    ctx.load_visible(resource_type, resource_id) if ctx.policy.scope(resource_type) is not None else None
    if not (version.isascii() and version.isdigit()) or int(version) > MAX_VERSION:
        raise FhirError("not-found", f"{resource_type}/{resource_id} has no version {version}.")
    stored = ctx.repo.vread(resource_type, resource_id, int(version))
    if stored is None:
        raise FhirError("not-found", f"{resource_type}/{resource_id} has no version {version}.")
    if stored.deleted:
        raise FhirError("gone", f"Version {version} of {resource_type}/{resource_id} is a deletion.")
    return Reply(200, stored.content, {"ETag": stored.etag, "Last-Modified": _http_date(stored.last_updated)})


# -- write -------------------------------------------------------------------------------------------
def prepare(ctx: Context, resource_type: str, resource: dict, deferred: list[dict] | None = None) -> None:
    """Validation and reference checks that every written body passes (references of a transaction's
    entries are checked once all its entries are written: `deferred`)."""
    validate(resource, resource_type)
    check_patient_identifiers(resource)
    check_terminprofil_fields(resource)
    if deferred is not None:
        deferred.append(resource)
    else:
        check_written(ctx, resource)


def check_written(ctx: Context, resource: dict) -> None:
    if ctx.policy.checks_references:
        check_references(ctx, resource)
    check_house_rules(ctx, resource)
    check_practice_write(ctx, resource)


def create(
    ctx: Context,
    resource_type: str,
    resource: dict,
    if_none_exist: str | None = None,
    *,
    resource_id: str | None = None,
    deferred: list[dict] | None = None,
) -> Reply:
    ctx.interaction = "create"
    ctx.audit_entity = resource_type
    ctx.policy.check_write(resource_type, "create", resource)
    if resource.get("resourceType") != resource_type:
        raise FhirError("invalid", f"The body is a {resource.get('resourceType')}, expected {resource_type}.")
    if if_none_exist:
        existing = conditional_match(ctx, resource_type, if_none_exist)
        if existing is not None:
            return stored_reply(ctx, existing, 200)
    resource = practice_defaults(ctx, resource_type, dict(resource))
    resource.pop("id", None)
    prepare(ctx, resource_type, resource, deferred)
    resource_id = resource_id or str(uuid.uuid4())
    resource = keep_invariant(ctx, resource_type, resource_id, resource, None, new=True)
    stored = ctx.repo.save(resource_type, resource, resource_id=resource_id, absent=True)  # a new uuid
    ctx.audit_entity = f"{resource_type}/{stored.id}"
    return stored_reply(ctx, stored, 201, location=True)


def conditional_match(ctx: Context, resource_type: str, query: str) -> Stored | None:
    """If-None-Exist: the one match the caller can see, None for none, 412 for several."""
    ctx.policy.check_search(resource_type)
    params = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    check_params(params)
    if not params:
        raise FhirError("invalid", "If-None-Exist needs search parameters.")
    request = parse_search(resource_type, params, strict=True)
    request.count = 2
    request.page = None
    request.default_active = False
    request.includes, request.revincludes = [], []
    matches = ctx.engine().run(request).matches
    if len(matches) > 1:
        raise FhirError("version-conflict", "The conditional create matches more than one resource.")
    return matches[0] if matches else None


def update(
    ctx: Context,
    resource_type: str,
    resource_id: str,
    resource: dict,
    if_match: str | None,
    *,
    deferred: list[dict] | None = None,
) -> Reply:
    ctx.interaction = "update"
    ctx.audit_entity = f"{resource_type}/{resource_id}"
    if resource.get("resourceType") != resource_type:
        raise FhirError("invalid", f"The body is a {resource.get('resourceType')}, expected {resource_type}.")
    if resource.get("id") != resource_id:
        raise FhirError("invalid", "The id in the body must equal the id in the URL.")
    if not valid_id(resource_id):
        raise FhirError("invalid", f"{resource_id} is not a valid FHIR id.")
    current = ctx.repo.get(resource_type, resource_id)
    exists = current is not None and not current.deleted
    ctx.interaction = "update" if exists else "create"
    ctx.policy.check_write(resource_type, "update" if exists else "update-as-create", resource)
    if exists and not ctx.visible(resource_type, resource_id):
        raise FhirError("not-found", f"{resource_type}/{resource_id} is not known.")
    expected = parse_if_match(if_match)
    if expected is not None and not exists:
        raise FhirError("version-conflict", f"{resource_type}/{resource_id} does not exist (If-Match).")
    if resource_type == "Appointment" and exists and ctx.caller.role != "admin":
        validate(resource, resource_type)
        check_new_participants(ctx, current.resource(), resource)
        stored = ctx.booking().update(
            current,
            resource,
            ctx.booker(),
            creator=_creator(current),
            practice_may=ctx.caller.role == "practice",
            if_match=expected,
        )
        return stored_reply(ctx, stored, 200)
    prepare(ctx, resource_type, resource, deferred)
    resource = keep_invariant(
        ctx, resource_type, resource_id, resource, current if exists else None, new=current is None
    )
    stored = ctx.repo.save(
        resource_type, resource, resource_id=resource_id, if_match=expected, absent=current is None
    )
    return stored_reply(ctx, stored, 200 if exists else 201, location=not exists)


def keep_invariant(
    ctx: Context, resource_type: str, resource_id: str, resource: dict, current: Stored | None, *, new: bool
) -> dict:
    """Writes stored as sent still keep the booking invariant: Slot and Appointment go through the core.
    `new`: the id has never had a row, not even a deleted one."""
    if resource_type == "Appointment":
        ctx.booking().admin_appointment(resource, current.resource() if current else None, resource_id)
    elif resource_type == "Slot":
        resource = ctx.booking().admin_slot(resource_id, resource, new_slot=new)
    return resource


def check_new_participants(ctx: Context, old: dict, new: dict) -> None:
    """Participants added by a PUT must refer to what the caller may see (2.2)."""
    before = {orjson.dumps(p) for p in old.get("participant") or []}
    added = [p for p in new.get("participant") or [] if orjson.dumps(p) not in before]
    if added:
        check_references(ctx, {"participant": added})


def _creator(stored: Stored) -> str | None:
    """The client that booked an Appointment (its `booked-by`), else the one that created it."""
    for ext in stored.resource().get("extension") or []:
        if ext.get("url") == "urn:terminhub:booked-by":
            for part in ext.get("extension") or []:
                if part.get("url") == "client":
                    return (part.get("valueIdentifier") or {}).get("value")
    return stored.created_by


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise FhirError("version-conflict", f"If-Match {value} names no version of this resource.")
    return int(tag)


def delete(ctx: Context, resource_type: str, resource_id: str) -> Reply:
    ctx.interaction = "delete"
    ctx.audit_entity = f"{resource_type}/{resource_id}"
    ctx.policy.check_write(resource_type, "delete")
    known_id(resource_type, resource_id)
    current = ctx.repo.get(resource_type, resource_id)
    if current is None:
        raise FhirError("not-found", f"{resource_type}/{resource_id} is not known.")
    if current.deleted:
        return Reply(204)
    if not ctx.visible(resource_type, resource_id):
        raise FhirError("not-found", f"{resource_type}/{resource_id} is not known.")
    ctx.policy.check_write(resource_type, "delete", current.resource())
    if resource_type in ("Schedule", "Slot", "Appointment"):
        ctx.booking().before_delete(current)
    ctx.repo.delete(resource_type, resource_id)
    return Reply(204)


# -- search ------------------------------------------------------------------------------------------
def search(ctx: Context, resource_type: str, params: list[tuple[str, str]]) -> Reply:
    ctx.interaction = "search"
    ctx.audit_entity = resource_type
    ctx.policy.check_search(resource_type)
    check_params(params)
    params = _resume_hidden(ctx, params)
    request = parse_search(resource_type, params, strict=ctx.strict)
    if ctx.caller.role == "practice":
        request.default_active = False  # section 5: a practice's search without a filter is its whole scope
    if resource_type == "Provenance":
        feed_rules.check_position(ctx, params)
    feed_rules.check_poll(ctx, resource_type, params)
    hide = None
    if check_codes(ctx, request):
        now = ctx.clock.now_us()

        def hide(kept: list[tuple[str, str]], cursor: dict | None) -> str:
            return cursors.save(ctx.conn, {"params": kept, "cursor": cursor}, now)

    result = ctx.engine().run(request)
    result.matches = ctx.present(result.matches)
    result.includes = ctx.present(result.includes)
    outcome = None
    if request.unknown:
        outcome = operation_outcome(
            "invalid",
            "Unknown search parameters were ignored: " + ", ".join(request.unknown),
            issue_code="not-supported",
        )
        outcome["issue"][0]["severity"] = "warning"
    bundle = bundles.searchset(ctx.base, request, result, ctx.clock.now_us(), outcome, hide)
    return Reply(200, bundle)


def _resume_hidden(ctx: Context, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A server-side cursor (`_cursor=s.…`) stands for the parameters it hides."""
    token = next((v for k, v in params if k == "_cursor" and v.startswith(cursors.PREFIX)), None)
    if token is None:
        return params
    state = cursors.load(ctx.conn, token, ctx.clock.now_us())
    if state is None:
        raise FhirError("invalid", "This paging cursor is unknown or expired; search again.")
    resumed = [(k, v) for k, v in state["params"]]
    if state.get("cursor"):
        resumed.append(("_cursor", encode_cursor(state["cursor"])))
    return resumed + [(k, v) for k, v in params if k != "_cursor"]


# -- history -----------------------------------------------------------------------------------------
def instance_history(ctx: Context, resource_type: str, resource_id: str, params: dict[str, str]) -> Reply:
    ctx.interaction = "history"
    ctx.policy.check_read(resource_type)
    known_id(resource_type, resource_id)
    current = ctx.repo.get(resource_type, resource_id)
    if current is None or (not current.deleted and not ctx.visible(resource_type, resource_id)):
        raise FhirError("not-found", f"{resource_type}/{resource_id} is not known.")
    if current.deleted and ctx.policy.scope(resource_type) is not None:
        raise FhirError("not-found", f"{resource_type}/{resource_id} is not known.")
    V = schema.resource_versions
    query = select(V.c.id, V.c.version_id, V.c.last_updated, V.c.method, V.c.content).where(
        V.c.type == resource_type, V.c.id == resource_id
    )
    url = f"{ctx.base}/{resource_type}/{resource_id}/_history"
    return _history_reply(ctx, resource_type, query, params, url)


def type_history(ctx: Context, resource_type: str | None, params: dict[str, str]) -> Reply:
    ctx.interaction = "history"
    V = schema.resource_versions
    query = select(V.c.type, V.c.id, V.c.version_id, V.c.last_updated, V.c.method, V.c.content)
    if resource_type:
        ctx.policy.check_search(resource_type)
        feed_rules.check_poll(ctx, resource_type, list(params.items()), history=True)
        query = query.where(V.c.type == resource_type)
        scope = ctx.policy.scope(resource_type)
        if scope is not None:
            query = query.where(V.c.id.in_(scope))
        url = f"{ctx.base}/{resource_type}/_history"
    else:
        if ctx.caller.role != "admin":
            raise FhirError("forbidden", "System history is open to admin only.")
        url = f"{ctx.base}/_history"
    return _history_reply(ctx, resource_type, query, params, url)


def _history_reply(ctx: Context, resource_type: str | None, query, params: dict[str, str], url: str) -> Reply:
    from terminhub.fhir.dates import DateError, parse_instant

    V = schema.resource_versions
    if params.get("_since"):
        try:
            since = parse_instant(params["_since"], ctx.tz)
        except DateError as exc:
            raise FhirError("invalid", str(exc)) from exc
        query = query.where(V.c.last_updated >= since)
    try:
        count = min(int(params.get("_count", "100")), MAX_HISTORY)
    except ValueError as exc:
        raise FhirError("invalid", "_count must be a whole number.") from exc
    if count < 0:
        raise FhirError("invalid", "_count must not be negative.")
    total = ctx.conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = ctx.conn.execute(query.order_by(V.c.last_updated.desc(), V.c.version_id.desc()).limit(count))
    versions = [
        Stored(
            getattr(row, "type", resource_type),
            row.id,
            row.version_id,
            row.last_updated,
            row.method == "DELETE",
            row.content,
            method=row.method,
        )
        for row in rows
    ]
    return Reply(200, bundles.history(ctx.base, versions, ctx.clock.now_us(), url, total))


__all__ = [
    "read",
    "vread",
    "create",
    "update",
    "delete",
    "search",
    "instance_history",
    "type_history",
    "instant",
]
