"""Fresh databases for tests: a temp-file SQLite database, or a new PostgreSQL database (dropped after)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("TERMINHUB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")


def pg_reachable() -> bool:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def skip_or_fail_without_postgres() -> None:
    """CI sets TERMINHUB_REQUIRE_POSTGRES=1: there a missing PostgreSQL fails instead of skipping."""
    if pg_reachable():
        return
    message = f"PostgreSQL not reachable at {PG_ADMIN_URL}"
    if os.environ.get("TERMINHUB_REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def fresh_database(backend: str, directory: Path) -> Iterator[str]:
    """Yield the URL of an empty database of the given backend."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / f'terminhub-{secrets.token_hex(4)}.db'}"
        return
    skip_or_fail_without_postgres()
    name = f"terminhub_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
