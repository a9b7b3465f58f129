"""Rate counters in the database, so every process of a deployment counts together."""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, select, update

from terminhub.store import schema
from terminhub.store.dialect import insert_for

T = schema.rate_counters


def add(conn: Connection, client_id: str, kind: str, bucket: int, amount: int = 1) -> None:
    """Count `amount` in a bucket (an upsert: race-free across processes)."""
    statement = insert_for(conn, T).values(client_id=client_id, kind=kind, bucket=bucket, count=amount)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["client_id", "kind", "bucket"], set_={"count": T.c.count + amount}
        )
    )


def total(conn: Connection, client_id: str, kind: str, since_bucket: int) -> int:
    query = select(func.coalesce(func.sum(T.c.count), 0)).where(
        T.c.client_id == client_id, T.c.kind == kind, T.c.bucket >= since_bucket
    )
    return int(conn.execute(query).scalar_one())


def buckets(conn: Connection, client_id: str, kind: str, since_bucket: int) -> list[tuple[int, int]]:
    query = (
        select(T.c.bucket, T.c.count)
        .where(T.c.client_id == client_id, T.c.kind == kind, T.c.bucket >= since_bucket)
        .order_by(T.c.bucket)
    )
    return [(row[0], row[1]) for row in conn.execute(query)]


def forget_before(conn: Connection, kind: str, bucket: int) -> int:
    return conn.execute(delete(T).where(T.c.kind == kind, T.c.bucket < bucket)).rowcount


__all__ = ["add", "total", "buckets", "forget_before", "update"]
