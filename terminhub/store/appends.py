"""Rows a transaction only adds, written together before the commit.

A Bundle of 1,000 new Slots would otherwise send some 5,000 single-row INSERTs (resource, history, outbox,
index, offers, claim), one round trip each. The rows wait on the connection (`conn.info`) and go out as
one statement per table when the transaction ends (`flush`, from `Database.transaction`; on PostgreSQL
all in one round trip, large groups by COPY), and earlier whenever a statement names one of their tables,
so a reader in the same transaction (a Bundle's history GET, a search, a re-index deleting old rows)
always sees them. A savepoint flushes what came before it:
the rows still waiting are then exactly those its rollback must drop.

A new resource row is inserted only if its id has no row yet; when another transaction created it
meanwhile, the flush refuses the whole transaction as a version conflict, as a single INSERT would have.
"""

from __future__ import annotations

import re
from functools import cache
from operator import itemgetter

import psycopg
from sqlalchemy import Connection, Engine, Executable, Table, event, insert
from sqlalchemy.dialects import postgresql

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
_ROWS = "terminhub.appends.rows"  # Table -> its waiting rows, tables in the order rows first came
_LATER = "terminhub.appends.later"  # statements that read the waiting rows: they run right after them
_FORGET_HOOKS: list = []  # caches built on rows a rolled-back savepoint takes away
# PostgreSQL's COPY takes two round trips and sets up more than an INSERT: a booking's few rows per table
# go faster as one INSERT (0.7 ms a table by COPY), a Bundle's hundreds much faster by COPY.
COPY_FROM_ROWS = 50


_KEYS = "terminhub.appends.keys"  # resources and search_index: the (type, id) of their waiting rows
_KEYED = (schema.resources, schema.search_index)


def add(conn: Connection, table: Table, row: dict) -> None:
    """Keep a row of one of `TABLES` for the transaction's next flush."""
    conn.info.setdefault(_ROWS, {}).setdefault(table, []).append(row)
    if table in _KEYED:
        conn.info.setdefault(_KEYS, {}).setdefault(table, set()).add((row["type"], row["id"]))


def waiting(conn: Connection) -> int:
    """How many rows wait for the next flush."""
    return sum(len(group) for group in (conn.info.get(_ROWS) or {}).values())


def resource_waits(conn: Connection, resource_type: str, resource_id: str) -> bool:
    """Whether a statement about this one resource row must flush first: its new row is still waiting,
    or statements wait that may touch any table. Rows of other resources cannot change what it finds."""
    return _waits(conn, schema.resources, resource_type, resource_id)


def index_waits(conn: Connection, resource_type: str, resource_id: str) -> bool:
    """As `resource_waits`, for a statement that reads the index rows of one resource."""
    return _waits(conn, schema.search_index, resource_type, resource_id)


def _waits(conn: Connection, table: Table, resource_type: str, resource_id: str) -> bool:
    if conn.info.get(_LATER):
        return True
    return (resource_type, resource_id) in ((conn.info.get(_KEYS) or {}).get(table) or ())


def later(conn: Connection, statement: Executable, params: dict) -> None:
    """Run `statement` (one that reads or writes these tables) at the next flush, after the rows: a
    Schedule's Slots inherit its codings once, not in a flush of their own for each Schedule of a Bundle."""
    conn.info.setdefault(_LATER, []).append((statement, params))


def flush(conn: Connection, *, then_commit: bool = False) -> bool:
    """Write the waiting rows, one statement per table in `TABLES` order, then the waiting statements.

    `then_commit`: nothing follows in this transaction; on PostgreSQL its COMMIT then goes in the same
    round trip as the last rows where it can (True when it did: the transaction has ended)."""
    by_table: dict[Table, list[dict]] = conn.info.pop(_ROWS, None) or {}
    conn.info.pop(_KEYS, None)
    statements = conn.info.pop(_LATER, None) or []  # taken first: writing the rows must not run them
    groups = [(table, by_table[table]) for table in TABLES if table in by_table]
    committed = False
    if conn.dialect.name == "postgresql":
        committed = _write_postgresql(conn, groups, commit=then_commit and not statements)
    else:
        for table, group in groups:
            _write(conn, table, group)
    for statement, params in statements:
        conn.execute(statement, params)
    return committed


