"""The polling rule's state (contract 5), in the database so that every process counts together.

`poll_marks` holds when each client's last first page was answered; claiming the next one is a
conditional UPDATE, so of two concurrent first pages in any processes exactly one wins. `poll_searches`
remembers the searches answered within the last hour, whose further pages are not limited.
"""

from __future__ import annotations

import hashlib
import math

import orjson
from sqlalchemy import Connection, delete, or_, select, update

from terminhub.store import schema
from terminhub.store.dialect import insert_for

M = schema.poll_marks
P = schema.poll_searches
HOUR_US = 3600 * 1_000_000


def claim_first_page(conn: Connection, client_id: str, now_us: int, interval_us: int) -> int | None:
    """Take this client's next first page: None when granted, else the whole seconds to wait.

    A mark more than an interval ahead (a test clock set back) does not count; one just ahead is a
    concurrent request's that read the clock a moment later and claimed first.
    """
    conn.execute(
        insert_for(conn, M)
        .values(client_id=client_id, last_first_page=now_us - interval_us - 1)
        .on_conflict_do_nothing(index_elements=["client_id"])
    )
    granted = conn.execute(
        update(M)
        .where(
            M.c.client_id == client_id,
            or_(M.c.last_first_page <= now_us - interval_us, M.c.last_first_page > now_us + interval_us),
        )
        .values(last_first_page=now_us)
    )
    if granted.rowcount == 1:
        return None
    last = conn.execute(select(M.c.last_first_page).where(M.c.client_id == client_id)).scalar_one()
    return max(1, math.ceil((last + interval_us - now_us) / 1_000_000))


def search_key(resource_type: str | None, params: list[tuple[str, str]]) -> str:
    """One search, whatever page of it: its type and parameters without the paging ones."""
    kept = sorted((k, v) for k, v in params if k not in ("_cursor", "page", "_format", "_pretty"))
    return hashlib.sha256(orjson.dumps([resource_type, kept])).hexdigest()


def remember(conn: Connection, client_id: str, key: str, now_us: int) -> None:
    conn.execute(
        insert_for(conn, P)
        .values(client_id=client_id, search_hash=key, answered=now_us)
        .on_conflict_do_update(index_elements=["client_id", "search_hash"], set_={"answered": now_us})
    )


def answered_recently(conn: Connection, client_id: str, key: str, now_us: int) -> bool:
    """Whether this search's first page was answered within the last hour."""
    query = select(P.c.answered).where(P.c.client_id == client_id, P.c.search_hash == key)
    answered = conn.execute(query).scalar_one_or_none()
    return answered is not None and now_us - HOUR_US <= answered <= now_us


def sweep(conn: Connection, now_us: int) -> int:
    return conn.execute(delete(P).where(P.c.answered < now_us - HOUR_US)).rowcount
