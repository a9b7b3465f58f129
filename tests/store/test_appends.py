"""Rows a transaction only adds: few or many, they are all written at the commit, with their columns'
defaults; a resource another transaction created meanwhile refuses the whole transaction; a claim row
already there is kept."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from terminhub.fhir.outcome import FhirError
from terminhub.store import appends, schema
from terminhub.store.database import Database
from tests.support.unit_db import BACKEND_PARAMS, migrated_database


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("appends")) as database:
        yield database


def _resource(kind: str, resource_id: str) -> dict:
    return {"type": kind, "id": resource_id, "version_id": 1, "last_updated": 1, "content": b"{}"}


def _first_version(kind: str, resource_id: str) -> dict:
    return {
        "type": kind,
        "id": resource_id,
        "version_id": 1,
        "last_updated": 1,
        "method": "POST",
        "content": b"{}",
    }


def _created(conn, kind: str, resource_id: str) -> None:  # noqa: ANN001 - a Connection
    """A new resource's rows as the repository adds them: the resource and its first version."""
    appends.add(conn, schema.resources, _resource(kind, resource_id))
    appends.add(conn, schema.resource_versions, _first_version(kind, resource_id))


def _owner(bsnr: str, recorded: int) -> dict:
    return {"bsnr": bsnr, "recorded": recorded, "provenance_id": f"p-{bsnr}-{recorded}"}


def _count(db: Database, table, *where) -> int:
    with db.transaction() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


@pytest.mark.parametrize(
    "rows", [1, appends.COPY_FROM_ROWS - 1, appends.COPY_FROM_ROWS, 3 * appends.COPY_FROM_ROWS]
)
def test_few_or_many_rows_of_several_tables_are_all_written(db: Database, rows: int) -> None:
    kind = f"Few{rows}"
    bsnr = f"9{rows:08d}"
    with db.transaction(write=True) as conn:
        for n in range(rows):
            appends.add(conn, schema.resources, _resource(kind, str(n)))
            appends.add(conn, schema.feed_owners, _owner(bsnr, n))
    r = schema.resources
    assert _count(db, r, r.c.type == kind) == rows
    assert _count(db, schema.feed_owners, schema.feed_owners.c.bsnr == bsnr) == rows
    # "deleted" is left out of every row: its column default is written
    assert _count(db, r, r.c.type == kind, r.c.deleted.is_(False)) == rows


@pytest.mark.parametrize("rows", [2, 3 * appends.COPY_FROM_ROWS])
def test_rows_that_name_a_column_and_rows_that_leave_it_out_go_in_together(db: Database, rows: int) -> None:
    kind = f"Mixed{rows}"
    with db.transaction(write=True) as conn:
        for n in range(rows):
            row = _resource(kind, str(n))
            appends.add(conn, schema.resources, row | {"deleted": True} if n % 2 else row)
    r = schema.resources
    assert _count(db, r, r.c.type == kind, r.c.deleted.is_(True)) == rows // 2
    assert _count(db, r, r.c.type == kind, r.c.deleted.is_(False)) == rows - rows // 2


@pytest.mark.parametrize("rows", [1, 3 * appends.COPY_FROM_ROWS])
def test_a_resource_created_meanwhile_refuses_the_whole_transaction(db: Database, rows: int) -> None:
    kind = f"Meanwhile{rows}"
    bsnr = f"8{rows:08d}"
    with db.transaction(write=True) as conn:
        _created(conn, kind, "taken")
    with pytest.raises(FhirError) as refused, db.transaction(write=True) as conn:
        for n in range(rows):
            _created(conn, kind, f"new-{n}")
            appends.add(conn, schema.feed_owners, _owner(bsnr, n))
        _created(conn, kind, "taken")
    assert (refused.value.code, refused.value.status) == ("version-conflict", 412)
    assert f"{kind}/taken" in refused.value.text
    r = schema.resources
    assert _count(db, r, r.c.type == kind) == 1
    assert _count(db, schema.resource_versions, schema.resource_versions.c.type == kind) == 1
    assert _count(db, schema.feed_owners, schema.feed_owners.c.bsnr == bsnr) == 0


def test_a_claim_row_already_there_is_kept(db: Database) -> None:
    c = schema.slot_claims
    with db.transaction(write=True) as conn:
        appends.add(conn, c, {"slot_id": "claimed", "base_status": "free", "appointment_id": "a1"})
    with db.transaction(write=True) as conn:
        appends.add(conn, c, {"slot_id": "claimed", "base_status": "free"})
        appends.add(conn, c, {"slot_id": "unclaimed", "base_status": "free"})
    with db.transaction() as conn:
        kept = dict(conn.execute(select(c.c.slot_id, c.c.appointment_id)).all())
    assert kept == {"claimed": "a1", "unclaimed": None}


def test_the_last_flush_may_carry_the_commit(db: Database) -> None:
    """On PostgreSQL the COMMIT goes with the last rows; the transaction then ends as any other."""
    with db.transaction(write=True) as conn:
        _created(conn, "LastFlush", "one")
        appends.add(conn, schema.feed_owners, _owner("700000001", 1))
        committed = appends.flush(conn, then_commit=True)
    assert committed is (not db.sqlite)
    r = schema.resources
    assert _count(db, r, r.c.type == "LastFlush") == 1
    assert _count(db, schema.feed_owners, schema.feed_owners.c.bsnr == "700000001") == 1


