"""Whether each offered Slot is a video Slot, so a search by place keeps it without reading a place.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from terminhub.store import schema, slot_offers

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0005 creates slot_offers from the current table definition, which already has the column.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("slot_offers")}
    if "video" not in columns:
        op.add_column(
            "slot_offers", sa.Column("video", sa.Boolean, nullable=False, server_default=sa.false())
        )
    offers = schema.slot_offers
    op.execute(offers.update().where(slot_offers.is_video(offers.c.slot_id)).values(video=True))


def downgrade() -> None:
    with op.batch_alter_table("slot_offers") as batch:
        batch.drop_column("video")
