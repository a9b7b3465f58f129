"""What each Slot offers, with its start, for slot searches by one range scan; filled from the index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from alembic import op
from sqlalchemy import and_, false, func, insert, select

from terminhub.store import schema, slot_offers

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    schema.slot_offers.create(conn)
    S = schema.search_index
    coding, start, sched = S.alias("coding"), S.alias("start"), S.alias("sched")
    own = (
        select(
            coding.c.id,
            func.coalesce(coding.c.system, ""),
            coding.c.code,
            start.c.lo,
            sched.c.ref_id,
            false(),
        )
        .distinct()
        .select_from(coding)
        .join(start, and_(start.c.type == "Slot", start.c.id == coding.c.id, start.c.param == "start"))
        .outerjoin(
            sched, and_(sched.c.type == "Slot", sched.c.id == coding.c.id, sched.c.param == "schedule")
        )
        .where(
            coding.c.type == "Slot", coding.c.param.in_(slot_offers.OFFER_PARAMS), coding.c.code.is_not(None)
        )
    )
    columns = ["slot_id", "system", "code", "start_us", "schedule_id", "inherited"]
    conn.execute(insert(schema.slot_offers).from_select(columns, own))
    schedules = select(S.c.ref_id).distinct().where(S.c.type == "Slot", S.c.param == "schedule")
    for (schedule_id,) in conn.execute(schedules).all():
        slot_offers.inherit(conn, schedule_id)


def downgrade() -> None:
    schema.slot_offers.drop(op.get_bind())
