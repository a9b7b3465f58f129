"""What each Slot offers, kept as rows beside it so that slot searches run on one index.

A Slot offers the codings of its own `specialty` and `serviceType`, or, where it has none, those of its
Schedule (contract 3.1). Written with the Slot (and again for its Slots when a Schedule changes), each row
carries the Slot's start, so "free Slots offering X from Monday on, by start" is one range scan of
`ix_slot_offers_coding_start` however many Slots are stored.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    true,
)

from terminhub.store import appends, hot_reads, schema
from terminhub.store.indexer import split_reference, walk

OFFERS = schema.slot_offers
S = schema.search_index
OFFER_PARAMS = ("specialty", "service-type")
TERMINTYP = "urn:terminhub:termintyp"
_CODINGS = "terminhub.slot_offers.schedule_codings"


def own_codings(resource: dict) -> list[tuple[str, str]]:
    """The distinct (system, code) pairs of a Slot's or Schedule's specialty and serviceType."""
    found: dict[tuple[str, str], None] = {}
    for path in ("specialty.coding", "serviceType.coding"):
        for coding in walk(resource, path):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                found[(coding.get("system") or "", coding["code"])] = None
    return list(found)


def appointment_type(slot: dict) -> str:
    """`praesenz` (also when absent) or `video`."""
    for coding in (slot.get("appointmentType") or {}).get("coding") or []:
        if coding.get("system") == TERMINTYP and coding.get("code"):
            return coding["code"]
    return "praesenz"


def forget(conn: Connection, resource_type: str, resource_id: str) -> None:
    """A Slot's rows go with it; a Schedule's codings leave the Slots that inherit them."""
    if resource_type == "Slot":
        conn.execute(delete(OFFERS).where(OFFERS.c.slot_id == resource_id))
    elif resource_type == "Schedule":
        _known_codings(conn).pop(resource_id, None)
        conn.execute(delete(OFFERS).where(OFFERS.c.schedule_id == resource_id, OFFERS.c.inherited.is_(True)))


def refresh(
    conn: Connection, resource_type: str, resource_id: str, resource: dict, start: int | None
) -> None:
    """Write the offers of a Slot just indexed, or of the inheriting Slots of a Schedule just indexed
    (whose codings are then known: they are what its index rows hold)."""
    if resource_type == "Slot":
        _refresh_slot(conn, resource_id, resource, start)
    elif resource_type == "Schedule":
        _known_codings(conn)[resource_id] = sorted(own_codings(resource))
        _refresh_schedule(conn, resource_id)


def inherit(conn: Connection, schedule_id: str) -> None:
    """The Slots of a stored Schedule that have no codings of their own take its codings as indexed."""
    _known_codings(conn).pop(schedule_id, None)
    _refresh_schedule(conn, schedule_id)


def _refresh_slot(conn: Connection, slot_id: str, resource: dict, start: int | None) -> None:
    """The Slot's rows join the transaction's other new rows (`appends`)."""
    if start is None:
        return
    target = split_reference(((resource.get("schedule") or {}).get("reference")) or "")
    schedule_id = target[1] if target and target[0] == "Schedule" else None
    own = own_codings(resource)
    codings = own or (schedule_codings(conn, schedule_id) if schedule_id is not None else [])
    video = appointment_type(resource) == "video"
    for system, code in codings:
        row = {"slot_id": slot_id, "system": system, "code": code, "start_us": start,
               "schedule_id": schedule_id, "inherited": not own, "video": video}  # fmt: skip
        appends.add(conn, OFFERS, row)


def schedule_codings(conn: Connection, schedule_id: str) -> list[tuple[str, str]]:
    """A Schedule's offered codings as indexed, read once per transaction: a Bundle of its 1,000 Slots
    asks 1,000 times. A Schedule indexed in this transaction left its codings here as it was indexed, so
    the read needs none of the transaction's waiting rows and does not flush them (a Bundle of Slots of
    a hundred Schedules flushed a hundred times). The answers are forgotten when a savepoint is rolled
    back; the rows of Schedules indexed before the savepoint were flushed as it began."""
    known = _known_codings(conn)
    if schedule_id not in known:
        params = {"schedule_id": schedule_id}
        rows = hot_reads.rows(conn, _codings_statement(), params, flush=False)
        known[schedule_id] = sorted((row[0], row[1]) for row in rows)
    return known[schedule_id]


@cache
def _codings_statement():  # noqa: ANN202 - a statement
    """Built once: a Bundle of Slots of a hundred Schedules asks for a hundred Schedules' codings."""
    schedule_id = bindparam("schedule_id", type_=String)
    return select(_system(), S.c.code).distinct().where(*_schedule_codings(schedule_id))


def _known_codings(conn: Connection) -> dict[str, list[tuple[str, str]]]:
    return conn.info.setdefault(_CODINGS, {})


def _forget_codings(conn: Connection) -> None:
    conn.info.pop(_CODINGS, None)


appends.on_forget(_forget_codings)


def _refresh_schedule(conn: Connection, schedule_id: str) -> None:
    """Every Slot of the Schedule without codings of its own inherits the Schedule's, in one statement,
    run with the transaction's waiting rows (the Schedule's new index rows among them)."""
    appends.later(conn, _inherit_statement(), {"schedule_id": schedule_id})


@cache
def _inherit_statement():  # noqa: ANN202 - a statement
    """Built once (each Schedule of a directory load runs it; building it cost more than running it)."""
    schedule_id = bindparam("schedule_id", type_=String)
    slot = S.alias("slot_ref")
    start = S.alias("slot_start")
    coding = S.alias("coding")
    has_own = exists().where(OFFERS.c.slot_id == slot.c.id, OFFERS.c.inherited.is_(False))
    query = (
        select(
            slot.c.id, _system(coding), coding.c.code, start.c.lo, schedule_id, true(), is_video(slot.c.id)
        )
        .distinct()
        .select_from(slot)
        .join(start, and_(start.c.type == "Slot", start.c.id == slot.c.id, start.c.param == "start"))
        .join(coding, and_(*_schedule_codings(schedule_id, coding)))
        .where(
            slot.c.type == "Slot",
            slot.c.param == "schedule",
            slot.c.ref_type == "Schedule",
            slot.c.ref_id == schedule_id,
            not_(has_own),
        )
    )
    columns = ["slot_id", "system", "code", "start_us", "schedule_id", "inherited", "video"]
    return insert(OFFERS).from_select(columns, query)


def is_video(slot_id):  # noqa: ANN001, ANN201 - a column; a SQL expression
    """Whether the Slot's indexed appointmentType says video (as `appointment_type` reads it)."""
    video = S.alias("video")
    return exists().where(
        video.c.type == "Slot", video.c.id == slot_id, video.c.param == "appointment-type",
        video.c.system == TERMINTYP, video.c.code == "video",
    )  # fmt: skip


def _system(table=S):  # noqa: ANN001, ANN202 - a search_index alias; a SQL expression
    return func.coalesce(table.c.system, "")


def _schedule_codings(schedule_id, table=S) -> list:  # noqa: ANN001 - an id or a bind parameter
    return [
        table.c.type == "Schedule",
        table.c.id == schedule_id,
        or_(*(table.c.param == param for param in OFFER_PARAMS)),  # not IN: a list to expand (hot_reads)
        table.c.code.is_not(None),
    ]
