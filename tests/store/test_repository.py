"""The one write path: `Repository.save` and `Repository.delete` stamp versions, keep history, refresh the
index and write the outbox row, in the caller's transaction (DESIGN rule 3)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import select

from terminhub.clock import FixedClock, instant, to_us
from terminhub.fhir.outcome import FhirError
from terminhub.store import schema
from terminhub.store.database import Database
from terminhub.store.repository import Actor, Change, Repository
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)
ADMIN = Actor("th-admin", "admin", "Betrieb")
PRACTICE = Actor("th-practice", "practice", "Praxis")


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("repository")) as database:
        yield database


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


class Store:
    """A repository per call, each in its own committed transaction, as requests use it."""

    def __init__(self, db: Database, clock: FixedClock) -> None:
        self.db = db
        self.clock = clock
        self.last: Repository | None = None

    def __call__(self, method: str, *args: object, actor: Actor = ADMIN, **kwargs: object):  # noqa: ANN204
        with self.db.transaction(write=True) as conn:
            self.last = Repository(conn, self.clock, BERLIN, actor)
            return getattr(self.last, method)(*args, **kwargs)

    def rows(self, table, **where: object) -> list:  # noqa: ANN001
        with self.db.transaction() as conn:
            query = select(table).where(*[table.c[k] == v for k, v in where.items()])
            return list(conn.execute(query))


@pytest.fixture
def store(db: Database, clock: FixedClock) -> Store:
    return Store(db, clock)


def patient(family: str = "Muster", **elements: object) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}], **elements}


# -- save ------------------------------------------------------------------------------------------------
def test_create_stamps_version_1_and_last_updated(store: Store, clock: FixedClock) -> None:
    """A new resource gets an id, version 1 and `meta.lastUpdated` = the clock's now."""
    stored = store("save", "Patient", patient())
    served = stored.resource()
    assert stored.version_id == 1 and stored.method == "POST" and not stored.deleted
    assert stored.last_updated == clock.now_us() == to_us(START)
    assert served["id"] == stored.id and uuid.UUID(stored.id)
    assert served["meta"] == {"versionId": "1", "lastUpdated": "2030-03-04T10:00:00.000000Z"}
    assert stored.etag == 'W/"1"'


def test_served_bytes_lead_with_type_id_and_meta(store: Store) -> None:
    """The stored JSON starts with resourceType, id and meta, then the elements as sent."""
    stored = store("save", "Patient", patient(gender="female", birthDate="1970-01-01"))
    assert list(orjson.loads(stored.content)) == ["resourceType", "id", "meta", "name", "gender", "birthDate"]


def test_meta_elements_sent_are_kept_but_version_and_time_are_the_servers(store: Store) -> None:
    """Profiles and tags survive; versionId and lastUpdated from the client are overwritten."""
    meta = {"versionId": "99", "lastUpdated": "2000-01-01T00:00:00Z", "profile": ["urn:example:profile"]}
    served = store("save", "Patient", patient(meta=meta)).resource()
    assert served["meta"]["profile"] == ["urn:example:profile"]
    assert served["meta"]["versionId"] == "1"
    assert served["meta"]["lastUpdated"] == instant(to_us(START))


def test_create_with_a_chosen_id(store: Store) -> None:
    """Admin's update-as-create: the id given is the id stored."""
    chosen = f"chosen-{uuid.uuid4().hex[:12]}"
    assert store("save", "Patient", patient(), resource_id=chosen).id == chosen
    assert store("get", "Patient", chosen).version_id == 1


def test_update_increments_the_version(store: Store, clock: FixedClock) -> None:
    """Each save of an existing resource is the next version, stamped with the time of that save."""
    first = store("save", "Patient", patient())
    clock.advance(90)
    second = store("save", "Patient", patient("Neu"), resource_id=first.id)
    assert (second.version_id, second.method) == (2, "PUT")
    assert second.last_updated == first.last_updated + 90_000_000
    assert second.resource()["meta"]["versionId"] == "2"
    assert store("get", "Patient", first.id).resource()["name"] == [{"family": "Neu"}]


def test_last_updated_increases_even_when_the_clock_does_not(store: Store) -> None:
    """Two saves in the same microsecond (or with the clock set back) still get increasing times."""
    first = store("save", "Patient", patient())
    second = store("save", "Patient", patient(), resource_id=first.id)
    store.clock.advance(-3600)
    third = store("save", "Patient", patient(), resource_id=first.id)
    assert first.last_updated < second.last_updated < third.last_updated


