"""The change feed: its one-row stamp counter, the practices each Provenance belongs to, poll marks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from alembic import op

from terminhub.store import schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ["feed_clock", "feed_owners", "poll_marks", "poll_searches"]


def upgrade() -> None:
    for name in TABLES:
        schema.metadata.tables[name].create(op.get_bind())
    op.get_bind().execute(schema.feed_clock.insert().values(id=1, last=0))


def downgrade() -> None:
    for name in reversed(TABLES):
        schema.metadata.tables[name].drop(op.get_bind())
