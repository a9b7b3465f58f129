"""Engines and transactions: one transaction per request, the same behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event
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


# Requests run on at most this many threads per process, each holding one pooled connection: a
# connection is never opened per request (PostgreSQL forks a backend for each), and a thread never
# waits for one. Several processes share one server and its max_connections (100).
CONNECTIONS_PER_PROCESS = 12


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
    return create_engine(url, pool_size=pool_size, max_overflow=4, pool_pre_ping=True, pool_timeout=60)


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

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url)
        feed.follow_savepoints(self.engine)
        appends.follow(self.engine)
        self.sqlite = is_sqlite(self.url)

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(write=write)
            feed.begin(conn)
            appends.forget(conn)
            generations.forget(conn)
            try:
                with conn.begin():
                    yield conn
                    appends.flush(conn)
                    feed.resolve(conn)  # before the locks below: other writers wait for them
                    generations.advance(conn)
                    # The feed position is stamped last, just before the commit (DESIGN rule 7).
                    feed.stamp(conn)
            finally:
                feed.forget(conn)
                appends.forget(conn)
                generations.forget(conn)

    def dispose(self) -> None:
        self.engine.dispose()