def test_a_resource_created_meanwhile_stops_the_commit_that_goes_with_it(db: Database) -> None:
    with db.transaction(write=True) as conn:
        _created(conn, "LastFlushTaken", "taken")
    with pytest.raises(FhirError) as refused, db.transaction(write=True) as conn:
        _created(conn, "LastFlushTaken", "new")
        appends.add(conn, schema.feed_owners, _owner("700000002", 1))
        _created(conn, "LastFlushTaken", "taken")
        appends.flush(conn, then_commit=True)
    assert (refused.value.code, refused.value.status) == ("version-conflict", 412)
    assert "LastFlushTaken/taken" in refused.value.text
    r = schema.resources
    assert _count(db, r, r.c.type == "LastFlushTaken") == 1
    assert _count(db, schema.feed_owners, schema.feed_owners.c.bsnr == "700000002") == 0


def test_a_statement_on_other_tables_leaves_the_rows_waiting(db: Database) -> None:
    """Only a statement that names a table with waiting rows sends them first: each flush is a round trip."""
    with db.transaction(write=True) as conn:
        appends.add(conn, schema.feed_owners, _owner("700000003", 1))
        conn.execute(select(func.count()).select_from(schema.resources)).scalar_one()
        assert appends.waiting(conn) == 1
        owners = schema.feed_owners
        conn.execute(
            select(func.count()).select_from(owners).where(owners.c.bsnr == "700000003")
        ).scalar_one()
        assert appends.waiting(conn) == 0


@pytest.mark.parametrize("rows", [1, 3 * appends.COPY_FROM_ROWS])
def test_a_resource_created_meanwhile_refuses_only_the_savepoint_that_flushed_it(
    db: Database, rows: int
) -> None:
    """A batch Bundle flushes each entry inside its savepoint: the conflict is that entry's alone, and the
    transaction goes on with the next entry."""
    kind = f"Savepoint{rows}"
    with db.transaction(write=True) as conn:
        _created(conn, kind, "taken")
    with db.transaction(write=True) as conn:
        with pytest.raises(FhirError) as refused, conn.begin_nested():
            for n in range(rows):
                _created(conn, kind, f"refused-{n}")
            _created(conn, kind, "taken")
            appends.flush(conn)
        assert refused.value.code == "version-conflict"
        with conn.begin_nested():
            _created(conn, kind, "next")
            appends.flush(conn)
    r = schema.resources
    with db.transaction() as conn:
        kept = set(conn.execute(select(r.c.id).where(r.c.type == kind)).scalars())
    assert kept == {"taken", "next"}


def test_a_statement_run_without_flush_leaves_the_rows_waiting(db: Database) -> None:
    """Its caller knows it needs none of them (the codings of a Schedule indexed in this transaction)."""
    with db.transaction(write=True) as conn:
        _created(conn, "WithoutFlush", "one")
        query = select(func.count()).select_from(schema.resources)
        conn.execute(query, execution_options=appends.WITHOUT_FLUSH).scalar_one()
        assert appends.waiting(conn) == 2
        conn.execute(query).scalar_one()
        assert appends.waiting(conn) == 0


def test_only_a_resources_own_waiting_rows_make_a_statement_about_it_flush(db: Database) -> None:
    """A read or write of one resource's row or index rows finds what other resources wait with unchanged:
    it runs at once, and the rows keep waiting for the transaction's last flush."""
    with db.transaction(write=True) as conn:
        _created(conn, "Waiting", "one")
        row = dict.fromkeys(("system", "text", "lo", "hi", "ref_type", "ref_id"))
        row |= {"type": "Waiting", "id": "one", "param": "p", "code": "x"}
        appends.add(conn, schema.search_index, row)
        assert appends.resource_waits(conn, "Waiting", "one") and appends.index_waits(conn, "Waiting", "one")
        assert not appends.resource_waits(conn, "Waiting", "two")
        assert not appends.index_waits(conn, "Other", "one")
        appends.flush(conn)
        assert not appends.resource_waits(conn, "Waiting", "one")
        assert not appends.index_waits(conn, "Waiting", "one")


def test_waiting_statements_make_every_statement_flush(db: Database) -> None:
    with db.transaction(write=True) as conn:
        appends.later(conn, select(func.count()).select_from(schema.resources), {})
        assert appends.resource_waits(conn, "Any", "thing") and appends.index_waits(conn, "Any", "thing")
        appends.forget(conn)
        assert not appends.resource_waits(conn, "Any", "thing")


def test_a_rolled_back_savepoint_takes_its_rows_from_those_waiting(db: Database) -> None:
    with db.transaction(write=True) as conn:
        with pytest.raises(RuntimeError), conn.begin_nested():
            _created(conn, "Dropped", "one")
            assert appends.resource_waits(conn, "Dropped", "one")
            raise RuntimeError
        assert not appends.resource_waits(conn, "Dropped", "one")


def _value(column, tag: str, n: int) -> object:  # noqa: ANN001 - a Column
    """A value of the column's kind, distinct per row."""
    kind = column.type.python_type
    if kind is bool:
        return n % 2 == 0
    if kind is int:
        return n
    if kind is float:
        return n + 0.25
    if kind is bytes:
        return b'{"n": %d}' % n
    return f"{tag}{n}"


@pytest.mark.parametrize("table", appends.TABLES, ids=lambda t: t.name)
def test_many_rows_of_every_kind_of_column_go_in_as_written(db: Database, table) -> None:  # noqa: ANN001
    """Enough rows for PostgreSQL's COPY (binary: each value in its column's own type) on every table."""
    tag = f"k{table.name[:3]}"
    rows = [{c.name: _value(c, tag, n) for c in table.columns} for n in range(appends.COPY_FROM_ROWS)]
    with db.transaction(write=True) as conn:
        for row in rows:
            appends.add(conn, table, row)
    first_text = next(c for c in table.columns if c.type.python_type is str)
    with db.transaction() as conn:
        found = conn.execute(select(table).where(first_text.like(f"{tag}%"))).all()
    assert sorted(tuple(r) for r in found) == sorted(tuple(row.values()) for row in rows)
