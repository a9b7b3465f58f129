"""Free Slots offering any of some codings, with start in a window, in (start, id) order.

Each coding is one range scan of `ix_slot_offers_coding_start`, read in pages by keyset; several codings are
merged in order. A search therefore reads only as many rows as it shows (plus those it skips), however many
Slots are stored. Free means free as every reader sees it now: the claim row decides where there is one
(a hold or an unconfirmed booking that ran out has ended), else the stored status.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from functools import cache
from typing import NamedTuple

from sqlalchemy import Connection, and_, bindparam, exists, literal_column, or_, select, true, tuple_

from terminhub.store import claims, hot_reads, schema

OFFERS = schema.slot_offers
C = schema.slot_claims
S = schema.search_index
PAGE = 200


class Candidate(NamedTuple):
    """A free Slot as its offer rows tell it, before the Slot itself is read."""

    start_us: int
    slot_id: str
    schedule_id: str | None
    video: bool


def free_slots(
    conn: Connection, codings: list[tuple[str | None, str]], lo: int, hi: int, now: int
) -> Iterator[Candidate]:
    """Free Slots offering one of `codings` with lo <= start < hi, each once, by start then id."""
    streams = [_one_coding(conn, system or "", code, lo, hi, now) for system, code in dict.fromkeys(codings)]
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


def _one_coding(conn: Connection, system: str, code: str, lo: int, hi: int, now: int) -> Iterator[Candidate]:
    params = {"system": system, "code": code, "lo": lo, "hi": hi, "now": now}
    first, following = _pages(conn.dialect.name)
    query = first
    while True:
        rows = list(map(Candidate._make, hot_reads.rows(conn, query, params)))
        yield from rows
        if len(rows) < PAGE:
            return
        query = following
        params["after_start"], params["after_id"] = rows[-1][:2]


def _free_now(claim, now):  # noqa: ANN001, ANN202 - claim rows and a bind parameter; a SQL expression
    open_claim = claims.open_at(now, claim=claim)
    stored_free = exists().where(
        S.c.type == "Slot", S.c.id == OFFERS.c.slot_id, S.c.param == "status", S.c.code == "free"
    )
    return or_(and_(claim.c.slot_id.is_not(None), open_claim), and_(claim.c.slot_id.is_(None), stored_free))


@cache
def _pages(dialect: str):  # noqa: ANN202 - two statements
    """The first and the following pages of one coding's candidates, built once per dialect (building
    one cost more than running it).

    On PostgreSQL each candidate's claim row is a LATERAL subquery: the offers are read in index order
    and each one's claim looked up by key, stopping after a page. As a plain join the planner may hash the
    whole claims table and sort (6 ms for a page of 200 among 22,000 Slots, against 1.5 ms). SQLite, which
    has no LATERAL, joins by key in index order anyway."""
    if dialect == "postgresql":
        claim = select(C).where(C.c.slot_id == OFFERS.c.slot_id).limit(literal_column("1")).lateral("claim")
        offers = OFFERS.outerjoin(claim, true())
    else:
        claim = C
        offers = OFFERS.outerjoin(C, C.c.slot_id == OFFERS.c.slot_id)
    query = (
        select(OFFERS.c.start_us, OFFERS.c.slot_id, OFFERS.c.schedule_id, OFFERS.c.video)
        .select_from(offers)
        .where(
            OFFERS.c.system == bindparam("system"),
            OFFERS.c.code == bindparam("code"),
            OFFERS.c.start_us >= bindparam("lo"),
            OFFERS.c.start_us < bindparam("hi"),
            _free_now(claim, bindparam("now")),
        )
        .order_by(OFFERS.c.start_us, OFFERS.c.slot_id)
        .limit(literal_column(str(PAGE)))  # written out: a prepared statement plans for it
    )
    after_key = tuple_(bindparam("after_start"), bindparam("after_id"))
    return query, query.where(tuple_(OFFERS.c.start_us, OFFERS.c.slot_id) > after_key)
