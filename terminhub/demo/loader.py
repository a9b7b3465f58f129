"""`terminhub demo load`: the demo directory written through the store's one write path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from zoneinfo import ZoneInfo

from sqlalchemy import select

from terminhub.clock import Clock
from terminhub.demo import DemoSettings, count, generate
from terminhub.store import schema
from terminhub.store.database import Database
from terminhub.store.repository import Actor, Repository

DEMO_ACTOR = Actor("demo-loader", "admin", "terminhub demo loader")
BATCH = 500


def has_data(db: Database) -> bool:
    with db.transaction() as conn:
        r = schema.resources
        return conn.execute(select(r.c.id).where(r.c.type == "Organization").limit(1)).first() is not None


def load(
    db: Database, settings: DemoSettings, timezone: str, progress: Callable[[int], None] | None = None
) -> int:
    """Write every demo resource (as admin would: stored as generated); returns how many."""
    tz = ZoneInfo(timezone)
    written = 0
    resources = generate(settings)
    for batch in _batches(resources, BATCH):
        with db.transaction(write=True) as conn:
            clock = Clock()
            clock.refresh(conn)
            repo = Repository(conn, clock, tz, DEMO_ACTOR)
            for resource in batch:
                repo.save(resource["resourceType"], resource, resource_id=resource["id"])
        written += len(batch)
        if progress:
            progress(len(batch))
    return written


def total(settings: DemoSettings) -> int:
    return count(settings)


def _batches(items: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while batch := list(islice(items, size)):
        yield batch
