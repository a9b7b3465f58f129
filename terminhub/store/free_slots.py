"""Free Slots offering any of some codings, with start in a window, in (start, id) order.

Each coding is one range scan of `ix_slot_offers_coding_start`, read in pages by keyset; several codings are
merged in order. A search therefore reads only as many rows as it shows (plus those it skips), however many
Slots are stored. Free means free as every reader sees it now: the claim row decides where there is one
(a hold or an unconfirmed booking that ran out has ended), else the stored status.

A page of offers is read first and narrowed by the caller (`keep`: a search by place drops nine in ten);
only then are the claims of what is left read, in one statement by key. Looking up every offer's claim as
it was read took four fifths of a page's time at a million Slots (2.0 of 2.5 ms for 200 offers).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from functools import cache
from typing import NamedTuple

from sqlalchemy import Connection, bindparam, literal_column, select, tuple_

from terminhub.store import claims, hot_reads, schema
from terminhub.store.dialect import one_of

OFFERS = schema.slot_offers
C = schema.slot_claims
S = schema.search_index
PAGE = 200

Keep = Callable[[list["Candidate"]], list["Candidate"]]


class Candidate(NamedTuple):
    """A Slot as its offer rows tell it, before the Slot itself is read."""

    start_us: int
    slot_id: str
    schedule_id: str | None
    video: bool


def free_slots(
    conn: Connection,
    codings: list[tuple[str | None, str]],
    lo: int,
    hi: int,
    now: int,
    keep: Keep | None = None,
) -> Iterator[Candidate]:
    """Free Slots offering one of `codings` with lo <= start < hi, each once, by start then id; `keep`
    narrows each page of offers (in order) before their claims are read."""
    streams = [
        _one_coding(conn, system or "", code, lo, hi, now, keep) for system, code in dict.fromkeys(codings)
    ]
    last = None
    for found in heapq.merge(*streams):
        if found[:2] != last:
            yield found
        last = found[:2]


def free_slot_ids(
    conn: Connection, codings: list[tuple[str | None, str]], lo: int, hi: int, now: int
) -> Iterator[str]:
    """Ids of `free_slots`."""
    return (found.slot_id for found in free_slots(conn, codings, lo, hi, now))


def _one_coding(
    conn: Connection, system: str, code: str, lo: int, hi: int, now: int, keep: Keep | None
) -> Iterator[Candidate]:
    params = {"system": system, "code": code, "lo": lo, "hi": hi}
    first, following = _pages()
    query = first
    while True:
        rows = list(map(Candidate._make, hot_reads.rows(conn, query, params)))
        kept = keep(rows) if keep is not None else rows
        if kept:
            free = open_now(conn, [c.slot_id for c in kept], now)
            yield from (c for c in kept if c.slot_id in free)
        if len(rows) < PAGE:
            return
        query = following
        params["after_start"], params["after_id"] = rows[-1][:2]


def open_now(conn: Connection, slot_ids: list[str], now: int) -> set[str]:
    """Those of `slot_ids` that are free at `now`: by their claim rows, else by their stored status."""
    claims_of, stored_free = _free_statements(conn.dialect.name)
    free, claimed = set(), set()
    for slot_id, is_open in hot_reads.rows(conn, claims_of, {"ids": slot_ids, "now": now}):
        claimed.add(slot_id)
        if is_open:
            free.add(slot_id)
    unclaimed = [i for i in slot_ids if i not in claimed]
    if unclaimed:
        free.update(row[0] for row in hot_reads.rows(conn, stored_free, {"ids": unclaimed}))
    return free


@cache
def _pages():  # noqa: ANN202 - two statements
    """The first and the following pages of one coding's offers, built once (building one cost more than
    running it). The LIMIT is written out: a prepared statement plans for it."""
    query = (
        select(OFFERS.c.start_us, OFFERS.c.slot_id, OFFERS.c.schedule_id, OFFERS.c.video)
        .where(
            OFFERS.c.system == bindparam("system"),
            OFFERS.c.code == bindparam("code"),
            OFFERS.c.start_us >= bindparam("lo"),
            OFFERS.c.start_us < bindparam("hi"),
        )
        .order_by(OFFERS.c.start_us, OFFERS.c.slot_id)
        .limit(literal_column(str(PAGE)))
    )
    after_key = tuple_(bindparam("after_start"), bindparam("after_id"))
    return query, query.where(tuple_(OFFERS.c.start_us, OFFERS.c.slot_id) > after_key)


@cache
def _free_statements(dialect: str):  # noqa: ANN202 - two statements
    """Claims of some Slots with whether each is open now, and which of some unclaimed Slots are stored
    free (`dialect.one_of`: on PostgreSQL one prepared statement for any number of ids)."""
    claims_of = select(C.c.slot_id, claims.open_at(bindparam("now"))).where(one_of(C.c.slot_id, dialect))
    stored_free = select(S.c.id).where(
        S.c.type == "Slot", one_of(S.c.id, dialect), S.c.param == "status", S.c.code == "free"
    )
    return claims_of, stored_free