def test_history_keeps_every_version(store: Store, clock: FixedClock) -> None:
    """Every version stays readable by vread, with its own content and method."""
    first = store("save", "Patient", patient("Eins"))
    clock.advance(1)
    store("save", "Patient", patient("Zwei"), resource_id=first.id)
    old = store("vread", "Patient", first.id, 1)
    new = store("vread", "Patient", first.id, 2)
    assert old.resource()["name"] == [{"family": "Eins"}] and old.method == "POST"
    assert new.resource()["name"] == [{"family": "Zwei"}] and new.method == "PUT"
    assert store("vread", "Patient", first.id, 3) is None
    versions = store.rows(schema.resource_versions, type="Patient", id=first.id)
    assert sorted(v.version_id for v in versions) == [1, 2]


def test_created_by_stays_with_the_creator(store: Store) -> None:
    """`created_by` names the client that created the resource, not the last writer."""
    first = store("save", "Patient", patient(), actor=PRACTICE)
    store("save", "Patient", patient("Neu"), resource_id=first.id, actor=ADMIN)
    assert store("get", "Patient", first.id).created_by == PRACTICE.client_id


def test_changes_are_listed_for_the_request(store: Store) -> None:
    """The repository lists what it changed, for the request's AuditEvent."""
    stored = store("save", "Patient", patient())
    assert store.last.changes == [Change("Patient", stored.id, 1, "POST")]


# -- If-Match and must_exist ---------------------------------------------------------------------------
def test_if_match_with_the_current_version_saves(store: Store) -> None:
    first = store("save", "Patient", patient())
    assert store("save", "Patient", patient("Neu"), resource_id=first.id, if_match=1).version_id == 2


def test_if_match_with_another_version_is_a_conflict_and_changes_nothing(store: Store) -> None:
    """If-Match naming a version that is not the current one → 412 version-conflict, nothing written."""
    first = store("save", "Patient", patient())
    store("save", "Patient", patient("Zwei"), resource_id=first.id)
    with pytest.raises(FhirError) as refused:
        store("save", "Patient", patient("Drei"), resource_id=first.id, if_match=1)
    assert (refused.value.code, refused.value.status) == ("version-conflict", 412)
    current = store("get", "Patient", first.id)
    assert current.version_id == 2 and current.resource()["name"] == [{"family": "Zwei"}]


def test_if_match_on_a_missing_resource_is_a_conflict(store: Store) -> None:
    with pytest.raises(FhirError) as refused:
        store("save", "Patient", patient(), resource_id=f"missing-{uuid.uuid4().hex[:8]}", if_match=1)
    assert refused.value.code == "version-conflict"


def test_must_exist_refuses_to_create(store: Store) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FhirError) as refused:
        store("save", "Patient", patient(), resource_id=missing, must_exist=True)
    assert refused.value.code == "not-found"
    assert store("get", "Patient", missing) is None


# -- delete ----------------------------------------------------------------------------------------------
def test_delete_writes_an_empty_version(store: Store, clock: FixedClock) -> None:
    """Delete is a new version without content; the current row is marked deleted; history keeps it."""
    first = store("save", "Patient", patient())
    clock.advance(5)
    gone = store("delete", "Patient", first.id)
    assert (gone.version_id, gone.deleted, gone.method, gone.content) == (2, True, "DELETE", None)
    current = store("get", "Patient", first.id)
    assert current.deleted and current.content is None and current.version_id == 2
    assert store("vread", "Patient", first.id, 2).deleted
    assert store("vread", "Patient", first.id, 1).resource()["name"] == [{"family": "Muster"}]
    assert store("get_many", "Patient", [first.id]) == []


def test_deleting_twice_or_nothing_changes_nothing(store: Store) -> None:
    first = store("save", "Patient", patient())
    store("delete", "Patient", first.id)
    assert store("delete", "Patient", first.id) is None
    assert store("delete", "Patient", f"missing-{uuid.uuid4().hex[:8]}") is None
    assert store("get", "Patient", first.id).version_id == 2


def test_saving_after_delete_recreates_with_the_next_version(store: Store) -> None:
    """A deleted resource written again continues its version count, as a create by the new writer."""
    first = store("save", "Patient", patient(), actor=PRACTICE)
    store("delete", "Patient", first.id)
    again = store("save", "Patient", patient("Wieder"), resource_id=first.id, actor=ADMIN)
    assert (again.version_id, again.method) == (3, "POST")
    assert store("get", "Patient", first.id).created_by == ADMIN.client_id


