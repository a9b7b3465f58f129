"""The foundation: resources with history, search index, clients, settings, outbox, idempotency.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

from terminhub.store import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = [
    "resources",
    "resource_versions",
    "search_index",
    "positions",
    "clients",
    "settings_kv",
    "outbox",
    "idempotency",
]


def upgrade() -> None:
    bind = op.get_bind()
    for name in TABLES:
        schema.metadata.tables[name].create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for name in reversed(TABLES):
        schema.metadata.tables[name].drop(bind)