def _write(conn: Connection, table: Table, group: list[dict]) -> None:
    group = _complete(table, group)
    if table is schema.resources:
        r = schema.resources
        statement = insert_for(conn, r).on_conflict_do_nothing().returning(r.c.type, r.c.id)
        written = {(row.type, row.id) for row in conn.execute(statement, group)}
        _refuse_if_created_meanwhile(group, written)
    elif table is schema.slot_claims:
        # A claim row outlives its Slot's deletion; a Slot re-created after one keeps that row.
        conn.execute(insert_for(conn, table).on_conflict_do_nothing(), group)
    else:
        conn.execute(insert(table), group)


def _refuse_if_created_meanwhile(group: list[dict], written: set[tuple[str, str]]) -> None:
    if len(written) < len(group):
        missing = next(row for row in group if (row["type"], row["id"]) not in written)
        raise FhirError("version-conflict", f"{missing['type']}/{missing['id']} was created meanwhile.")


def _write_postgresql(conn: Connection, groups: list[tuple[Table, list[dict]]], *, commit: bool) -> bool:
    """Large groups by COPY; all others as one INSERT per table, sent together in one pipeline: one round
    trip however many tables they fill (a booking's flush fills six), and the feed's lock, taken before
    the last flush, is held that much shorter. One statement per table, not one per row: the driver's
    work per statement was a tenth of a booking's time."""
    driver = conn.connection.driver_connection
    copied = [(t, g) for t, g in groups if len(g) >= COPY_FROM_ROWS and t not in _INSERTED]
    inserted = [(t, g) for t, g in groups if len(g) < COPY_FROM_ROWS or t in _INSERTED]
    # New resource rows go in without ON CONFLICT: an id created meanwhile fails their INSERT or COPY, the
    # pipeline skips the rest (the COMMIT too), and the transaction is refused as a version conflict and
    # rolls back. The COMMIT rides along unless rows are still to be copied after the pipeline.
    commit = commit and not copied
    try:
        if inserted or commit:
            with driver.pipeline():
                for table, group in inserted:
                    columns = tuple(_columns(table, group))
                    arrays = [list(values) for values in zip(*_tuples(table, columns, group), strict=True)]
                    driver.cursor().execute(_insert_sql(table, columns), arrays)
                if commit:
                    driver.cursor().execute("COMMIT")
        for table, group in copied:
            _copy(conn, table, group)
    except psycopg.errors.UniqueViolation as error:
        _refuse_if_created_meanwhile_by(error)
        raise
    return commit


_TAKEN_KEY = re.compile(r"\(type, id\)=\((?P<type>[^,]+), (?P<id>.+)\)")  # in the violation's detail


def _refuse_if_created_meanwhile_by(error: psycopg.errors.UniqueViolation) -> None:
    """The refusal SQLite's check of the written rows gives, from the violation of a resource's key."""
    if error.diag.constraint_name != "resources_pkey":
        return
    found = _TAKEN_KEY.search(error.diag.message_detail or "")
    if found is not None:
        taken = f"{found['type']}/{found['id']}"
        raise FhirError("version-conflict", f"{taken} was created meanwhile.") from error


# Rows that go in by INSERT whatever their number: a claim row may already be there (ON CONFLICT).
_INSERTED = (schema.slot_claims,)


@cache
def _insert_sql(table: Table, columns: tuple[str, ...]) -> str:
    """One INSERT for any number of rows, each column's values as one array: the driver parses and the
    server plans the same text every time (a multi-row VALUES is a new text for each number of rows).
    The arrays go in binary (`%b`): the driver dumps a short list in text at 9.5 µs, in binary at 5, and a
    booking sends 56 of them."""
    arrays = ", ".join(f"%b::{table.c[name].type.compile(dialect=_POSTGRESQL)}[]" for name in columns)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
    if table is schema.slot_claims:
        return sql + " ON CONFLICT (slot_id) DO NOTHING"
    return sql


_POSTGRESQL = postgresql.dialect()


@cache
def _defaults(table: Table) -> dict:
    return {c.name: c.default.arg for c in table.columns if c.default is not None and c.default.is_scalar}


def _columns(table: Table, group: list[dict]) -> list[str]:
    """The columns the rows name, and those with a default: the others get their database default, as an
    INSERT naming only its rows' columns would give them."""
    names = {name for row in group for name in row} | _defaults(table).keys()
    return [c.name for c in table.columns if c.name in names]


