"""The practice change feed's rules at the HTTP edge (contract 5): the polling rule and `feed-expired`.

A practice's appointment system polls `Provenance?recorded=gt…`. Its first pages (every Provenance search
but a further page of one answered within the last hour; `_history` and `_lastUpdated` searches of the
synced types count too) are limited to one per TERMINHUB_PROVENANCE_MIN_INTERVAL_S per client. Reads and
searches by `_id` or `based-on:identifier` are never limited: a resource needed sooner is read directly.
"""

from __future__ import annotations

from terminhub.access.policy import Caller
from terminhub.api.context import Context
from terminhub.fhir.dates import DateError, parse_range, split_prefix
from terminhub.fhir.outcome import FhirError
from terminhub.store import feed, polls

FEED_TYPES = feed.SYNCED | {"ServiceRequest"}
UNLIMITED = frozenset({"_id", "based-on:identifier"})


def polls_feed(
    caller: Caller, resource_type: str | None, params: list[tuple[str, str]], *, history: bool
) -> bool:
    """Whether a practice's request is a Provenance search in the sense of the polling rule."""
    if caller.role != "practice":
        return False
    if any(name in UNLIMITED or name.partition(":")[0] == "_id" for name, _ in params):
        return False
    if history:
        return resource_type is None or resource_type in FEED_TYPES
    if resource_type == "Provenance":
        return True
    return resource_type in FEED_TYPES and any(name.partition(":")[0] == "_lastUpdated" for name, _ in params)


def is_feed_search(method: str, segments: list[str]) -> bool:
    """`GET Provenance` or `POST Provenance/_search`: the start of a change-feed read."""
    return (method == "GET" and segments == ["Provenance"]) or (
        method == "POST" and segments == ["Provenance", "_search"]
    )


def check_poll(
    ctx: Context, resource_type: str | None, params: list[tuple[str, str]], *, history: bool = False
) -> None:
    """429 `poll-too-frequent` for a first page that comes too early; a granted one is remembered."""
    if not polls_feed(ctx.caller, resource_type, params, history=history):
        return
    now = ctx.clock.now_us()
    client = ctx.caller.client_id
    key = polls.search_key(resource_type, params)
    if _further_page(params) and polls.answered_recently(ctx.conn, client, key, now):
        return
    interval_us = int(ctx.settings.provenance_min_interval_s * 1_000_000)
    wait = polls.claim_first_page(ctx.conn, client, now, interval_us)
    if wait is not None:
        raise FhirError(
            "poll-too-frequent",
            f"Change-feed first pages are answered once every {ctx.settings.provenance_min_interval_s:g} s "
            f"per client; try again in {wait} s. Read a resource needed sooner directly.",
            headers={"Retry-After": str(wait)},
        )
    polls.remember(ctx.conn, client, key, now)


def _further_page(params: list[tuple[str, str]]) -> bool:
    for name, value in params:
        if name == "_cursor":
            return True
        if name == "page" and value.isdigit() and int(value) > 1:
            return True
    return False


def check_position(ctx: Context, params: list[tuple[str, str]]) -> None:
    """A feed position older than the retention → 422 `feed-expired`: changes before it are gone."""
    oldest = feed.horizon(ctx.clock.now_us(), ctx.settings.provenance_retention_days)
    for name, value in params:
        if name != "recorded":
            continue
        for item in value.split(","):
            prefix, raw = split_prefix(item)
            if prefix != "gt":  # a resumed feed position (other comparisons are plain searches)
                continue
            try:
                start = parse_range(raw, ctx.tz)[0]
            except DateError:
                continue  # the search itself reports the malformed date
            if start < oldest:
                raise FhirError(
                    "feed-expired",
                    "This change-feed position is older than the changes kept "
                    f"({ctx.settings.provenance_retention_days:g} days): synchronise again from the start.",
                )
