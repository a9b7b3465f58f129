"""Bundles built around stored bytes: entries embed the stored JSON without re-parsing it."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

import orjson

from terminhub.clock import instant
from terminhub.fhir.search_request import SearchRequest, encode_cursor
from terminhub.store.repository import Stored
from terminhub.store.search import SearchResult


def embed(stored: Stored) -> orjson.Fragment:
    return orjson.Fragment(stored.content)


def full_url(base: str, stored: Stored) -> str:
    return f"{base}/{stored.type}/{stored.id}"


def searchset(
    base: str,
    request: SearchRequest,
    result: SearchResult,
    now_us: int,
    outcome: dict | None = None,
    hide: Callable[[list[tuple[str, str]], dict | None], str] | None = None,
) -> dict:
    """A searchset Bundle with self/next/previous links that repeat the parameters used — or, with `hide`,
    links that carry only a server-side cursor (for searches that name a referral code)."""
    bundle: dict = {"resourceType": "Bundle", "type": "searchset", "meta": {"lastUpdated": instant(now_us)}}
    if result.total is not None:
        bundle["total"] = result.total
    url = f"{base}/{request.resource_type}"
    params = [(k, v) for k, v in request.echo if k != "page"]
    if hide is not None:
        links = [{"relation": "self", "url": f"{url}?_cursor={hide(params, request.cursor)}"}]
        if result.next_cursor:
            links.append({"relation": "next", "url": f"{url}?_cursor={hide(params, result.next_cursor)}"})
        if result.prev_cursor:
            links.append({"relation": "previous", "url": f"{url}?_cursor={hide(params, result.prev_cursor)}"})
        return _finish(bundle, links, base, result, outcome)
    links = [
        {
            "relation": "self",
            "url": _link(url, request.echo if not request.cursor else params, request.cursor),
        }
    ]
    if result.next_cursor:
        links.append({"relation": "next", "url": _link(url, params, result.next_cursor)})
    if result.prev_cursor:
        links.append({"relation": "previous", "url": _link(url, params, result.prev_cursor)})
    return _finish(bundle, links, base, result, outcome)


def _finish(bundle: dict, links: list[dict], base: str, result: SearchResult, outcome: dict | None) -> dict:
    bundle["link"] = links
    entries = [
        {"fullUrl": full_url(base, s), "resource": embed(s), "search": {"mode": "match"}}
        for s in result.matches
    ]
    entries += [
        {"fullUrl": full_url(base, s), "resource": embed(s), "search": {"mode": "include"}}
        for s in result.includes
    ]
    if outcome:
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle


def _link(url: str, params: list[tuple[str, str]], cursor: dict | None) -> str:
    query = list(params)
    if cursor:
        query.append(("_cursor", encode_cursor(cursor)))
    return f"{url}?{urlencode(query)}" if query else url


def history(base: str, versions: list[Stored], now_us: int, self_url: str, total: int | None = None) -> dict:
    """A history Bundle: newest first, each entry with request and response."""
    entries = []
    for v in versions:
        entry: dict = {"fullUrl": full_url(base, v)}
        if v.content:
            entry["resource"] = embed(v)
        method = v.method or "PUT"
        entry["request"] = {"method": method, "url": v.type if method == "POST" else f"{v.type}/{v.id}"}
        entry["response"] = {
            "status": {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}[method],
            "etag": v.etag,
            "lastModified": instant(v.last_updated),
        }
        entries.append(entry)
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "history",
        "meta": {"lastUpdated": instant(now_us)},
        "link": [{"relation": "self", "url": self_url}],
    }
    if total is not None:
        bundle["total"] = total
    if entries:
        bundle["entry"] = entries
    return bundle
