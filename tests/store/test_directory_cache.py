"""The directory cache of slot searches: shared by a process's transactions while the directory's
generation number stands, dropped as soon as a committed change of the directory moves it on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from terminhub.clock import FixedClock
from terminhub.store import directory_cache, generations
from terminhub.store.database import Database
from terminhub.store.repository import Actor, Repository
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

BERLIN = ZoneInfo("Europe/Berlin")
ADMIN = Actor("th-admin", "admin", "Betrieb")
LOCATION = {"resourceType": "Location", "name": "Praxis", "address": {"postalCode": "10115"}}


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("directory")) as database:
        yield database


def _save(db: Database, resource: dict, resource_id: str | None = None, *, fail: bool = False) -> str:
    with db.transaction(write=True) as conn:
        repo = Repository(conn, FixedClock(datetime(2030, 1, 1, tzinfo=UTC)), BERLIN, ADMIN)
        saved = repo.save(resource["resourceType"], resource, resource_id=resource_id)
        if fail:
            raise RuntimeError("rolled back")
        return saved.id


def _generation(db: Database) -> int | None:
    with db.transaction() as conn:
        return generations.current(conn, generations.DIRECTORY)


def _cache(db: Database) -> directory_cache.DirectoryCache:
    with db.transaction() as conn:
        return directory_cache.for_transaction(conn)


def test_a_directory_change_moves_the_generation_on(db: Database) -> None:
    before = _generation(db)
    location_id = _save(db, LOCATION)
    assert _generation(db) == before + 1
    _save(db, {**LOCATION, "address": {"postalCode": "80331"}}, location_id)
    assert _generation(db) == before + 2


def test_other_changes_and_rolled_back_ones_leave_it(db: Database) -> None:
    before = _generation(db)
    _save(db, {"resourceType": "Patient", "name": [{"family": "Muster"}]})
    with pytest.raises(RuntimeError):
        _save(db, LOCATION, fail=True)
    assert _generation(db) == before


def test_transactions_share_the_cache_until_the_directory_changes(db: Database) -> None:
    first = _cache(db)
    first.derived["probe"] = 1
    assert _cache(db) is first
    _save(db, LOCATION)
    fresh = _cache(db)
    assert fresh is not first and fresh.shared and "probe" not in fresh.derived


def test_a_transaction_that_changed_the_directory_reads_past_the_cache(db: Database) -> None:
    shared = _cache(db)
    with db.transaction(write=True) as conn:
        repo = Repository(conn, FixedClock(datetime(2030, 1, 1, tzinfo=UTC)), BERLIN, ADMIN)
        repo.save("Location", LOCATION)
        own = directory_cache.for_transaction(conn)
    assert own is not shared and not own.shared


def test_the_cache_starts_again_when_it_holds_its_most_resources(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directory_cache, "MAX_RESOURCES", 2)
    full = _cache(db)
    full.derived.update({"a": 1, "b": 2, "c": 3})
    assert _cache(db) is full  # derived answers count against their own limit
    full.stored.update({("Location", "a"): None, ("Location", "b"): None})
    assert _cache(db) is not full


def test_the_cache_starts_again_when_it_holds_its_most_derived_answers(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directory_cache, "MAX_DERIVED", 3)
    full = _cache(db)
    full.stored.update({("Location", "a"): None, ("Location", "b"): None, ("Location", "c"): None})
    assert _cache(db) is full  # resources count against their own limit
    full.derived.update({"a": 1, "b": 2, "c": 3})
    assert _cache(db) is not full


def test_judgements_start_again_alone_when_they_hold_their_most(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judgements depend on what requests ask, so they may grow without the directory growing: when full,
    they start again, and the directory's resources and derived answers stay."""
    monkeypatch.setattr(directory_cache, "MAX_JUDGED", 2)
    cache = _cache(db)
    cache.stored[("Location", "kept")] = None
    cache.derived["kept"] = 1
    cache.judgements().update({("at", "1"): True})
    assert cache.judgements() == {("at", "1"): True}
    cache.judgements()[("at", "2")] = False
    assert cache.judgements() == {}
    assert _cache(db) is cache
    assert ("Location", "kept") in cache.stored and cache.derived["kept"] == 1
