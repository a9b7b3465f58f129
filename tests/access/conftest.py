"""Real databases for the access tests: a temp-file SQLite database and, when reachable, PostgreSQL.

PostgreSQL gets a fresh database per test session (dropped at the end); set TERMINHUB_TEST_PG_URL to point
elsewhere than the local trust-auth server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from terminhub.store.database import Database
from terminhub.store.migrate import upgrade

PG_ADMIN_URL = os.environ.get("TERMINHUB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_reachable() -> bool:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


@pytest.fixture(scope="session")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('access') / 'terminhub.db'}")
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def postgresql_db() -> Iterator[Database]:
    if not _pg_reachable():
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    name = f"terminhub_test_access_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db = Database(make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    try:
        upgrade(db)
        yield db
    finally:
        db.dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> Database:
    """Each test runs once per database backend."""
    return request.getfixturevalue(f"{request.param}_db")
