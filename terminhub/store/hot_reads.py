"""Many-row reads on the hottest paths, as plain tuples.

Through SQLAlchemy's result a row costs a fetch of its own: a page of 200 candidate Slots took 0.9 ms, of
which the database's part is 0.3 ms, and a slot search reads two such pages and a batch of Slots. On
PostgreSQL the statement is compiled once and runs, prepared, on the transaction's own driver cursor, whose
rows come back at once; SQLite goes through SQLAlchemy as every other read.
"""

from __future__ import annotations

from sqlalchemy import Connection, Executable

from terminhub.store import appends
from terminhub.store.dialect import BinaryArray

_compiled: dict[Executable, tuple[str, dict]] = {}  # module-level statements: a few, kept for good


def rows(conn: Connection, statement: Executable, params: dict, *, flush: bool = True) -> list[tuple]:
    """The rows of `statement` (one without expanding parameters, IN lists included) with `params`, lists
    among them sent as binary arrays; `flush=False` for a read that needs none of the transaction's waiting
    rows (`appends.WITHOUT_FLUSH`)."""
    if conn.dialect.name != "postgresql":
        options = {} if flush else appends.WITHOUT_FLUSH
        return [tuple(row) for row in conn.execute(statement, params, execution_options=options).all()]
    known = _compiled.get(statement)
    if known is None:
        compiled = statement.compile(dialect=conn.dialect)
        # the constants it names as parameters (a LIMIT, a code) come with it
        known = _compiled[statement] = (str(compiled), dict(compiled.params))
    sql, constants = known
    if flush:
        appends.flush_before(conn, sql)  # as SQLAlchemy's own execution would
    values = constants | {k: BinaryArray(v) if type(v) is list else v for k, v in params.items()}
    cursor = conn.connection.driver_connection.cursor()
    cursor.execute(sql, values, prepare=True)
    return cursor.fetchall()