# -- the index -------------------------------------------------------------------------------------------
def _index(store: Store, resource_type: str, resource_id: str, param: str) -> set:
    rows = store.rows(schema.search_index, type=resource_type, id=resource_id, param=param)
    return {(r.system, r.code, r.text, r.lo, r.hi, r.ref_type, r.ref_id) for r in rows}


def test_index_rows_are_written_with_the_resource(store: Store) -> None:
    stored = store(
        "save",
        "Patient",
        patient("Müller", birthDate="1980-05-01", identifier=[{"system": "urn:x", "value": "42"}]),
    )
    assert {r[2] for r in _index(store, "Patient", stored.id, "family")} == {"muller"}
    assert {(r[0], r[1]) for r in _index(store, "Patient", stored.id, "identifier")} == {("urn:x", "42")}
    [(_, _, _, lo, hi, _, _)] = _index(store, "Patient", stored.id, "birthdate")
    day = (datetime(1980, 5, 1, tzinfo=BERLIN), datetime(1980, 5, 2, tzinfo=BERLIN))
    assert (lo, hi) == tuple(to_us(moment) for moment in day)


def test_index_rows_are_replaced_on_update(store: Store) -> None:
    """After an update the index holds the new values only."""
    stored = store("save", "Patient", patient("Alt"))
    store("save", "Patient", patient("Neu"), resource_id=stored.id)
    assert {r[2] for r in _index(store, "Patient", stored.id, "family")} == {"neu"}


def _all_index_rows(store: Store, resource_type: str, resource_id: str) -> list[tuple]:
    rows = store.rows(schema.search_index, type=resource_type, id=resource_id)
    return sorted((r.param, r.system, r.code, r.text, r.lo, r.hi, r.ref_type, r.ref_id) for r in rows)


def _offers(store: Store, slot_id: str) -> list[tuple]:
    return sorted(tuple(r)[1:5] for r in store.rows(schema.slot_offers, slot_id=slot_id))


def _slot(status: str, minutes: int = 0, code: str = "01", **extra: object) -> dict:
    start = to_us(START) + minutes * 60_000_000
    return {
        "resourceType": "Slot",
        "status": status,
        "specialty": [{"coding": [{"system": "urn:test:fg", "code": code}]}],
        "start": instant(start),
        "end": instant(start + 15 * 60_000_000),
        **extra,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"status": "busy"},
        {"status": "busy", "comment": "gebucht"},
        {"specialty": [{"coding": [{"system": "urn:test:fg", "code": "02"}]}]},
        {"start": instant(to_us(START) + 3_600_000_000), "end": instant(to_us(START) + 4_500_000_000)},
    ],
    ids=["status", "status-and-comment", "specialty", "start"],
)
def test_after_an_update_index_and_offer_rows_are_those_of_the_new_version(
    store: Store, change: dict
) -> None:
    """An update may write again only the rows of what changed; what is stored is always exactly what the
    new version, indexed afresh, would have."""
    slot = store("save", "Slot", _slot("free", comment="frei"))
    updated = store("save", "Slot", _slot("free", comment="frei") | change, resource_id=slot.id)
    fresh = store("save", "Slot", orjson.loads(updated.content))  # the same Slot under a new id
    assert _all_index_rows(store, "Slot", slot.id) == _all_index_rows(store, "Slot", fresh.id)
    assert _offers(store, slot.id) == _offers(store, fresh.id)
    assert _offers(store, slot.id)


def test_index_rows_are_removed_on_delete(store: Store) -> None:
    stored = store("save", "Patient", patient("Weg"))
    store("delete", "Patient", stored.id)
    assert store.rows(schema.search_index, type="Patient", id=stored.id) == []


def test_reference_rows_name_the_target(store: Store) -> None:
    stored = store(
        "save",
        "Slot",
        {
            "resourceType": "Slot",
            "schedule": {"reference": "Schedule/s-1"},
            "status": "free",
            "start": "2030-03-05T09:00:00+01:00",
            "end": "2030-03-05T09:15:00+01:00",
        },
    )
    [row] = _index(store, "Slot", stored.id, "schedule")
    assert (row[5], row[6]) == ("Schedule", "s-1")


