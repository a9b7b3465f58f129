"""Slot claims: the row on which the database decides every booking race (holds, active bookings).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op

from terminhub.store import schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.metadata.tables["slot_claims"].create(op.get_bind())


def downgrade() -> None:
    schema.metadata.tables["slot_claims"].drop(op.get_bind())
