"""Idempotency-Key storage (contract 2.5): the first response to a key is kept 24 h and replayed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from terminhub.clock import FixedClock
from terminhub.fhir.outcome import FhirError
from terminhub.store import idempotency, schema
from terminhub.store.database import Database
from terminhub.store.idempotency import Remembered, check_key, lookup, remember, request_hash
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

DAY_S = 24 * 3600
FIRST = Remembered(
    200, {"Content-Type": "application/fhir+json", "ETag": 'W/"3"'}, b'{"resourceType":"Parameters"}'
)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("idempotency")) as database:
        yield database


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2030, 3, 4, 10, 0, tzinfo=UTC))


@pytest.fixture
def client() -> str:
    """A client id of this test alone: keys are per client, so tests never meet."""
    return f"th-{uuid.uuid4().hex[:16]}"


def _remember(
    db: Database, client: str, key: str, fingerprint: str, clock: FixedClock, response: Remembered = FIRST
) -> None:
    with db.transaction(write=True) as conn:
        remember(conn, client, key, fingerprint, clock.now_us(), response)


def _lookup(db: Database, client: str, key: str, fingerprint: str, clock: FixedClock) -> Remembered | None:
    with db.transaction() as conn:
        return lookup(conn, client, key, fingerprint, clock.now_us())


# -- the key and the fingerprint ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["a", "x" * 64, "order-4711", "~!\"#$%&'()*+,-./:;<=>?@[]^_`{|}"])
def test_visible_ascii_keys_of_1_to_64_characters_are_accepted(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 65, "with space", "tab\there", "umlaut-ä", "line\n"])
def test_other_keys_are_invalid(key: str) -> None:
    """A key that is empty, too long, or has spaces, control or non-ASCII characters → 400 invalid."""
    with pytest.raises(FhirError) as refused:
        check_key(key)
    assert (refused.value.code, refused.value.status) == ("invalid", 400)


def test_request_hash_is_stable_and_tells_requests_apart() -> None:
    """Same parts, same hash; another part, or the same bytes split differently, another hash."""
    assert request_hash("POST", "/fhir/$book", b"{}") == request_hash("POST", "/fhir/$book", b"{}")
    assert request_hash("POST", "/fhir/$book", b"{}") != request_hash("POST", "/fhir/$book", b"{ }")
    assert request_hash("ab", "c") != request_hash("a", "bc")


# -- lookup, remember, replay ------------------------------------------------------------------------------
def test_an_unknown_key_finds_nothing(db: Database, client: str, clock: FixedClock) -> None:
    assert _lookup(db, client, "k1", "f1", clock) is None


def test_a_repeat_replays_the_first_response(db: Database, client: str, clock: FixedClock) -> None:
    """Status, headers and body come back exactly as first stored."""
    _remember(db, client, "k1", "f1", clock)
    clock.advance(60)
    assert _lookup(db, client, "k1", "f1", clock) == FIRST


def test_keys_belong_to_their_client(db: Database, client: str, clock: FixedClock) -> None:
    """Another client's identical key is another key."""
    _remember(db, client, "k1", "f1", clock)
    assert _lookup(db, f"{client}-other", "k1", "f1", clock) is None


def test_the_same_key_with_another_request_is_a_business_rule_violation(
    db: Database, client: str, clock: FixedClock
) -> None:
    """The same key with a different body → 422 business-rule; the stored response stays."""
    _remember(db, client, "k1", "f1", clock)
    with pytest.raises(FhirError) as refused:
        _lookup(db, client, "k1", "another body", clock)
    assert (refused.value.code, refused.value.status) == ("business-rule", 422)
    assert _lookup(db, client, "k1", "f1", clock) == FIRST


def test_a_second_first_use_of_a_key_is_a_conflict(db: Database, client: str, clock: FixedClock) -> None:
    """Remembering a live key again (two concurrent first uses) → 409 conflict; the first response stays."""
    _remember(db, client, "k1", "f1", clock)
    with pytest.raises(FhirError) as refused:
        _remember(db, client, "k1", "f1", clock, Remembered(201, {}, b"second"))
    assert (refused.value.code, refused.value.status) == ("conflict", 409)
    assert _lookup(db, client, "k1", "f1", clock) == FIRST


def test_the_conflict_leaves_the_transaction_usable(db: Database, client: str, clock: FixedClock) -> None:
    """The losing insert runs in a savepoint: the rest of the request's transaction can still commit."""
    _remember(db, client, "k1", "f1", clock)
    with db.transaction(write=True) as conn:
        with pytest.raises(FhirError):
            remember(conn, client, "k1", "f1", clock.now_us(), FIRST)
        remember(conn, client, "k2", "f2", clock.now_us(), FIRST)
    assert _lookup(db, client, "k2", "f2", clock) == FIRST


# -- 24 hours --------------------------------------------------------------------------------------------
def test_a_key_is_kept_for_24_hours(db: Database, client: str, clock: FixedClock) -> None:
    """Up to 24 h after the first use the response is replayed, and a different body is still refused."""
    _remember(db, client, "k1", "f1", clock)
    clock.advance(DAY_S - 1)
    assert _lookup(db, client, "k1", "f1", clock) == FIRST
    with pytest.raises(FhirError):
        _lookup(db, client, "k1", "f2", clock)


def test_after_24_hours_a_key_is_new_again(db: Database, client: str, clock: FixedClock) -> None:
    """Once 24 h have passed the key finds nothing, whatever the body, and may be used afresh."""
    _remember(db, client, "k1", "f1", clock)
    clock.advance(DAY_S + 0.000001)
    assert _lookup(db, client, "k1", "f1", clock) is None
    assert _lookup(db, client, "k1", "f2", clock) is None
    second = Remembered(204, {}, b"")
    _remember(db, client, "k1", "f2", clock, second)
    assert _lookup(db, client, "k1", "f2", clock) == second


def _stored_keys(db: Database, client: str) -> set[str]:
    t = schema.idempotency
    with db.transaction() as conn:
        return set(conn.execute(select(t.c.key).where(t.c.client_id == client)).scalars())


def test_sweep_forgets_keys_older_than_24_hours_only(db: Database, client: str, clock: FixedClock) -> None:
    """The sweep deletes expired keys and keeps the live ones."""
    _remember(db, client, "old", "f", clock)
    clock.advance(DAY_S / 2)
    _remember(db, client, "young", "f", clock)
    clock.advance(DAY_S / 2 + 1)
    with db.transaction(write=True) as conn:
        forgotten = idempotency.sweep(conn, clock.now_us())
    assert forgotten >= 1
    assert _stored_keys(db, client) == {"young"}
