"""Rate counters in the database, so every process of a deployment counts together."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, delete, func, select, update

from terminhub.store import hot_reads, schema
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
    return int(conn.execute(total_query(client_id, kind, since_bucket)).scalar_one())


def total_query(client_id, kind, since_bucket):  # noqa: ANN001, ANN201 - values or bind parameters; a Select
    """The count of `kind` from `since_bucket` on, as a statement (or a part of another)."""
    return select(func.coalesce(func.sum(T.c.count), 0)).where(
        T.c.client_id == client_id, T.c.kind == kind, T.c.bucket >= since_bucket
    )


def buckets(conn: Connection, client_id: str, kind: str, since_bucket: int) -> list[tuple[int, int]]:
    """The counts of `kind` by bucket from `since_bucket` on (every code look-up asks: prepared)."""
    params = {"client_id": client_id, "kind": kind, "since": since_bucket}
    return [(row[0], row[1]) for row in hot_reads.rows(conn, _BUCKETS, params, flush=False)]


_BUCKETS = (
    select(T.c.bucket, T.c.count)
    .where(T.c.client_id == bindparam("client_id"), T.c.kind == bindparam("kind"))
    .where(T.c.bucket >= bindparam("since"))
    .order_by(T.c.bucket)
)


def forget_before(conn: Connection, kind: str, bucket: int) -> int:
    return conn.execute(delete(T).where(T.c.kind == kind, T.c.bucket < bucket)).rowcount


__all__ = ["add", "total", "buckets", "forget_before", "update"]
