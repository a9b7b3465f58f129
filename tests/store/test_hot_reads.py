"""Many-row reads on the hot paths give the rows SQLAlchemy would, constants of the statement included,
and see the rows the transaction has not sent yet."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import bindparam, select

from terminhub.store import appends, hot_reads, schema
from terminhub.store.database import Database
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

R = schema.resources
# A constant type and a LIMIT: the statement names them as parameters of its own
FIRST_TWO = select(R.c.id).where(R.c.type == "HotRead", R.c.id > bindparam("after")).order_by(R.c.id).limit(2)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path_factory.mktemp("hot_reads")) as database:
        yield database


def _add(conn, resource_id: str, kind: str = "HotRead") -> None:  # noqa: ANN001 - a Connection
    row = {"type": kind, "id": resource_id, "version_id": 1, "last_updated": 1, "content": b"{}"}
    appends.add(conn, R, row)


def test_rows_waiting_in_the_transaction_are_read(db: Database) -> None:
    with db.transaction(write=True) as conn:
        for resource_id in ("a", "b", "c"):
            _add(conn, resource_id)
        _add(conn, "a", kind="Other")
        assert hot_reads.rows(conn, FIRST_TWO, {"after": ""}) == [("a",), ("b",)]
        assert hot_reads.rows(conn, FIRST_TWO, {"after": "b"}) == [("c",)]
        assert [tuple(r) for r in conn.execute(FIRST_TWO, {"after": "a"})] == [("b",), ("c",)]


def test_the_same_rows_as_through_sqlalchemy(db: Database) -> None:
    with db.transaction() as conn:
        for after in ("", "a", "c"):
            expected = [tuple(r) for r in conn.execute(FIRST_TWO, {"after": after})]
            assert hot_reads.rows(conn, FIRST_TWO, {"after": after}) == expected
