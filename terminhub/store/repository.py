"""The resource repository and the one write path.

`Repository.save` and `Repository.delete` are the only places that change a resource: they stamp the
version, keep the history, refresh the index and write the outbox row in the caller's transaction, so
no face can forget a change record.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Connection, and_, bindparam, delete, select, update

from terminhub.clock import Clock, instant
from terminhub.fhir.outcome import FhirError
from terminhub.store import appends, feed, generations, hot_reads, schema, slot_offers
from terminhub.store.dialect import one_of
from terminhub.store.indexer import index_rows, params_on, position

NO_OUTBOX = frozenset({"AuditEvent", "Provenance", "OperationDefinition", "SearchParameter"})


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a registered client, or the hub itself (expiries)."""

    client_id: str
    role: str
    name: str


HUB = Actor("hub", "hub", "terminhub")


@dataclass(frozen=True)
class Stored:
    """One stored version: the served JSON bytes and the facts kept beside them."""

    type: str
    id: str
    version_id: int
    last_updated: int
    deleted: bool
    content: bytes | None
    created_by: str | None = None
    method: str = ""

    def resource(self) -> dict:
        return orjson.loads(self.content) if self.content else {}

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


@dataclass(frozen=True)
class Change:
    type: str
    id: str
    version_id: int
    method: str


