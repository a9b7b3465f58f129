"""The INSERT of the connection's dialect: PostgreSQL's and SQLite's can say what to do on a conflict."""

from __future__ import annotations

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert


def insert_for(conn: Connection, table: Table) -> PgInsert | SqliteInsert:
    return pg_insert(table) if conn.dialect.name == "postgresql" else sqlite_insert(table)
