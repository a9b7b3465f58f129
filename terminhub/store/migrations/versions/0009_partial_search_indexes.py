"""search_index's value indexes hold only the rows with such a value (schema.SEARCH_INDEX_PARTS).

A row was written to all five indexes, four of them on NULLs; and without statistics PostgreSQL costed a
lookup by (type, id, param) on (type, param, lo, hi) alike and read every row of the parameter.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from alembic import op

from terminhub.store.schema import SEARCH_INDEX_PARTS

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0001 creates search_index from the current table definition, which already has these indexes.
    for name, columns, where in SEARCH_INDEX_PARTS:
        op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute(f"CREATE INDEX {name} ON search_index ({', '.join(columns)}) WHERE {where}")


def downgrade() -> None:
    for name, columns, _where in SEARCH_INDEX_PARTS:
        op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute(f"CREATE INDEX {name} ON search_index ({', '.join(columns)})")
