"""Batch and transaction Bundles at `POST /fhir`.

A transaction is all or nothing inside the request's one database transaction: `urn:uuid:` fullUrls
get their ids first, references are rewritten, then entries run in FHIR's order (DELETE, POST, PUT,
GET) under the same rules as single requests. A batch runs each entry in its own savepoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from terminhub.api import rest
from terminhub.api.context import Context, Reply
from terminhub.api.references import references
from terminhub.clock import instant
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.searchparams import RESOURCE_TYPES
from terminhub.fhir.validation import valid_id, validate_bundle_shell
from terminhub.store import appends

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


def process(ctx: Context, bundle: dict, route: Callable[[Context, Any], Reply]) -> Reply:
    if bundle.get("resourceType") != "Bundle":
        raise FhirError("invalid", "POST to the base URL takes a batch or transaction Bundle.")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError("invalid", "The Bundle type must be batch or transaction.")
    validate_bundle_shell(_without_resources(bundle))
    entries = bundle.get("entry") or []
    ctx.audit_entity = None
    _plan_each_statement(ctx)
    if kind == "transaction":
        for index, entry in enumerate(entries):
            _check_entry(entry, index)
        return _transaction(ctx, entries, route)
    return _batch(ctx, entries, route)


def _plan_each_statement(ctx: Context) -> None:
    """A Bundle runs the same statements thousands of times while it writes the rows they read (a practice
    reports 2,000 Slots, each with its `ifNoneExist`). PostgreSQL would soon reuse a generic plan of such a
    prepared statement, chosen on statistics from before the writes, and a Bundle took minutes instead of
    seconds; within the Bundle's transaction it plans each statement for its values instead."""
    if ctx.conn.dialect.name == "postgresql":
        ctx.conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")


def _without_resources(bundle: dict) -> dict:
    """The Bundle to validate as such: entry resources are validated entry by entry, as single requests are,
    so that a batch answers an invalid resource in that entry only."""
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        return bundle
    return {**bundle, "entry": [{k: v for k, v in entry.items() if k != "resource"} for entry in entries]}


def _check_entry(entry: dict, index: int) -> None:
    if not isinstance(entry, dict):
        raise FhirError("invalid", f"Entry {index + 1} is not a Bundle entry.")
    request = entry.get("request") or {}
    method, url = request.get("method"), request.get("url")
    if method not in ORDER or not url:
        raise FhirError("invalid", f"Entry {index + 1} needs request.method and request.url.")
    path = urlsplit(url).path
    if any(part.startswith("$") for part in path.split("/")):
        raise FhirError("invalid", f"Entry {index + 1}: operations are not allowed inside a Bundle.")
    if method in ("POST", "PUT") and not isinstance(entry.get("resource"), dict):
        raise FhirError("invalid", f"Entry {index + 1} ({method}) needs a resource.")


def _transaction(ctx: Context, entries: list[dict], route: Callable) -> Reply:
    ids = _assign_ids(ctx, entries)
    for index, entry in enumerate(entries):
        if "resource" in entry:
            entry["resource"] = _rewrite(entry["resource"], ids)
            _check_resolved(entry["resource"], index)
    _learn_absent(ctx, entries)
    responses: list[dict | None] = [None] * len(entries)
    deferred: list[dict] = []
    for index in sorted(range(len(entries)), key=lambda i: ORDER[entries[i]["request"]["method"]]):
        try:
            responses[index] = _run(ctx, entries[index], ids, route, deferred)
        except FhirError as exc:
            exc.text = f"Entry {index + 1}: {exc.text}"
            raise
    for resource in deferred:
        rest.check_written(ctx, resource)
    return Reply(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": responses})


def _batch(ctx: Context, entries: list[dict], route: Callable) -> Reply:
    """Each entry on its own, in its own savepoint: a refused entry answers with its error only."""
    responses: list[dict | None] = [None] * len(entries)
    runnable = []
    for index, entry in enumerate(entries):
        try:
            _check_entry(entry, index)
            runnable.append(index)
        except FhirError as exc:
            responses[index] = _error_entry(exc)
    for index in sorted(runnable, key=lambda i: ORDER[entries[i]["request"]["method"]]):
        written = len(ctx.repo.changes)
        try:
            with ctx.conn.begin_nested():
                deferred: list[dict] = []
                if entries[index]["request"]["method"] == "POST":
                    _assign_id(ctx, entries[index])
                responses[index] = _run(ctx, entries[index], {}, route, deferred)
                for resource in deferred:
                    rest.check_written(ctx, resource)
                appends.flush(ctx.conn)  # a conflict of this entry's new rows is this entry's error
        except FhirError as exc:
            del ctx.repo.changes[written:]  # rolled back with its savepoint: nothing to record
            responses[index] = _error_entry(exc)
    return Reply(200, {"resourceType": "Bundle", "type": "batch-response", "entry": responses})


def _error_entry(exc: FhirError) -> dict:
    return {"response": {"status": str(exc.status), "outcome": exc.outcome()}}


def _assign_ids(ctx: Context, entries: list[dict]) -> dict[str, str]:
    """`urn:uuid:` fullUrls of created resources → `Type/id` (existing id where ifNoneExist matches)."""
    ids: dict[str, str] = {}
    for entry in entries:
        request = entry["request"]
        full_url = entry.get("fullUrl") or ""
        if request["method"] != "POST":
            if request["method"] == "PUT" and full_url.startswith("urn:uuid:"):
                ids[full_url] = urlsplit(request["url"]).path
            continue
        _assign_id(ctx, entry)
        if full_url.startswith("urn:uuid:") or full_url.startswith("urn:oid:"):
            ids[full_url] = f"{entry['resource'].get('resourceType', '')}/{entry['_id']}"
    return ids


def _assign_id(ctx: Context, entry: dict) -> None:
    """The id a POST entry will have: a new one, or the existing match of its ifNoneExist."""
    if_none_exist = entry["request"].get("ifNoneExist")
    existing = None
    if if_none_exist:
        existing = rest.conditional_match(ctx, entry["resource"].get("resourceType", ""), if_none_exist)
    if existing is not None:
        entry["_existing"] = existing
    entry["_id"] = existing.id if existing is not None else str(uuid.uuid4())


def _check_resolved(resource: dict, index: int) -> None:
    """A `urn:uuid:` reference left after rewriting names no entry of the Bundle: the Bundle is broken."""
    for reference in references(resource):
        if reference.startswith(("urn:uuid:", "urn:oid:")):
            raise FhirError("invalid", f"Entry {index + 1}: {reference} names no entry of this Bundle.")


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, ids))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(item, ids) for item in node]
    return node