def test_location_positions_follow_the_location(store: Store) -> None:
    """A Location's position is kept for `near`, replaced on update and removed on delete."""
    located = {"resourceType": "Location", "position": {"latitude": 52.52, "longitude": 13.40}}
    stored = store("save", "Location", located)
    assert [(p.latitude, p.longitude) for p in store.rows(schema.positions, id=stored.id)] == [(52.52, 13.40)]
    store(
        "save",
        "Location",
        {"resourceType": "Location", "position": {"latitude": 48.1, "longitude": 11.6}},
        resource_id=stored.id,
    )
    assert [(p.latitude, p.longitude) for p in store.rows(schema.positions, id=stored.id)] == [(48.1, 11.6)]
    store("delete", "Location", stored.id)
    assert store.rows(schema.positions, id=stored.id) == []


# -- the outbox ------------------------------------------------------------------------------------------
def test_every_change_writes_one_outbox_row(store: Store, clock: FixedClock) -> None:
    """Create, update and delete each leave one outbox row with the version, method, time and client."""
    stored = store("save", "Patient", patient(), actor=PRACTICE)
    clock.advance(1)
    store("save", "Patient", patient("Neu"), resource_id=stored.id, actor=PRACTICE)
    clock.advance(1)
    store("delete", "Patient", stored.id, actor=ADMIN)
    rows = store.rows(schema.outbox, resource_type="Patient", resource_id=stored.id)
    rows.sort(key=lambda r: r.seq)
    assert [(r.version_id, r.method, r.client_id) for r in rows] == [
        (1, "POST", PRACTICE.client_id),
        (2, "PUT", PRACTICE.client_id),
        (3, "DELETE", ADMIN.client_id),
    ]
    assert [r.recorded for r in rows] == [to_us(START), to_us(START) + 1_000_000, to_us(START) + 2_000_000]
    assert not any(r.delivered for r in rows)


@pytest.mark.parametrize("resource_type", ["AuditEvent", "Provenance"])
def test_change_records_themselves_have_no_outbox_row(store: Store, resource_type: str) -> None:
    """AuditEvents and Provenances are records of changes, not changes to announce."""
    stored = store("save", resource_type, {"resourceType": resource_type})
    assert store.rows(schema.outbox, resource_type=resource_type, resource_id=stored.id) == []


def test_nothing_is_kept_when_the_transaction_rolls_back(db: Database, clock: FixedClock) -> None:
    """Resource, history, index and outbox are written in the caller's transaction, so they go together."""
    marker = f"rollback-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError), db.transaction(write=True) as conn:
        Repository(conn, clock, BERLIN, ADMIN).save("Patient", patient(), resource_id=marker)
        raise RuntimeError("the request failed after the save")
    store = Store(db, clock)
    assert store("get", "Patient", marker) is None
    assert store.rows(schema.resource_versions, id=marker) == []
    assert store.rows(schema.search_index, id=marker) == []
    assert store.rows(schema.outbox, resource_id=marker) == []


def test_an_id_created_meanwhile_by_another_transaction_is_a_conflict_at_commit(
    db: Database, clock: FixedClock
) -> None:
    """New rows wait for the end of the transaction; the id taken meanwhile refuses the whole transaction."""
    if db.sqlite:
        pytest.skip("SQLite serialises writers: no other transaction can create the id meanwhile")
    marker = f"meanwhile-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FhirError) as refused, db.transaction(write=True) as conn:
        first = Repository(conn, clock, BERLIN, ADMIN)
        first.save("Patient", patient("Erste"), resource_id=marker, absent=True)
        Store(db, clock)("save", "Patient", patient("Zweite"), resource_id=marker)
    assert (refused.value.code, refused.value.status) == ("version-conflict", 412)
    store = Store(db, clock)
    assert orjson.loads(store("get", "Patient", marker).content)["name"] == [{"family": "Zweite"}]
    assert len(store.rows(schema.resource_versions, id=marker)) == 1
    assert len(store.rows(schema.search_index, id=marker, param="family")) == 1


def test_reads_in_the_same_transaction_see_rows_not_yet_sent(db: Database, clock: FixedClock) -> None:
    """Index rows wait for the commit, yet a search or read later in the transaction finds them."""
    marker = f"unsent-{uuid.uuid4().hex[:8]}"
    with db.transaction(write=True) as conn:
        repo = Repository(conn, clock, BERLIN, ADMIN)
        repo.save("Patient", patient(marker), resource_id=marker, absent=True)
        s = schema.search_index
        found = conn.execute(select(s.c.id).where(s.c.param == "family", s.c.code == marker)).all()
        assert [row.id for row in found] == [marker]
        assert repo.get("Patient", marker) is not None
