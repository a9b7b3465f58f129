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

from terminhub.api import rest
from terminhub.api.context import Context, Reply
from terminhub.clock import instant
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.searchparams import RESOURCE_TYPES
from terminhub.fhir.validation import validate

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


def process(ctx: Context, bundle: dict, route: Callable[[Context, Any], Reply]) -> Reply:
    if bundle.get("resourceType") != "Bundle":
        raise FhirError("invalid", "POST to the base URL takes a batch or transaction Bundle.")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError("invalid", "The Bundle type must be batch or transaction.")
    validate(bundle, "Bundle")
    entries = bundle.get("entry") or []
    for index, entry in enumerate(entries):
        _check_entry(entry, index)
    ctx.audit_entity = None
    if kind == "transaction":
        return _transaction(ctx, entries, route)
    return _batch(ctx, entries, route)


def _check_entry(entry: dict, index: int) -> None:
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
    for entry in entries:
        if "resource" in entry:
            entry["resource"] = _rewrite(entry["resource"], ids)
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
    responses = []
    for index in sorted(range(len(entries)), key=lambda i: ORDER[entries[i]["request"]["method"]]):
        try:
            with ctx.conn.begin_nested():
                deferred: list[dict] = []
                response = _run(ctx, entries[index], {}, route, deferred)
                for resource in deferred:
                    rest.check_written(ctx, resource)
        except FhirError as exc:
            response = {"response": {"status": str(exc.status), "outcome": exc.outcome()}}
        responses.append((index, response))
    responses.sort(key=lambda pair: pair[0])
    return Reply(200, {"resourceType": "Bundle", "type": "batch-response", "entry": [r for _, r in responses]})


def _assign_ids(ctx: Context, entries: list[dict]) -> dict[str, str]:
    """`urn:uuid:` fullUrls of created resources → `Type/id` (existing id where ifNoneExist matches)."""
    ids: dict[str, str] = {}
    for entry in entries:
        request, resource = entry["request"], entry.get("resource") or {}
        full_url = entry.get("fullUrl") or ""
        if request["method"] != "POST":
            if request["method"] == "PUT" and full_url.startswith("urn:uuid:"):
                ids[full_url] = urlsplit(request["url"]).path
            continue
        resource_type = resource.get("resourceType", "")
        new_id = None
        if request.get("ifNoneExist"):
            existing = rest.conditional_match(ctx, resource_type, request["ifNoneExist"])
            if existing is not None:
                new_id = existing.id
                entry["_existing"] = existing
        entry["_id"] = new_id or str(uuid.uuid4())
        if full_url.startswith("urn:uuid:") or full_url.startswith("urn:oid:"):
            ids[full_url] = f"{resource_type}/{entry['_id']}"
    return ids


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, ids))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(item, ids) for item in node]
    return node


def _run(ctx: Context, entry: dict, ids: dict[str, str], route: Callable, deferred: list[dict]) -> dict:
    request = entry["request"]
    method = request["method"]
    parts = urlsplit(request["url"])
    path = parts.path.removeprefix(ctx.base).strip("/")
    segments = [s for s in path.split("/") if s]
    if not segments or segments[0] not in RESOURCE_TYPES:
        raise FhirError("invalid", f"{request['url']} does not name a served resource type.")
    resource_type = segments[0]
    if method == "POST":
        if len(segments) != 1:
            raise FhirError("invalid", f"POST {request['url']} must name a type only.")
        if "_existing" in entry:
            return _entry_response(ctx, rest.stored_reply(ctx, entry.pop("_existing"), 200))
        reply = rest.create(ctx, resource_type, entry["resource"], None, resource_id=entry.pop("_id"),
                            deferred=deferred)
        return _entry_response(ctx, reply)
    if method == "PUT":
        if len(segments) != 2:
            raise FhirError("invalid", f"PUT {request['url']} must name Type/id.")
        reply = rest.update(ctx, resource_type, segments[1], entry["resource"], request.get("ifMatch"),
                            deferred=deferred)
        return _entry_response(ctx, reply)
    if method == "DELETE":
        if len(segments) != 2:
            raise FhirError("invalid", "Conditional delete is not supported.")
        return _entry_response(ctx, rest.delete(ctx, resource_type, segments[1]))
    from terminhub.api.fhir_endpoint import Call

    call = Call("GET", segments, list(parse_qsl(parts.query, keep_blank_values=True)), b"", None, {})
    reply = route(ctx, call)
    return {"resource": reply.body, "response": {"status": "200 OK", **({"etag": reply.headers["ETag"]}
                                                                          if "ETag" in reply.headers else {})}}


def _entry_response(ctx: Context, reply: Reply) -> dict:
    response: dict = {"status": STATUS_TEXT.get(reply.status, str(reply.status))}
    if "Location" in reply.headers:
        response["location"] = reply.headers["Location"].removeprefix(ctx.base + "/")
    if "ETag" in reply.headers:
        response["etag"] = reply.headers["ETag"]
    entry: dict = {}
    if reply.body is not None:
        if isinstance(reply.body, bytes):
            import orjson

            entry["resource"] = orjson.Fragment(reply.body)
            stored = orjson.loads(reply.body)
            response["lastModified"] = stored.get("meta", {}).get("lastUpdated") or instant(ctx.clock.now_us())
        else:
            response["outcome"] = reply.body
    entry["response"] = response
    return entry
