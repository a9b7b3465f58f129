"""Migrated databases for unit tests (no server): one per backend, as `fresh_database` makes them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from terminhub.store.database import Database
from terminhub.store.migrate import upgrade
from tests.support.databases import BACKENDS, fresh_database

# Parametrize a fixture with these to run its tests on SQLite and on PostgreSQL (markers as conftest's).
BACKEND_PARAMS = [pytest.param(b, marks=getattr(pytest.mark, b)) for b in BACKENDS]


@contextmanager
def migrated_database(backend: str, directory: Path) -> Iterator[Database]:
    """A fresh database of `backend` with the schema (and the token-signing key) in place."""
    with fresh_database(backend, directory) as url:
        db = Database(url)
        try:
            upgrade(db)
            yield db
        finally:
            db.dispose()
