"""Append-only rows of a transaction (history versions, outbox rows), written together before the commit.

A Bundle of 1,000 writes would otherwise send 2,000 single-row INSERTs, one round trip each. The rows wait
on the connection (`conn.info`) and go out as one executemany per table when the transaction ends (`flush`,
from `Database.transaction`), and earlier whenever a statement names one of their tables, so a reader in
the same transaction (a Bundle's history GET, a sweep counting outbox rows) always sees them. A savepoint
flushes what came before it: the rows still waiting are then exactly those its rollback must drop.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, Table, event, insert

from terminhub.store import schema

TABLES = (schema.resource_versions, schema.outbox)
_NAMES = tuple(table.name for table in TABLES)
_ROWS = "terminhub.appends.rows"


def add(conn: Connection, table: Table, row: dict) -> None:
    """Keep a row of one of `TABLES` for the transaction's next flush."""
    conn.info.setdefault(_ROWS, []).append((table, row))


def flush(conn: Connection) -> None:
    """Write the waiting rows, one executemany per table in the order they came."""
    rows: list[tuple[Table, dict]] = conn.info.get(_ROWS) or []
    if not rows:
        return
    conn.info[_ROWS] = []
    by_table: dict[Table, list[dict]] = {}
    for table, row in rows:
        by_table.setdefault(table, []).append(row)
    for table, group in by_table.items():
        conn.execute(insert(table), group)


def forget(conn: Connection) -> None:
    """Drop the waiting rows (the transaction or savepoint that made them was rolled back)."""
    conn.info.pop(_ROWS, None)


def follow(engine: Engine) -> None:
    """Flush before any statement that names a buffered table and at each savepoint; a savepoint's
    rollback drops the rows made since it began."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, _cursor, statement: str, _params, _context, _many: bool) -> None:  # noqa: ANN001
        if conn.info.get(_ROWS) and any(name in statement for name in _NAMES):
            flush(conn)

    @event.listens_for(engine, "savepoint")
    def _savepoint(conn: Connection, _name: str | None) -> None:
        flush(conn)

    @event.listens_for(engine, "rollback_savepoint")
    def _rollback(conn: Connection, _name: str | None, _context: object) -> None:
        forget(conn)