@dataclass
class Repository:
    """Reads and writes resources on one connection (one transaction per request)."""

    conn: Connection
    clock: Clock
    tz: ZoneInfo
    actor: Actor
    changes: list[Change] = field(default_factory=list)
    absent: set[tuple[str, str]] = field(default_factory=set)  # known to have no row (`learn_absent`)

    def acting_as(self, actor: Actor) -> Repository:
        """The same transaction, changes recorded for another agent (the hub writing down an expiry)."""
        return Repository(self.conn, self.clock, self.tz, actor, self.changes, self.absent)

    def learn_absent(self, resource_type: str, ids: list[str]) -> None:
        """Which of these ids have no row, in one query per 500: a Bundle of new resources then need not
        read each one before writing it. Every write through this repository forgets its id again."""
        query = _FOUND[self.conn.dialect.name]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            params = {"type": resource_type, "ids": chunk}
            found = {row[0] for row in hot_reads.rows(self.conn, query, params)}
            self.absent.update((resource_type, i) for i in chunk if i not in found)

    # -- reading -------------------------------------------------------------------------------------
    def get(self, resource_type: str, resource_id: str, *, for_update: bool = False) -> Stored | None:
        """The current version, deleted ones included (their content is None)."""
        if (resource_type, resource_id) in self.absent:
            return None
        key = (resource_type, resource_id)
        locked = self.conn.info.get(_LOCKED)
        if locked and (known := locked.get(key)) is not None:
            return known
        seen = self.conn.info.setdefault(_SEEN, {})
        if not for_update and (known := seen.get(key)) is not None:
            return known
        query = _GET_FOR_UPDATE if for_update else _GET
        flush = appends.resource_waits(self.conn, resource_type, resource_id)
        rows = hot_reads.rows(self.conn, query, {"type": resource_type, "id": resource_id}, flush=flush)
        if not rows:
            return None
        version_id, last_updated, deleted, content, created_by = rows[0]
        stored = Stored(resource_type, resource_id, version_id, last_updated, deleted, content, created_by)
        if for_update:
            self._remember_locked(stored)
        else:
            seen[key] = stored
        return stored

    def _remember_locked(self, stored: Stored) -> None:
        """A row this transaction has locked (read for update, or written) stays as it last left it until
        the commit: read again, it comes from here."""
        self.conn.info.setdefault(_LOCKED, {})[(stored.type, stored.id)] = replace(stored, method="")

    def get_many(self, resource_type: str, ids: list[str]) -> list[Stored]:
        if not ids:
            return []
        params = {"type": resource_type, "ids": ids}
        rows = hot_reads.rows(self.conn, _GET_MANY[self.conn.dialect.name], params)
        return [
            Stored(resource_type, found, version, updated, False, content, creator)
            for found, version, updated, content, creator in rows
        ]

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> Stored | None:
        v = schema.resource_versions
        row = self.conn.execute(
            select(v.c.last_updated, v.c.method, v.c.content).where(
                v.c.type == resource_type, v.c.id == resource_id, v.c.version_id == version_id
            )
        ).first()
        if row is None:
            return None
        return Stored(
            resource_type,
            resource_id,
            version_id,
            row.last_updated,
            row.method == "DELETE",
            row.content,
            method=row.method,
        )

    # -- the one write path ------------------------------------------------------------------------
    def save(
        self,
        resource_type: str,
        resource: dict,
        *,
        resource_id: str | None = None,
        if_match: int | None = None,
        must_exist: bool = False,
        absent: bool = False,
    ) -> Stored:
        """Create or update: stamps meta, keeps history, re-indexes, writes the outbox row.

        `absent`: the caller has just read that `resource_id` has no row in this transaction, so it is not
        read again; a row created meanwhile by another transaction is a version-conflict."""
        now = self.clock.now_us()
        self.absent.discard((resource_type, resource_id))
        read = resource_id is not None and not absent
        current = self.get(resource_type, resource_id, for_update=True) if read else None
        if if_match is not None and (current is None or current.deleted or current.version_id != if_match):
            raise FhirError(
                "version-conflict", "The resource was changed meanwhile (If-Match does not match)."
            )
        if must_exist and (current is None or current.deleted):
            raise FhirError("not-found", f"{resource_type}/{resource_id} does not exist.")
        resource_id = resource_id or str(uuid.uuid4())
        version = current.version_id + 1 if current else 1
        now = max(now, current.last_updated + 1) if current else now
        content = serialise(resource_type, resource_id, version, now, resource)
        generations.note_write(self.conn, resource_type)
        method = "POST" if current is None or current.deleted else "PUT"
        self._store(resource_type, resource_id, version, now, content, current)
        self._record(resource_type, resource_id, version, now, method, content)
        previous = current.content if current and not current.deleted else None
        self._note(resource_type, resource_id, version, method, content, previous)
        before = orjson.loads(previous) if previous else None
        self._reindex(resource_type, resource_id, orjson.loads(content), fresh=current is None, before=before)
        saved = Stored(
            resource_type,
            resource_id,
            version,
            now,
            False,
            content,
            current.created_by if current and not current.deleted else self.actor.client_id,
            method,
        )
        self._remember_locked(saved)
        return saved

    def delete(self, resource_type: str, resource_id: str) -> Stored | None:
        """Delete (a new, empty version); None when there was nothing to delete."""
        self.absent.discard((resource_type, resource_id))
        current = self.get(resource_type, resource_id, for_update=True)
        if current is None or current.deleted:
            return None
        now = max(self.clock.now_us(), current.last_updated + 1)
        version = current.version_id + 1
        generations.note_write(self.conn, resource_type)
        r = schema.resources
        self.conn.execute(
            update(r)
            .where(r.c.type == resource_type, r.c.id == resource_id)
            .values(version_id=version, last_updated=now, deleted=True, content=None)
        )
        self._record(resource_type, resource_id, version, now, "DELETE", None)
        self._note(resource_type, resource_id, version, "DELETE", None, current.content)
        self._clear_index(resource_type, resource_id)
        self._remember_locked(
            Stored(resource_type, resource_id, version, now, True, None, current.created_by)
        )
        return Stored(resource_type, resource_id, version, now, True, None, method="DELETE")

    def _store(
        self,
        resource_type: str,
        resource_id: str,
        version: int,
        now: int,
        content: bytes,
        current: Stored | None,
    ) -> None:
        if current is None:
            # Inserted with the transaction's other new rows; an id created meanwhile is refused then.
            values = {
                "type": resource_type,
                "id": resource_id,
                "version_id": version,
                "last_updated": now,
                "deleted": False,
                "content": content,
                "created_by": self.actor.client_id,
            }
            appends.add(self.conn, schema.resources, values)
            return
        created_by = current.created_by if not current.deleted else self.actor.client_id
        waits = appends.resource_waits(self.conn, resource_type, resource_id)
        values = {
            "of_type": resource_type,
            "of_id": resource_id,
            "was": current.version_id,
            "version": version,
            "now": now,
            "new_content": content,
            "creator": created_by,
        }
        done = self.conn.execute(
            _UPDATE_CURRENT, values, execution_options={} if waits else appends.WITHOUT_FLUSH
        )
        if done.rowcount != 1:
            raise FhirError("version-conflict", f"{resource_type}/{resource_id} was changed meanwhile.")

    def _record(
        self, resource_type: str, resource_id: str, version: int, now: int, method: str, content: bytes | None
    ) -> None:
        """History and outbox rows are only appended: they are written together before the commit."""
        version_row = {
            "type": resource_type,
            "id": resource_id,
            "version_id": version,
            "last_updated": now,
            "method": method,
            "content": content,
        }
        appends.add(self.conn, schema.resource_versions, version_row)
        self.changes.append(Change(resource_type, resource_id, version, method))
        if resource_type not in NO_OUTBOX:
            outbox_row = {
                "recorded": now,
                "resource_type": resource_type,
                "resource_id": resource_id,
                "version_id": version,
                "method": method,
                "client_id": self.actor.client_id,
            }
            appends.add(self.conn, schema.outbox, outbox_row)

    def _note(
        self,
        resource_type: str,
        resource_id: str,
        version: int,
        method: str,
        content: bytes | None,
        previous: bytes | None,
    ) -> None:
        """Changes of the synced types go into the change feed (stamped when the transaction ends)."""
        if feed.is_synced(resource_type, content, previous):
            a = self.actor
            feed.note(
                self.conn,
                resource_type,
                resource_id,
                version,
                method,
                a.client_id,
                a.role,
                a.name,
                previous=previous,
                clock=self.clock,
                content=content,
            )

    def _reindex(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict,
        *,
        fresh: bool = False,
        before: dict | None = None,
    ) -> None:
        """Index rows of the new version; a `fresh` resource (no row before this save) has none to clear.

        Given the version `before` it, only the parameters of the elements that changed are written again,
        where no offer or position rests on them: a booking changes a Slot's status alone, and rewrote
        all its index and offer rows for it."""
        feed.reindexed(self.conn, resource_type)
        if before is not None:
            changed = _changed_elements(before, resource)
            if not changed & _DERIVED_FROM:
                self._reindex_params(resource_type, resource_id, resource, params_on(resource_type, changed))
                return
        if not fresh:
            self._clear_index(resource_type, resource_id)
        rows = index_rows(resource_type, resource_id, resource, self.tz)
        for row in rows:
            appends.add(self.conn, schema.search_index, row)
        start = next((row["lo"] for row in rows if row["param"] == "start"), None)
        slot_offers.refresh(self.conn, resource_type, resource_id, resource, start)
        pos = position(resource_type, resource)
        if pos:
            row = {"type": resource_type, "id": resource_id, "latitude": pos[0], "longitude": pos[1]}
            appends.add(self.conn, schema.positions, row)

    def _reindex_params(
        self, resource_type: str, resource_id: str, resource: dict, params: frozenset[str]
    ) -> None:
        """The index rows of `params` only, written again."""
        if not params:
            return
        waits = appends.index_waits(self.conn, resource_type, resource_id)
        self.conn.execute(
            _DELETE_PARAMS,
            {"type": resource_type, "id": resource_id, "params": sorted(params)},
            execution_options={} if waits else appends.WITHOUT_FLUSH,
        )
        for row in index_rows(resource_type, resource_id, resource, self.tz, only=params):
            appends.add(self.conn, schema.search_index, row)

    def _clear_index(self, resource_type: str, resource_id: str) -> None:
        feed.reindexed(self.conn, resource_type)
        s, p = schema.search_index, schema.positions
        waits = appends.index_waits(self.conn, resource_type, resource_id)
        self.conn.execute(
            delete(s).where(and_(s.c.type == resource_type, s.c.id == resource_id)),
            execution_options={} if waits else appends.WITHOUT_FLUSH,
        )
        slot_offers.forget(self.conn, resource_type, resource_id)
        if resource_type == "Location":
            self.conn.execute(delete(p).where(and_(p.c.type == resource_type, p.c.id == resource_id)))


