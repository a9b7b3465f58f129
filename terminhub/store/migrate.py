"""`terminhub db upgrade`: Alembic to head, then the token-signing key if the database has none."""

from __future__ import annotations

import secrets
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select

from terminhub.store import schema
from terminhub.store.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"
SIGNING_KEY = "token_signing_key"


def upgrade(db: Database) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        if db.sqlite:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    ensure_signing_key(db)


def ensure_signing_key(db: Database) -> None:
    """One key for every process and host: stored in the database, created once."""
    with db.transaction(write=True) as conn:
        found = conn.execute(
            select(schema.settings_kv.c.value).where(schema.settings_kv.c.key == SIGNING_KEY)
        )
        if found.first() is None:
            conn.execute(schema.settings_kv.insert().values(key=SIGNING_KEY, value=secrets.token_urlsafe(48)))
