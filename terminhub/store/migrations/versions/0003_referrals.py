"""Referral codes' bookkeeping, rate counters shared by all processes, server-side paging state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

from terminhub.store import schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ["referrals", "rate_counters", "search_cursors"]


def upgrade() -> None:
    for name in TABLES:
        schema.metadata.tables[name].create(op.get_bind())


def downgrade() -> None:
    for name in reversed(TABLES):
        schema.metadata.tables[name].drop(op.get_bind())
