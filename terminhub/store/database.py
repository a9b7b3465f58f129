"""Engines and transactions: one transaction per request, the same behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.pool import NullPool

from terminhub.store import appends, feed, generations


def normalise_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and use psycopg 3 for them."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


# Requests run on at most this many threads per process (`TERMINHUB_REQUEST_THREADS`), each holding one
# pooled connection: a connection is never opened per request (PostgreSQL forks a backend for each), and a
# thread never waits for one. Several processes share one server and its max_connections (100). Two
# threads keep a process busy while one waits for the database; more only contend for the interpreter's
# lock: on two cores with two processes, 12 threads served 142-144 code searches/s and 93-95 bookings/s,
# 2 threads 163-192 and 113-125.
CONNECTIONS_PER_PROCESS = 2


def make_engine(url: str, *, pool_size: int = CONNECTIONS_PER_PROCESS) -> Engine:
    """Create the engine; SQLite gets WAL, a busy timeout and explicit BEGIN (IMMEDIATE for writers)."""
    url = normalise_url(url)
    if is_sqlite(url):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(
            url, poolclass=NullPool, connect_args={"timeout": 30, "check_same_thread": False}
        )
        _configure_sqlite(engine)
        return engine
    # The overflow serves the rare request that opens a second connection (a refusal's audit).
    engine = create_engine(url, pool_size=pool_size, max_overflow=4, pool_timeout=60)
    _ping_when_idle(engine)
    return engine


# A pooled connection unused for this long is tested before it is handed out (the server may have
# restarted or dropped it meanwhile); one in steady use is not: a test costs a round trip, as much as a
# read by id itself.
PING_AFTER_IDLE_S = 5.0
_CHECKED_IN = "terminhub.checked_in"


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling for idle connections only (SQLAlchemy's pool_pre_ping pings at
    every checkout). A failed test discards the connection and the pool hands out another."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection, record) -> None:  # noqa: ANN001
        if record is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy) -> None:  # noqa: ANN001
        since = record.info.get(_CHECKED_IN)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return  # a new connection, or one in steady use
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise exc.DisconnectionError(f"a pooled connection failed its test: {error}") from error


READ_ONLY = "terminhub.read_only"


class WriteNeeded(Exception):  # noqa: N818 - a signal, not an error
    """A request run as a read found that it has to write after all; it runs again as a writer."""


def is_writer(conn: Connection) -> bool:
    """Whether this unit of work was opened to write (`Database.transaction(write=True)`)."""
    return bool(conn.get_execution_options().get("write"))


_WRITES = ("INSERT", "UPDATE", "DELETE", "COPY", "MERGE")


def _refuse_writes_in_reads(engine: Engine) -> None:
    """A read transaction runs without BEGIN and COMMIT (each statement on its own, which under READ
    COMMITTED sees what a transaction's statement would): a write there would not be atomic, so none runs."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, _cursor, statement: str, _params, _context, _many: bool) -> None:  # noqa: ANN001
        if conn.info.get(READ_ONLY) and statement.lstrip()[:6].upper().startswith(_WRITES):
            raise RuntimeError(f"a write in a read transaction: {statement[:60]}")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock at BEGIN, so two writers never deadlock upgrading read locks.
        immediate = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """The engine and the unit of work: `with db.transaction(write=True) as conn: ...`."""

    def __init__(self, url: str, *, pool_size: int = CONNECTIONS_PER_PROCESS) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, pool_size=pool_size)
        feed.follow_savepoints(self.engine)
        appends.follow(self.engine)
        self.sqlite = is_sqlite(self.url)
        if not self.sqlite:
            _refuse_writes_in_reads(self.engine)

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One unit of work. On PostgreSQL a read (`write=False`) runs in autocommit: BEGIN and COMMIT
        would be two of its three round trips."""
        with self.engine.connect() as conn:
            conn.execution_options(write=write)
            read_only = not write and not self.sqlite
            if read_only:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.info[READ_ONLY] = read_only
            feed.begin(conn)
            appends.forget(conn)
            generations.forget(conn)
            try:
                with conn.begin():
                    yield conn
                    appends.flush(conn)
                    feed.resolve(conn)  # before the locks below: other writers wait for them
                    generations.advance(conn)
                    # The feed position is stamped last, just before the commit (DESIGN rule 7); on
                    # PostgreSQL the COMMIT goes with its rows, and SQLAlchemy's finds the work done.
                    feed.stamp(conn)
            finally:
                conn.info.pop(READ_ONLY, None)
                feed.forget(conn)
                appends.forget(conn)
                generations.forget(conn)

    def dispose(self) -> None:
        self.engine.dispose()
