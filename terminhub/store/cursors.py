"""Server-side paging state for searches whose parameters must not appear in links (referral codes)."""

from __future__ import annotations

import secrets

import orjson
from sqlalchemy import Connection, delete, insert, select

from terminhub.store import schema

T = schema.search_cursors
KEEP_US = 3600 * 1_000_000
PREFIX = "s."


def save(conn: Connection, state: dict, now_us: int) -> str:
    token = secrets.token_urlsafe(24)
    conn.execute(insert(T).values(token=token, state=orjson.dumps(state).decode(), created=now_us))
    return PREFIX + token


def load(conn: Connection, value: str, now_us: int) -> dict | None:
    """The stored state of a `s.` cursor, None when unknown or older than an hour."""
    row = conn.execute(select(T.c.state, T.c.created).where(T.c.token == value.removeprefix(PREFIX))).first()
    if row is None or row.created < now_us - KEEP_US:
        return None
    return orjson.loads(row.state)


def sweep(conn: Connection, now_us: int) -> int:
    return conn.execute(delete(T).where(T.c.created < now_us - KEEP_US)).rowcount
