"""Generation numbers of cached kinds of data (the directory that slot searches read).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from alembic import op

from terminhub.store import generations, schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.generations.create(op.get_bind())
    op.bulk_insert(schema.generations, [{"name": name, "n": 0} for name in generations.NAMES])


def downgrade() -> None:
    schema.generations.drop(op.get_bind())
