"""A resource's index rows of one parameter by one index lookup: ix_search_owner becomes (type, id, param).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0001 creates search_index from the current table definition, which already has the new index.
    op.execute("CREATE INDEX IF NOT EXISTS ix_search_owner_param ON search_index (type, id, param)")
    op.execute("DROP INDEX IF EXISTS ix_search_owner")


def downgrade() -> None:
    op.create_index("ix_search_owner", "search_index", ["type", "id"])
    op.drop_index("ix_search_owner_param", table_name="search_index")
