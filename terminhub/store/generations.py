"""Generation numbers: when a process may keep using what it cached of a kind of data.

A transaction that changes the directory (Schedules, the PractitionerRoles, HealthcareServices,
Locations and Organizations around them) notes it; as it ends it adds one to the directory's number, in
the same transaction, so the new number becomes visible exactly when the change does. A reader reads the
number before it reads the data: a cache filled after reading number n holds data at least as new as n.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select, update

from terminhub.store import hot_reads, schema

DIRECTORY = "directory"
NAMES = (DIRECTORY,)
DIRECTORY_TYPES = frozenset({"Schedule", "PractitionerRole", "HealthcareService", "Location", "Organization"})
G = schema.generations
_NOTED = "terminhub.generations.noted"
_READ = "terminhub.generations.read"  # the numbers this transaction has read, read once


def note_write(conn: Connection, resource_type: str) -> None:
    """Remember that this transaction changes the kind of data `resource_type` belongs to."""
    if resource_type in DIRECTORY_TYPES:
        conn.info.setdefault(_NOTED, set()).add(DIRECTORY)


def changes(conn: Connection, name: str) -> bool:
    """Whether this transaction has changed `name` (its own reads then must not fill a shared cache)."""
    return name in (conn.info.get(_NOTED) or ())


def advance(conn: Connection) -> None:
    """Count up what this transaction changed; just before the commit, so the row lock is held briefly."""
    for name in sorted(conn.info.pop(_NOTED, None) or ()):
        conn.execute(update(G).where(G.c.name == name).values(n=G.c.n + 1))


def forget(conn: Connection) -> None:
    conn.info.pop(_NOTED, None)
    conn.info.pop(_READ, None)


def current(conn: Connection, name: str) -> int | None:
    """The number as this transaction first saw it; None where the database has none (no caching then).
    Read once per transaction: what a transaction read after it may only be newer."""
    read = conn.info.setdefault(_READ, {})
    if name not in read:
        found = hot_reads.rows(conn, _NUMBER, {"name": name}, flush=False)
        read[name] = found[0][0] if found else None
    return read[name]


_NUMBER = select(G.c.n).where(G.c.name == bindparam("name"))  # read by every search: prepared