# Top-level elements that rows beside the index rest on: a Slot's or Schedule's offers (slot_offers) and
# a Location's position (positions). A change of one of them re-indexes the whole resource.
_DERIVED_FROM = frozenset({"specialty", "serviceType", "schedule", "appointmentType", "start", "position"})


def _changed_elements(before: dict, after: dict) -> frozenset[str]:
    """The top-level elements that differ between two versions (meta always does, and is not indexed)."""
    return frozenset(k for k in before.keys() | after.keys() if k != "meta" and before.get(k) != after.get(k))


# The statements of every write, built once: building one costs more than running it on SQLite.
_R = schema.resources
# Rows a transaction has read, each read once (a booking read its Slot four times and its Patient twice):
_LOCKED = "terminhub.repository.locked"  # (type, id) -> Stored: those it holds locked, as it left them
_SEEN = "terminhub.repository.seen"  # (type, id) -> Stored: those read without a lock


def _forget_rows(conn: Connection) -> None:
    """A new transaction, or a rolled-back savepoint, which may have written some of them."""
    conn.info.pop(_LOCKED, None)
    conn.info.pop(_SEEN, None)


appends.on_forget(_forget_rows)
_GET = select(_R.c.version_id, _R.c.last_updated, _R.c.deleted, _R.c.content, _R.c.created_by).where(
    _R.c.type == bindparam("type"), _R.c.id == bindparam("id")
)
_GET_FOR_UPDATE = _GET.with_for_update()
# Built once: a search reads Slots by id many times a second, and building the statement cost more
# than running it.
_MANY = select(_R.c.id, _R.c.version_id, _R.c.last_updated, _R.c.content, _R.c.created_by).where(
    _R.c.type == bindparam("type"), _R.c.deleted.is_(False)
)
_GET_MANY = {dialect: _MANY.where(one_of(_R.c.id, dialect)) for dialect in ("postgresql", "sqlite")}
# The statements of every update, built once (building one cost about as much as running it). A bind
# parameter of an UPDATE may not share a name with a column of its table.
_UPDATE_CURRENT = (
    update(_R)
    .where(
        _R.c.type == bindparam("of_type"), _R.c.id == bindparam("of_id"), _R.c.version_id == bindparam("was")
    )
    .values(
        version_id=bindparam("version"),
        last_updated=bindparam("now"),
        deleted=False,
        content=bindparam("new_content"),
        created_by=bindparam("creator"),
    )
)
_DELETE_PARAMS = delete(schema.search_index).where(
    schema.search_index.c.type == bindparam("type"),
    schema.search_index.c.id == bindparam("id"),
    schema.search_index.c.param.in_(bindparam("params", expanding=True)),
)
# Which of some ids of a type have a row (500 ids as an IN list made a new statement to write out and parse).
_FOUND = {
    dialect: select(_R.c.id).where(_R.c.type == bindparam("type"), one_of(_R.c.id, dialect))
    for dialect in ("postgresql", "sqlite")
}


def serialise(resource_type: str, resource_id: str, version: int, now: int, resource: dict) -> bytes:
    """The served bytes: resourceType, id and meta first, then the resource as sent."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(now)
    body = {"resourceType": resource_type, "id": resource_id, "meta": meta}
    for key, value in resource.items():
        if key not in body:
            body[key] = value
    return orjson.dumps(body)
