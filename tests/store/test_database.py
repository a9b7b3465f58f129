"""The unit of work: a read runs without BEGIN and COMMIT on PostgreSQL and may not write; a pooled
connection the server dropped while it lay idle is replaced before a request gets it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.pool import NullPool

from terminhub.store import database as database_module
from terminhub.store import schema
from terminhub.store.database import Database
from tests.support.unit_db import BACKEND_PARAMS, migrated_database


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("database")) as database:
        yield database


def _generation(db: Database) -> int:
    g = schema.generations
    with db.transaction() as conn:
        return conn.execute(select(g.c.n).where(g.c.name == "directory")).scalar_one()


def test_a_write_transaction_commits_every_statement_together(db: Database) -> None:
    g = schema.generations
    before = _generation(db)
    with pytest.raises(ZeroDivisionError), db.transaction(write=True) as conn:
        conn.execute(update(g).where(g.c.name == "directory").values(n=g.c.n + 1))
        raise ZeroDivisionError  # the request fails after its first statement
    assert _generation(db) == before
    with db.transaction(write=True) as conn:
        conn.execute(update(g).where(g.c.name == "directory").values(n=g.c.n + 1))
    assert _generation(db) == before + 1


def test_a_read_on_postgresql_runs_outside_a_transaction_block(db: Database) -> None:
    if db.sqlite:
        pytest.skip("SQLite reads are transactions of their own")
    with db.transaction() as conn:
        # now() is the start of the transaction block; statement_timestamp() that of the statement
        outside = conn.execute(text("SELECT now() = statement_timestamp()")).scalar_one()
        assert conn.execute(text("SELECT pg_current_xact_id_if_assigned() IS NULL")).scalar_one()
    with db.transaction(write=True) as conn:
        conn.execute(text("SELECT pg_sleep(0.01)"))
        inside = conn.execute(text("SELECT now() = statement_timestamp()")).scalar_one()
    assert outside is True
    assert inside is False


def test_a_read_on_postgresql_refuses_to_write(db: Database) -> None:
    if db.sqlite:
        pytest.skip("SQLite reads are transactions of their own")
    g = schema.generations
    before = _generation(db)
    with pytest.raises(RuntimeError, match="a write in a read transaction"), db.transaction() as conn:
        conn.execute(update(g).where(g.c.name == "directory").values(n=g.c.n + 1))
    assert _generation(db) == before
    with db.transaction(write=True) as conn:  # the same pooled connection writes again as a writer
        conn.execute(update(g).where(g.c.name == "directory").values(n=g.c.n + 1))
    assert _generation(db) == before + 1


def test_a_pooled_connection_dropped_while_idle_is_replaced(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.sqlite:
        pytest.skip("SQLite opens a connection per transaction")
    db.engine.dispose()  # one pooled connection, the one the next transactions share
    with db.transaction() as conn:
        dropped = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    other = create_engine(db.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with other.connect() as admin:
        assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped}).scalar_one()
    other.dispose()
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_S", 0.0)
    with db.transaction() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != dropped


def test_a_connection_in_steady_use_is_not_tested_before_each_request(db: Database) -> None:
    if db.sqlite:
        pytest.skip("SQLite opens a connection per transaction")
    pings: list[object] = []
    original = db.engine.dialect.do_ping
    db.engine.dialect.do_ping = lambda dbapi_connection: (
        pings.append(dbapi_connection)
        or original(  # type: ignore[method-assign]
            dbapi_connection
        )
    )
    try:
        for _ in range(5):
            with db.transaction() as conn:
                conn.execute(text("SELECT 1"))
    finally:
        del db.engine.dialect.do_ping
    assert pings == []
