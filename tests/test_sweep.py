"""The sweep (contract 2.4): registered expiry jobs, each in its own transaction, at least every 60 s."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, select

from terminhub import sweep
from terminhub.clock import Clock, FixedClock
from terminhub.config import Settings
from terminhub.store import idempotency, schema
from terminhub.store.database import Database
from terminhub.store.idempotency import Remembered
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

KV = schema.settings_kv


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("sweep")) as database:
        yield database


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> dict:
    """An empty job registry for one test (the real one is left as it was)."""
    registry: dict = {}
    monkeypatch.setattr(sweep, "JOBS", registry)
    return registry


def settings(**changes: object) -> Settings:
    return Settings(**{"test_clock": False, **changes})


def _note(key: str) -> sweep.Job:
    """A job that writes a row, so that the test can see whether its transaction committed."""

    def job(conn: Connection, _clock: Clock, _settings: Settings) -> str:
        conn.execute(KV.insert().values(key=key, value="done"))
        return key

    return job


def _written(db: Database, key: str) -> bool:
    with db.transaction() as conn:
        return conn.execute(select(KV.c.value).where(KV.c.key == key)).first() is not None


def test_register_adds_a_job_by_name(jobs: dict) -> None:
    job = _note("x")
    sweep.register("expire-x", job)
    assert jobs == {"expire-x": job}


def test_run_once_runs_every_job_and_reports_its_result(db: Database, jobs: dict) -> None:
    first, second = f"sweep-{uuid.uuid4().hex[:8]}", f"sweep-{uuid.uuid4().hex[:8]}"
    sweep.register("first", _note(first))
    sweep.register("second", _note(second))
    assert sweep.run_once(db, settings()) == {"first": first, "second": second}
    assert _written(db, first) and _written(db, second)


def test_a_failing_job_does_not_stop_the_others(db: Database, jobs: dict) -> None:
    """A job that fails is reported as failed and rolled back; the jobs before and after it commit."""
    before, after, failed = (f"sweep-{uuid.uuid4().hex[:8]}" for _ in range(3))

    def broken(conn: Connection, clock: Clock, _settings: Settings) -> None:
        conn.execute(KV.insert().values(key=failed, value="half done"))
        raise RuntimeError("this job is broken")

    sweep.register("before", _note(before))
    sweep.register("broken", broken)
    sweep.register("after", _note(after))
    results = sweep.run_once(db, settings())
    assert results == {"before": before, "broken": "failed", "after": after}
    assert _written(db, before) and _written(db, after)
    assert not _written(db, failed)


def test_each_job_has_its_own_transaction(db: Database, jobs: dict) -> None:
    """Jobs do not share a connection: each one begins and commits its own transaction."""
    seen: list[Connection] = []
    sweep.register("a", lambda conn, clock, s: seen.append(conn))
    sweep.register("b", lambda conn, clock, s: seen.append(conn))
    sweep.run_once(db, settings())
    assert len(seen) == 2 and seen[0] is not seen[1]


def test_jobs_use_the_test_clock_when_it_is_on(db: Database, jobs: dict) -> None:
    """With TERMINHUB_TEST_CLOCK the jobs' clock carries the stored offset; without it, never."""
    offsets: list[float] = []
    sweep.register("clock", lambda conn, clock, s: offsets.append(clock.offset_s))
    with db.transaction(write=True) as conn:
        Clock.store_offset(conn, 7200)
    try:
        sweep.run_once(db, settings(test_clock=True))
        sweep.run_once(db, settings(test_clock=False))
    finally:
        with db.transaction(write=True) as conn:
            Clock.store_offset(conn, 0)
    assert offsets == [7200, 0]


def test_the_idempotency_job_forgets_expired_keys(db: Database) -> None:
    """The sweep registers the Idempotency-Key cleanup (2.5) out of the box."""
    job = sweep.JOBS["idempotency-keys"]
    client = f"th-{uuid.uuid4().hex[:12]}"
    long_ago = FixedClock(datetime(2000, 1, 1, tzinfo=UTC))
    with db.transaction(write=True) as conn:
        idempotency.remember(conn, client, "k", "f", long_ago.now_us(), Remembered(204, {}, b""))
        job(conn, Clock(), settings())
    t = schema.idempotency
    with db.transaction() as conn:
        assert conn.execute(select(t.c.key).where(t.c.client_id == client)).first() is None


@pytest.mark.parametrize(("configured", "expected"), [(600, 60), (30, 30), (0.01, 1)])
def test_the_loop_sweeps_at_least_every_60_seconds(
    monkeypatch: pytest.MonkeyPatch, configured: float, expected: float
) -> None:
    """`sweep_interval_s` is bounded to [1, 60] seconds; each pause is followed by one run."""
    pauses: list[float] = []
    runs: list[object] = []

    async def fake_sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) > 2:
            raise asyncio.CancelledError

    monkeypatch.setattr(sweep.asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(sweep, "run_once", lambda db, s: runs.append(db))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(sweep.loop("db", settings(sweep_interval_s=configured)))  # type: ignore[arg-type]
    assert pauses == [expected] * 3
    assert runs == ["db", "db"]
