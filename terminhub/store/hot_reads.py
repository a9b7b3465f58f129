"""Many-row reads on the hottest paths, as plain tuples.

Through SQLAlchemy's result a row costs a fetch of its own: a page of 200 candidate Slots took 0.9 ms, of
which the database's part is 0.3 ms, and a slot search reads two such pages and a batch of Slots. On
PostgreSQL the statement is compiled once and runs, prepared, on the transaction's own driver cursor, whose
rows come back at once; SQLite goes through SQLAlchemy as every other read.
"""

from __future__ import annotations

from sqlalchemy import Connection, Executable

from terminhub.store import appends

_compiled: dict[int, tuple[Executable, str, dict]] = {}  # by id of a module-level statement, kept alive here


def rows(conn: Connection, statement: Executable, params: dict) -> list[tuple]:
    """The rows of `statement` (one without expanding parameters) with `params`."""
    if conn.dialect.name != "postgresql":
        return [tuple(row) for row in conn.execute(statement, params).all()]
    sql, constants = _compile(conn, statement)
    appends.flush_before(conn, sql)  # as SQLAlchemy's own execution would
    cursor = conn.connection.driver_connection.cursor()
    cursor.execute(sql, constants | params, prepare=True)
    return cursor.fetchall()


def _compile(conn: Connection, statement: Executable) -> tuple[str, dict]:
    """The statement's text and the values of the constants it names as parameters (a LIMIT, a code)."""
    known = _compiled.get(id(statement))
    if known is None or known[0] is not statement:
        compiled = statement.compile(dialect=conn.dialect)
        known = _compiled[id(statement)] = (statement, str(compiled), dict(compiled.params))
    return known[1], known[2]
