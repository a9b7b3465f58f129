"""Rows a transaction only adds, written together before the commit.

A Bundle of 1,000 new Slots would otherwise send some 5,000 single-row INSERTs (resource, history, outbox,
index, offers, claim), one round trip each. The rows wait on the connection (`conn.info`) and go out as
one executemany per table when the transaction ends (`flush`, from `Database.transaction`), and earlier
whenever a statement names one of their tables, so a reader in the same transaction (a Bundle's history
GET, a search, a re-index deleting old rows) always sees them. A savepoint flushes what came before it:
the rows still waiting are then exactly those its rollback must drop.

A new resource row is inserted only if its id has no row yet; when another transaction created it
meanwhile, the flush refuses the whole transaction as a version conflict, as a single INSERT would have.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, Executable, Table, event, insert

from terminhub.fhir.outcome import FhirError
from terminhub.store import schema
from terminhub.store.dialect import insert_for

# In flush order: new resource rows first, so that a conflict is found before the rest is sent.
TABLES = (
    schema.resources,
    schema.resource_versions,
    schema.outbox,
    schema.search_index,
    schema.positions,
    schema.slot_offers,
    schema.slot_claims,
    schema.feed_owners,
)
_NAMES = tuple(table.name for table in TABLES)
_ROWS = "terminhub.appends.rows"
_LATER = "terminhub.appends.later"  # statements that read the waiting rows: they run right after them
_FORGET_HOOKS: list = []  # caches built on rows a rolled-back savepoint takes away


def add(conn: Connection, table: Table, row: dict) -> None:
    """Keep a row of one of `TABLES` for the transaction's next flush."""
    conn.info.setdefault(_ROWS, []).append((table, row))


def later(conn: Connection, statement: Executable, params: dict) -> None:
    """Run `statement` (one that reads or writes these tables) at the next flush, after the rows: a
    Schedule's Slots inherit its codings once, not in a flush of their own for each Schedule of a Bundle."""
    conn.info.setdefault(_LATER, []).append((statement, params))


def flush(conn: Connection) -> None:
    """Write the waiting rows, one executemany per table in `TABLES` order, then the waiting statements."""
    rows: list[tuple[Table, dict]] = conn.info.get(_ROWS) or []
    conn.info[_ROWS] = []
    statements = conn.info.pop(_LATER, None) or []  # taken first: writing the rows must not run them
    by_table: dict[Table, list[dict]] = {table: [] for table in TABLES}
    for table, row in rows:
        by_table[table].append(row)
    for table, group in by_table.items():
        if group:
            _write(conn, table, group)
    for statement, params in statements:
        conn.execute(statement, params)


def _write(conn: Connection, table: Table, group: list[dict]) -> None:
    if table is schema.resources:
        r = schema.resources
        statement = insert_for(conn, r).on_conflict_do_nothing().returning(r.c.type, r.c.id)
        written = {(row.type, row.id) for row in conn.execute(statement, group)}
        if len(written) < len(group):
            missing = next(row for row in group if (row["type"], row["id"]) not in written)
            raise FhirError("version-conflict", f"{missing['type']}/{missing['id']} was created meanwhile.")
    elif table is schema.slot_claims:
        # A claim row outlives its Slot's deletion; a Slot re-created after one keeps that row.
        conn.execute(insert_for(conn, table).on_conflict_do_nothing(), group)
    elif conn.dialect.name == "postgresql":
        _copy(conn, table, group)
    else:
        conn.execute(insert(table), group)


def _copy(conn: Connection, table: Table, group: list[dict]) -> None:
    """PostgreSQL's COPY, in the transaction's own connection: a row costs a fraction of an INSERT's
    execution. Columns the rows leave out get their column default, as an INSERT would give them."""
    defaults = {c.name: c.default.arg for c in table.columns if c.default is not None and c.default.is_scalar}
    names = {name for row in group for name in row} | defaults.keys()
    columns = [c.name for c in table.columns if c.name in names]
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in group:
            copy.write_row(tuple(row.get(name, defaults.get(name)) for name in columns))


def forget(conn: Connection) -> None:
    """Drop the waiting rows and statements (the transaction or savepoint that made them was rolled back)."""
    conn.info.pop(_ROWS, None)
    conn.info.pop(_LATER, None)
    for hook in _FORGET_HOOKS:
        hook(conn)


def on_forget(hook) -> None:  # noqa: ANN001 - a callable taking the connection
    """Also call `hook(conn)` whenever waiting rows are dropped: a cache of the same rows must go too."""
    _FORGET_HOOKS.append(hook)


def follow(engine: Engine) -> None:
    """Flush before any statement that names a buffered table and at each savepoint; a savepoint's
    rollback drops the rows made since it began."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, _cursor, statement: str, _params, _context, _many: bool) -> None:  # noqa: ANN001
        if (conn.info.get(_ROWS) or conn.info.get(_LATER)) and any(name in statement for name in _NAMES):
            flush(conn)

    @event.listens_for(engine, "savepoint")
    def _savepoint(conn: Connection, _name: str | None) -> None:
        flush(conn)

    @event.listens_for(engine, "rollback_savepoint")
    def _rollback(conn: Connection, _name: str | None, _context: object) -> None:
        forget(conn)
