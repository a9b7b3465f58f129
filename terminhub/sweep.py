"""The sweep: every server process runs registered expiry jobs at least every 60 s (2.4).

Later parts (holds, pending bookings, referral windows) register a job; each job runs in its own
transaction, so an expiry is written down with its change records even when nobody touches the resource.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy import Connection

from terminhub.clock import Clock
from terminhub.config import Settings
from terminhub.store import cursors, feed, idempotency, polls
from terminhub.store.database import Database

log = logging.getLogger("terminhub.sweep")

Job = Callable[[Connection, Clock, Settings], object]
JOBS: dict[str, Job] = {}


def register(name: str, job: Job) -> None:
    JOBS[name] = job


def run_once(db: Database, settings: Settings) -> dict[str, object]:
    """Run every job once, each in its own write transaction; a failing job does not stop the others."""
    return run_jobs(db, settings, tuple(JOBS))


def run_jobs(db: Database, settings: Settings, names: tuple[str, ...]) -> dict[str, object]:
    """Run the named jobs (those registered) once each, in their own transactions."""
    results: dict[str, object] = {}
    for name, job in [(n, JOBS[n]) for n in names if n in JOBS]:
        try:
            with db.transaction(write=True) as conn:
                clock = Clock()
                if settings.test_clock:
                    clock.refresh(conn)
                results[name] = job(conn, clock, settings)
        except Exception:  # noqa: BLE001 - one failing job must not stop the sweep
            log.exception("sweep job %s failed", name)
            results[name] = "failed"
    return results


async def loop(db: Database, settings: Settings) -> None:
    interval = min(max(settings.sweep_interval_s, 1), 60)
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(run_once, db, settings)


register("idempotency-keys", lambda conn, clock, _settings: idempotency.sweep(conn, clock.now_us()))
register("search-cursors", lambda conn, clock, _settings: cursors.sweep(conn, clock.now_us()))
register("poll-searches", lambda conn, clock, _settings: polls.sweep(conn, clock.now_us()))
register(
    "provenance-retention",
    lambda conn, clock, settings: feed.sweep(conn, clock.now_us(), settings.provenance_retention_days),
)