def _segments(ctx: Context, url: str) -> list[str]:
    path = urlsplit(url).path.removeprefix(ctx.base).strip("/")
    return [s for s in path.split("/") if s]


def _learn_absent(ctx: Context, entries: list[dict]) -> None:
    """Which ids the PUT entries name are new, in one query per type rather than one read per entry."""
    wanted: dict[str, list[str]] = {}
    for entry in entries:
        if entry["request"]["method"] != "PUT":
            continue
        segments = _segments(ctx, entry["request"]["url"])
        if len(segments) == 2 and segments[0] in RESOURCE_TYPES and valid_id(segments[1]):
            wanted.setdefault(segments[0], []).append(segments[1])
    for resource_type, ids in wanted.items():
        ctx.repo.learn_absent(resource_type, ids)


def _run(ctx: Context, entry: dict, ids: dict[str, str], route: Callable, deferred: list[dict]) -> dict:
    request = entry["request"]
    method = request["method"]
    parts = urlsplit(request["url"])
    segments = _segments(ctx, request["url"])
    if not segments or segments[0] not in RESOURCE_TYPES:
        raise FhirError("invalid", f"{request['url']} does not name a served resource type.")
    resource_type = segments[0]
    if method == "POST":
        if len(segments) != 1:
            raise FhirError("invalid", f"POST {request['url']} must name a type only.")
        if "_existing" in entry:
            return _entry_response(ctx, rest.stored_reply(ctx, entry.pop("_existing"), 200))
        reply = rest.create(
            ctx, resource_type, entry["resource"], None, resource_id=entry.pop("_id"), deferred=deferred
        )
        return _entry_response(ctx, reply)
    if method == "PUT":
        if len(segments) != 2:
            raise FhirError("invalid", f"PUT {request['url']} must name Type/id.")
        reply = rest.update(
            ctx, resource_type, segments[1], entry["resource"], request.get("ifMatch"), deferred=deferred
        )
        return _entry_response(ctx, reply)
    if method == "DELETE":
        if len(segments) != 2:
            raise FhirError("invalid", "Conditional delete is not supported.")
        return _entry_response(ctx, rest.delete(ctx, resource_type, segments[1]))
    from terminhub.api.fhir_endpoint import Call

    call = Call("GET", segments, list(parse_qsl(parts.query, keep_blank_values=True)), b"", None, {})
    reply = route(ctx, call)
    response: dict = {"status": STATUS_TEXT.get(reply.status, str(reply.status))}
    if "ETag" in reply.headers:
        response["etag"] = reply.headers["ETag"]
    body = orjson.Fragment(reply.body) if isinstance(reply.body, bytes) else reply.body  # a read: stored JSON
    return {"resource": body, "response": response} if body is not None else {"response": response}


def _entry_response(ctx: Context, reply: Reply) -> dict:
    response: dict = {"status": STATUS_TEXT.get(reply.status, str(reply.status))}
    if "Location" in reply.headers:
        response["location"] = reply.headers["Location"].removeprefix(ctx.base + "/")
    if "ETag" in reply.headers:
        response["etag"] = reply.headers["ETag"]
    entry: dict = {}
    if reply.body is not None:
        if isinstance(reply.body, bytes):
            entry["resource"] = orjson.Fragment(reply.body)
            meta = orjson.loads(reply.body).get("meta", {})
            response["lastModified"] = meta.get("lastUpdated") or instant(ctx.clock.now_us())
        else:
            response["outcome"] = reply.body
    entry["response"] = response
    return entry
