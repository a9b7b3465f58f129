"""Free Slots offering any of some codings, with start in a window, in (start, id) order.

Each coding is one range scan of `ix_slot_offers_coding_start`, read in pages by keyset; several codings are
merged in order. A search therefore reads only as many rows as it shows (plus those it skips), however many
Slots are stored. Free means free as every reader sees it now: the claim row decides where there is one
(a hold or an unconfirmed booking that ran out has ended), else the stored status.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from sqlalchemy import Connection, and_, exists, or_, select, tuple_

from terminhub.store import claims, schema

OFFERS = schema.slot_offers
C = schema.slot_claims
S = schema.search_index
PAGE = 200


def free_slot_ids(
    conn: Connection, codings: list[tuple[str | None, str]], lo: int, hi: int, now: int
) -> Iterator[str]:
    """Ids of free Slots offering one of `codings` with lo <= start < hi, each once, by start then id."""
    streams = [_one_coding(conn, system or "", code, lo, hi, now) for system, code in dict.fromkeys(codings)]
    last = None
    for key in heapq.merge(*streams):
        if key != last:
            yield key[1]
        last = key


def _one_coding(conn: Connection, system: str, code: str, lo: int, hi: int, now: int) -> Iterator[tuple]:
    after: tuple[int, str] | None = None
    while True:
        query = (
            select(OFFERS.c.start_us, OFFERS.c.slot_id)
            .outerjoin(C, C.c.slot_id == OFFERS.c.slot_id)
            .where(
                OFFERS.c.system == system,
                OFFERS.c.code == code,
                OFFERS.c.start_us >= lo,
                OFFERS.c.start_us < hi,
                _free_now(now),
            )
            .order_by(OFFERS.c.start_us, OFFERS.c.slot_id)
            .limit(PAGE)
        )
        if after is not None:
            query = query.where(tuple_(OFFERS.c.start_us, OFFERS.c.slot_id) > tuple_(*after))
        rows = [(row[0], row[1]) for row in conn.execute(query)]
        yield from rows
        if len(rows) < PAGE:
            return
        after = rows[-1]


def _free_now(now: int):  # noqa: ANN202 - a SQL expression
    open_claim = claims.open_at(now)
    stored_free = exists().where(
        S.c.type == "Slot", S.c.id == OFFERS.c.slot_id, S.c.param == "status", S.c.code == "free"
    )
    return or_(and_(C.c.slot_id.is_not(None), open_claim), and_(C.c.slot_id.is_(None), stored_free))
