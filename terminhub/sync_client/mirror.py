"""The practice's copy of its hub data: one SQLite file holding the resources (each with its version),
the feed position and whether the initial sync finished, changed only in transactions, so that a crash
leaves either a whole page applied with its position or nothing of it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from terminhub.sync_client.bundle import Key, key_of, version_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (type, id)
);
CREATE TABLE IF NOT EXISTS state (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    position TEXT,
    initial_complete INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO state (singleton, position, initial_complete) VALUES (1, NULL, 0);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded TEXT NOT NULL,
    target TEXT NOT NULL,
    activity TEXT NOT NULL,
    effect TEXT NOT NULL
);
"""
JOURNAL_KEEP = 100_000  # processed Provenances kept for inspection; older ones are dropped


@dataclass(frozen=True)
class State:
    """Where the feed resumes (`recorded` of the last Provenance processed, or the initial start
    instant) and whether the initial sync finished; without it the next run syncs from scratch."""

    position: str | None
    initial_complete: bool


@dataclass(frozen=True)
class JournalEntry:
    """One Provenance as processed: its `recorded`, its versioned target, its activity and what it did
    to the mirror (`stored vN`, `removed vN`, `skipped`, `ignored`)."""

    recorded: str
    target: str
    activity: str
    effect: str


class Writer:
    """The changes of one transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def version(self, key: Key) -> int | None:
        row = self._db.execute("SELECT version_id FROM resources WHERE type = ? AND id = ?", key).fetchone()
        return None if row is None else row[0]

    def store_if_newer(self, resource: dict) -> bool:
        """Store `resource` unless the mirror holds this or a later version: never backwards."""
        key, version = key_of(resource), version_of(resource)
        held = self.version(key)
        if held is not None and held >= version:
            return False
        content = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
        self._db.execute(
            "INSERT INTO resources (type, id, version_id, content) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (type, id) DO UPDATE SET version_id = excluded.version_id, "
            "content = excluded.content",
            (*key, version, content),
        )
        return True

    def remove(self, key: Key) -> bool:
        """Remove a resource and what was in the practice's scope only through it: a Schedule's Slots,
        a Slot's Appointments. They leave the scope with it, without a change of their own."""
        removed = self._db.execute("DELETE FROM resources WHERE type = ? AND id = ?", key).rowcount > 0
        for dependant in self._dependants(key):
            self.remove(dependant)
        return removed

    def _dependants(self, key: Key) -> list[Key]:
        reference = f"{key[0]}/{key[1]}"
        if key[0] == "Schedule":
            query = (
                "SELECT type, id FROM resources WHERE type = 'Slot' "
                "AND json_extract(content, '$.schedule.reference') = ?"
            )
        elif key[0] == "Slot":
            query = (
                "SELECT DISTINCT r.type, r.id FROM resources r, json_each(r.content, '$.slot') s "
                "WHERE r.type = 'Appointment' AND json_extract(s.value, '$.reference') = ?"
            )
        else:
            return []
        return [(t, i) for t, i in self._db.execute(query, (reference,))]

    def set_position(self, position: str) -> None:
        self._db.execute("UPDATE state SET position = ? WHERE singleton = 1", (position,))

    def log(self, entry: JournalEntry) -> None:
        """Journal a processed Provenance; only the last JOURNAL_KEEP entries are kept."""
        cursor = self._db.execute(
            "INSERT INTO journal (recorded, target, activity, effect) VALUES (?, ?, ?, ?)",
            (entry.recorded, entry.target, entry.activity, entry.effect),
        )
        self._db.execute("DELETE FROM journal WHERE seq <= ?", ((cursor.lastrowid or 0) - JOURNAL_KEEP,))

    def start_initial(self) -> None:
        """Forget everything: the initial sync fills an empty mirror."""
        self._db.execute("DELETE FROM resources")
        self._db.execute("DELETE FROM journal")
        self._db.execute("UPDATE state SET position = NULL, initial_complete = 0 WHERE singleton = 1")

    def finish_initial(self, start: str) -> None:
        """The initial sync is whole; the feed resumes at `start`, taken before it began."""
        self._db.execute("UPDATE state SET position = ?, initial_complete = 1 WHERE singleton = 1", (start,))


class Mirror:
    """The mirror file. Reads see committed data; writes go through `transaction()`."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Writer]:
        """All or nothing: committed when the block ends, rolled back when it raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield Writer(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def state(self) -> State:
        position, complete = self._db.execute(
            "SELECT position, initial_complete FROM state WHERE singleton = 1"
        ).fetchone()
        return State(position, bool(complete))

    def resources(self, resource_type: str | None = None) -> dict[Key, dict]:
        """The mirrored resources by (type, id), of one type or all."""
        query, args = "SELECT type, id, content FROM resources", ()
        if resource_type:
            query, args = query + " WHERE type = ?", (resource_type,)
        return {(t, i): json.loads(c) for t, i, c in self._db.execute(query, args)}

    def versions(self) -> dict[Key, int]:
        return {(t, i): v for t, i, v in self._db.execute("SELECT type, id, version_id FROM resources")}

    def journal(self) -> list[JournalEntry]:
        rows = self._db.execute("SELECT recorded, target, activity, effect FROM journal ORDER BY seq")
        return [JournalEntry(*row) for row in rows]