def _tuples(table: Table, columns: tuple[str, ...], group: list[dict]) -> list[tuple]:
    """Each row's values in the order of `columns`; a column a row leaves out gets its column default, as an
    INSERT would give it. Where every row names every column (nearly always), one C call per row: a
    generator per row took 0.58 µs against 0.10, and a Slot's load writes some 14 rows."""
    if len(columns) > 1:
        values = itemgetter(*columns)
        try:
            return list(map(values, group))
        except KeyError:
            pass  # some row leaves a column out
    defaults = _defaults(table)
    return [tuple(row.get(name, defaults.get(name)) for name in columns) for row in group]


def _complete(table: Table, group: list[dict]) -> list[dict]:
    """The rows, each naming every column any of them names: SQLAlchemy builds one INSERT for a group from
    its first row, and would drop a column only later rows name (a column no row names gets its default
    from SQLAlchemy)."""
    first = group[0].keys()
    if all(row.keys() == first for row in group):
        return group
    columns = tuple(_columns(table, group))
    return [dict(zip(columns, values, strict=True)) for values in _tuples(table, columns, group)]


def _copy(conn: Connection, table: Table, group: list[dict]) -> None:
    """PostgreSQL's COPY, in the transaction's own connection: a row costs a fraction of an INSERT's
    execution. In binary format: in text a resource's JSON (bytea) goes as hex, twice its size, encoded by
    the driver and decoded by the server (1,000 resource rows took 2.1-3.4 ms of the driver's CPU and
    5.6-6.5 ms in all as text, 1.4-1.5 and 4.3-4.6 in binary)."""
    columns = tuple(_columns(table, group))
    driver = conn.connection.driver_connection
    types = _column_types(driver, table)
    cursor = driver.cursor()
    with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([types[name] for name in columns])
        for values in _tuples(table, columns, group):
            copy.write_row(values)


_TYPES: dict[str, dict[str, int]] = {}  # table -> column -> type oid, as the database has it (built-in types)


def _column_types(driver: psycopg.Connection, table: Table) -> dict[str, int]:
    """The type of each of the table's columns, as binary COPY needs it; read from the catalog once."""
    if table.name not in _TYPES:
        found = driver.execute(
            "SELECT attname, atttypid FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            [table.name],
        )
        _TYPES[table.name] = dict(found.fetchall())
    return _TYPES[table.name]


def forget(conn: Connection) -> None:
    """Drop the waiting rows and statements (the transaction or savepoint that made them was rolled back)."""
    conn.info.pop(_ROWS, None)
    conn.info.pop(_KEYS, None)
    conn.info.pop(_LATER, None)
    for hook in _FORGET_HOOKS:
        hook(conn)


def on_forget(hook) -> None:  # noqa: ANN001 - a callable taking the connection
    """Also call `hook(conn)` whenever waiting rows are dropped: a cache of the same rows must go too."""
    _FORGET_HOOKS.append(hook)


# Execution options of a statement that reads none of the waiting rows (its caller knows): it runs at once.
WITHOUT_FLUSH = {"terminhub_without_flush": True}


def flush_before(conn: Connection, statement: str) -> None:
    """Flush if `statement` names a table whose rows are waiting: it must find them. A statement that
    names only other tables needs none of them (no table refers to another); waiting statements may
    touch any of these tables, so with them any name counts."""
    if conn.info.get(_LATER):
        if any(name in statement for name in _NAMES):
            flush(conn)
    elif (waiting_in := conn.info.get(_ROWS)) and any(table.name in statement for table in waiting_in):
        flush(conn)


def follow(engine: Engine) -> None:
    """Flush before any statement that names a buffered table and at each savepoint; a savepoint's
    rollback drops the rows made since it began."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, _cursor, statement: str, _params, context, _many: bool) -> None:  # noqa: ANN001
        if context is None or not context.execution_options.get("terminhub_without_flush"):
            flush_before(conn, statement)

    @event.listens_for(engine, "savepoint")
    def _savepoint(conn: Connection, _name: str | None) -> None:
        flush(conn)

    @event.listens_for(engine, "rollback_savepoint")
    def _rollback(conn: Connection, _name: str | None, _context: object) -> None:
        forget(conn)
