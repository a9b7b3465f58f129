"""The change feed: a Provenance for every change of the synced types, stamped in commit order (contract 5).

The repository notes each change as it is written (with the practices whose scope held the previous
version); `stamp` runs as the last step of the transaction: it takes the row lock of the one-row counter,
stamps `recorded` = max(now, last + 1 µs) for each change in turn and writes the Provenances. A second
transaction waits for that lock until the first commits, so its stamps are later and it commits later:
once a Provenance with `recorded` = T is visible, none with `recorded` ≤ T can appear afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cache
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Connection, Engine, bindparam, case, delete, event, select, update

from terminhub.clock import Clock, instant
from terminhub.fhir import searchparams
from terminhub.fhir.searchparams import BSNR_SYSTEM
from terminhub.store import appends, hot_reads, schema
from terminhub.store.indexer import index_rows, split_reference

S = schema.search_index
R = schema.resources
UTC = ZoneInfo("UTC")

SYNCED = frozenset({"Practitioner", "PractitionerRole", "Schedule", "Slot", "Appointment"})
REFERRAL_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode"
ACTIVITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
CLIENT_SYSTEM = "urn:terminhub:client"
ROLE_SYSTEM = "urn:terminhub:role"
ROLES = frozenset({"admin", "practice", "referrer", "third-party", "scheduling-client", "hub"})
ACTIVITIES = {"POST": "CREATE", "PUT": "UPDATE", "DELETE": "DELETE"}
_PENDING = "terminhub.feed.pending"
_OWNERS = "terminhub.feed.owners"  # the transaction's Owners, kept while the index rows it read stay
_CLOCK = "terminhub.feed.clock"  # the clock of the changes (test-clock offsets included)


@dataclass
class Agent:
    client_id: str
    role: str
    display: str


@dataclass
class Noted:
    """A change waiting for its stamp."""

    type: str
    id: str
    version: int
    activity: str
    agent: Agent
    owners: set[str] = field(default_factory=set)
    resolved: bool = False  # `owners` holds those of the new version too (`resolve`)
    parents: list[tuple[str, str]] | None = None  # what puts this version in scope, read from its content


class Settings:
    """What the feed takes from the deployment: the name the hub signs its own changes with."""

    system_name = "116117 Terminservice"


def configure(system_name: str) -> None:
    Settings.system_name = system_name


def is_synced(resource_type: str, content: bytes | None, previous: bytes | None) -> bool:
    """Whether changes of this resource go into the feed (referral ServiceRequests only, of that type)."""
    if resource_type in SYNCED:
        return True
    if resource_type != "ServiceRequest":
        return False
    return any(REFERRAL_SYSTEM.encode() in c for c in (content, previous) if c)


# -- noting changes ------------------------------------------------------------------------------------
def begin(conn: Connection) -> None:
    """A transaction starts with nothing noted (the connection is reused from a pool)."""
    conn.info[_PENDING] = []


_MARKS = "terminhub.feed.savepoints"


def follow_savepoints(engine: Engine) -> None:
    """A change rolled back with its savepoint (a failed batch entry) leaves no Provenance."""

    # Savepoints nest, so their marks form a stack (the event is not always told the savepoint's name).
    @event.listens_for(engine, "savepoint")
    def _savepoint(conn: Connection, _name: str | None) -> None:
        conn.info.setdefault(_MARKS, []).append(len(conn.info.get(_PENDING) or []))

    @event.listens_for(engine, "rollback_savepoint")
    def _rollback(conn: Connection, _name: str | None, _context: object) -> None:
        conn.info.pop(_OWNERS, None)  # it may have read index rows of the rolled-back writes
        marks = conn.info.get(_MARKS)
        if marks:
            mark = marks.pop()
            if conn.info.get(_PENDING) is not None:
                del conn.info[_PENDING][mark:]

    @event.listens_for(engine, "release_savepoint")
    def _release(conn: Connection, _name: str | None, _context: object) -> None:
        marks = conn.info.get(_MARKS)
        if marks:
            marks.pop()


def forget(conn: Connection) -> None:
    conn.info.pop(_PENDING, None)
    conn.info.pop(_OWNERS, None)
    conn.info.pop(_CLOCK, None)
    conn.info.pop(_MARKS, None)


def note(
    conn: Connection,
    resource_type: str,
    resource_id: str,
    version: int,
    method: str,
    client_id: str,
    role: str,
    name: str,
    *,
    previous: bytes | None,
    clock: Clock,
    content: bytes | None = None,
) -> None:
    """Remember a change; the practices that held its previous version are read now, before the index
    forgets that version (through the parents its content names, as `stamp` does for the new version)."""
    pending = conn.info.setdefault(_PENDING, [])
    conn.info[_CLOCK] = clock
    display = Settings.system_name if client_id == "hub" else name
    noted = Noted(
        resource_type,
        resource_id,
        version,
        ACTIVITIES[method],
        Agent(client_id, role if role in ROLES else "admin", display or client_id),
    )
    if previous is not None:
        owners = _owners(conn)
        if resource_type in PARENTS:
            noted.owners |= owners.through(parents_of(resource_type, orjson.loads(previous)))
        else:
            noted.owners |= owners.of(resource_type, resource_id)
    if content is not None and resource_type in PARENTS:
        noted.parents = parents_of(resource_type, orjson.loads(content))
    pending.append(noted)


def _owners(conn: Connection) -> Owners:
    """One Owners per transaction: a Bundle updating 1,000 Slots of one Schedule reads its owners once."""
    owners: Owners | None = conn.info.get(_OWNERS)
    if owners is None or owners.conn is not conn:  # conn.info outlives the checkout: never another's
        owners = conn.info[_OWNERS] = Owners(conn)
    return owners


# Whose owners a change of each type's index rows can change (2.2: scope runs Organization → Slot → …).
_DEPENDENTS = {
    "Schedule": frozenset({"Schedule", "Slot", "Appointment", "ServiceRequest"}),
    "Slot": frozenset({"Slot", "Appointment", "ServiceRequest"}),
    "Appointment": frozenset({"Appointment", "ServiceRequest"}),
    "Practitioner": frozenset({"Practitioner"}),
    "ServiceRequest": frozenset({"ServiceRequest"}),
}
_EVERYONE = frozenset({"Organization", "PractitionerRole", "Location"})


def reindexed(conn: Connection, resource_type: str) -> None:
    """A resource's index rows change: the transaction's cached owners that may rest on them go."""
    owners: Owners | None = conn.info.get(_OWNERS)
    if owners is None or not owners.cache:
        return
    if resource_type in _EVERYONE:
        owners.cache.clear()
        return
    stale = _DEPENDENTS.get(resource_type)
    if stale:
        owners.cache = {key: value for key, value in owners.cache.items() if key[0] not in stale}


# The references through which a version of these types enters a practice's scope (2.2).
PARENTS = {
    "PractitionerRole": ("organization", ("Organization",)),
    "Schedule": ("actor", ("PractitionerRole", "Location")),
    "Slot": ("schedule", ("Schedule",)),
    "Appointment": ("slot", ("Slot",)),
}


def parents_of(resource_type: str, resource: dict) -> list[tuple[str, str]]:
    key, types = PARENTS[resource_type]
    value = resource.get(key)
    found = []
    for item in value if isinstance(value, list) else [value]:
        ref = split_reference(item.get("reference", "")) if isinstance(item, dict) else None
        if ref and ref[0] in types:
            found.append(ref)
    return found


# -- stamping ------------------------------------------------------------------------------------------
def resolve(conn: Connection) -> None:
    """Find the practices that hold each noted change's new version, before the transaction takes the
    locks it keeps until its commit: reading them takes a directory Bundle seconds, and other writers
    would wait that long."""
    pending: list[Noted] = conn.info.get(_PENDING) or []
    owners = Owners(conn)
    for noted in pending:
        if noted.resolved:
            continue
        if noted.parents is None:
            noted.owners |= owners.of(noted.type, noted.id)
        else:
            noted.owners |= owners.through(noted.parents)
        noted.resolved = True


def stamp(conn: Connection) -> int:
    """Write the noted changes' Provenances with their feed positions; the last step of the transaction,
    which on PostgreSQL it may commit itself.

    Their rows go out with `appends` (COPY on PostgreSQL): a Bundle of 1,000 Slots writes 1,000
    Provenances and some 4,000 index rows while it holds the feed's lock. All of a Provenance but its
    position is drafted before the lock is taken (drafting took 80 of the 200 ms a Bundle of 1,000 Slots
    held it, and every other writer waits that long)."""
    pending: list[Noted] = conn.info.get(_PENDING) or []
    if not pending:
        return 0
    resolve(conn)
    drafts = [_Draft(noted) for noted in pending]
    now = (conn.info.get(_CLOCK) or Clock()).now_us()
    more = len(pending) - 1
    first = conn.execute(_take_positions(), {"now": now, "more": more}).scalar_one() - more
    for offset, draft in enumerate(drafts):
        draft.write(conn, first + offset)
    # The COMMIT goes with these rows (PostgreSQL): the lock is held for two round trips, not three.
    appends.flush(conn, then_commit=True)
    conn.info[_PENDING] = []
    return len(pending)


@cache
def _take_positions():  # noqa: ANN202 - a statement
    """One statement takes the lock and the positions: first = max(now, last + 1), last moves `more` on.
    Every round trip between the lock and the commit keeps all other writers waiting. Built once."""
    counter = schema.feed_clock
    after_last = counter.c.last + 1
    first_position = case((after_last > bindparam("now"), after_last), else_=bindparam("now"))
    moved = update(counter).where(counter.c.id == 1).values(last=first_position + bindparam("more"))
    return moved.returning(counter.c.last)


_AT_POSITION = frozenset({"recorded"})  # the index parameters of a Provenance that its position gives
_BEFORE_POSITION = frozenset(searchparams.PARAMS["Provenance"]) - _AT_POSITION


class _Draft:
    """A noted change's Provenance, with all but its position: its rows are written once that is known."""

    def __init__(self, noted: Noted) -> None:
        self.id = str(uuid.uuid4())
        self.client_id = noted.agent.client_id
        self.body = provenance(noted, self.id)
        self.index = index_rows("Provenance", self.id, self.body, UTC, only=_BEFORE_POSITION)
        self.owners = sorted(noted.owners)

    def write(self, conn: Connection, recorded: int) -> None:
        at = instant(recorded)
        self.body["meta"]["lastUpdated"] = self.body["recorded"] = at
        content = orjson.dumps(self.body)
        row = {"type": "Provenance", "id": self.id, "version_id": 1, "last_updated": recorded}
        appends.add(conn, R, row | {"deleted": False, "content": content, "created_by": self.client_id})
        appends.add(conn, schema.resource_versions, row | {"method": "POST", "content": content})
        for index_row in self.index + index_rows("Provenance", self.id, self.body, UTC, only=_AT_POSITION):
            appends.add(conn, S, index_row)
        for bsnr in self.owners:
            appends.add(
                conn, schema.feed_owners, {"bsnr": bsnr, "recorded": recorded, "provenance_id": self.id}
            )


def provenance(noted: Noted, provenance_id: str) -> dict:
    """The Provenance of section 5; `recorded` (and `meta.lastUpdated`) are left for the feed position."""
    return {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"versionId": "1", "lastUpdated": None},
        "target": [{"reference": f"{noted.type}/{noted.id}/_history/{noted.version}"}],
        "recorded": None,
        "activity": {"coding": [{"system": ACTIVITY_SYSTEM, "code": noted.activity}]},
        "agent": [
            {
                "type": {"coding": [{"system": PARTICIPANT_SYSTEM, "code": "author"}]},
                "role": [{"coding": [{"system": ROLE_SYSTEM, "code": noted.agent.role}]}],
                "who": {
                    "identifier": {"system": CLIENT_SYSTEM, "value": noted.agent.client_id},
                    "display": noted.agent.display,
                },
            }
        ],
    }


# -- whose scope holds a resource ------------------------------------------------------------------------
class Owners:
    """The BSNRs whose practice scope (2.2) holds a resource, read from the index; cached per use."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cache: dict[tuple[str, str], frozenset[str]] = {}

    def of(self, resource_type: str, resource_id: str) -> frozenset[str]:
        key = (resource_type, resource_id)
        if key not in self.cache:
            shared = self._directory(resource_type)
            if shared is None:
                self.cache[key] = self._compute(resource_type, resource_id)
            else:  # the directory's owners change only with the directory: every booking asks for them
                derived = ("owners", resource_type, resource_id)
                if derived not in shared:
                    shared[derived] = self._compute(resource_type, resource_id)
                self.cache[key] = shared[derived]
        return self.cache[key]

    def _directory(self, resource_type: str) -> dict | None:
        """Where the process keeps what it derived from the directory, for a directory type and while
        this transaction has not changed the directory; else None."""
        from terminhub.store import directory_cache, generations  # noqa: PLC0415 - it reads Stored

        if resource_type not in generations.DIRECTORY_TYPES:
            return None
        cache = directory_cache.for_transaction(self.conn)
        return cache.derived if cache.shared else None

    def _compute(self, resource_type: str, resource_id: str) -> frozenset[str]:
        if resource_type == "Practitioner":
            roles = self._referring("PractitionerRole", "practitioner", "Practitioner", resource_id)
            return self._union("PractitionerRole", roles)
        if resource_type == "PractitionerRole":
            return self._organizations(self._refs("PractitionerRole", resource_id, "organization"))
        if resource_type == "Location":
            return self._organizations(self._refs("Location", resource_id, "organization"))
        if resource_type == "Schedule":
            found: set[str] = set()
            for ref_type, ref_id in self._refs("Schedule", resource_id, "actor"):
                if ref_type in ("PractitionerRole", "Location"):
                    found |= self.of(ref_type, ref_id)
            return frozenset(found)
        if resource_type == "Slot":
            return self._union_refs(self._refs("Slot", resource_id, "schedule"), "Schedule")
        if resource_type == "Appointment":
            return self._union_refs(self._refs("Appointment", resource_id, "slot"), "Slot")
        if resource_type == "ServiceRequest":
            appointments = self._referring("Appointment", "based-on", "ServiceRequest", resource_id)
            return self._union("Appointment", appointments)
        return frozenset()

    def through(self, parents: list[tuple[str, str]]) -> frozenset[str]:
        """The owners of a version whose parents are known (its content names them)."""
        organizations = [p for p in parents if p[0] == "Organization"]
        found = set(self._organizations(organizations)) if organizations else set()
        for parent_type, parent_id in parents:
            if parent_type != "Organization":
                found |= self.of(parent_type, parent_id)
        return frozenset(found)

    def _refs(self, source: str, source_id: str, param: str) -> list[tuple[str, str]]:
        flush = appends.index_waits(self.conn, source, source_id)  # others' waiting rows do not count
        params = {"type": source, "id": source_id, "param": param}
        rows = hot_reads.rows(self.conn, _REFS, params, flush=flush)
        return [(ref_type, ref_id) for ref_type, ref_id in rows]

    def _referring(self, source: str, param: str, target_type: str, target_id: str) -> list[str]:
        params = {"ref_type": target_type, "ref_id": target_id, "param": param, "type": source}
        return [row[0] for row in hot_reads.rows(self.conn, _REFERRING, params)]

    def _union(self, resource_type: str, ids: list[str]) -> frozenset[str]:
        found: set[str] = set()
        for resource_id in ids:
            found |= self.of(resource_type, resource_id)
        return frozenset(found)

    def _union_refs(self, refs: list[tuple[str, str]], wanted: str) -> frozenset[str]:
        return self._union(wanted, [ref_id for ref_type, ref_id in refs if ref_type == wanted])

    def _organizations(self, refs: list[tuple[str, str]]) -> frozenset[str]:
        found: set[str] = set()
        for ref_id in {ref_id for ref_type, ref_id in refs if ref_type == "Organization"}:
            flush = appends.index_waits(self.conn, "Organization", ref_id)
            rows = hot_reads.rows(self.conn, _BSNRS, {"id": ref_id}, flush=flush)
            found.update(row[0] for row in rows if row[0])
        return frozenset(found)


# The owners' statements, built once: a Bundle of a directory asks them for every Schedule.
_REFS = select(S.c.ref_type, S.c.ref_id).where(
    S.c.type == bindparam("type"), S.c.id == bindparam("id"), S.c.param == bindparam("param"),
    S.c.ref_id.is_not(None),
)  # fmt: skip
_REFERRING = select(S.c.id).where(
    S.c.ref_type == bindparam("ref_type"), S.c.ref_id == bindparam("ref_id"), S.c.param == bindparam("param"),
    S.c.type == bindparam("type"),
)  # fmt: skip
# One Organization at a time (almost always the only one): a list of ids would make the statement a new
# text for each length, compiled anew each time (a seventh of a cold Bundle's time).
_BSNRS = select(S.c.code).where(
    S.c.type == "Organization", S.c.param == "identifier", S.c.system == BSNR_SYSTEM,
    S.c.id == bindparam("id"),
)  # fmt: skip


# -- reading the feed ------------------------------------------------------------------------------------
def owned_by(bsnrs: tuple[str, ...]):  # noqa: ANN201 - a Select of Provenance ids
    """The Provenances that belong to a practice with these numbers."""
    F = schema.feed_owners
    return select(F.c.provenance_id).where(F.c.bsnr.in_(list(bsnrs) or ["-"]))


def target_of(content: bytes) -> tuple[str, str] | None:
    resource = orjson.loads(content)
    for target in resource.get("target") or []:
        found = split_reference(target.get("reference", ""))
        if found:
            return found
    return None


# -- retention -------------------------------------------------------------------------------------------
def sweep(conn: Connection, now_us: int, retention_days: float, limit: int = 5000) -> int:
    """Forget Provenances older than the retention (a resuming client then gets `feed-expired`)."""
    horizon = now_us - int(retention_days * 86_400 * 1_000_000)
    old = [
        row.id
        for row in conn.execute(
            select(R.c.id)
            .where(R.c.type == "Provenance", R.c.last_updated < horizon)
            .order_by(R.c.last_updated)
            .limit(limit)
        )
    ]
    if not old:
        return 0
    V, F = schema.resource_versions, schema.feed_owners
    conn.execute(delete(S).where(S.c.type == "Provenance", S.c.id.in_(old)))
    conn.execute(delete(V).where(V.c.type == "Provenance", V.c.id.in_(old)))
    conn.execute(delete(F).where(F.c.provenance_id.in_(old)))
    conn.execute(delete(R).where(R.c.type == "Provenance", R.c.id.in_(old)))
    return len(old)


def horizon(now_us: int, retention_days: float) -> int:
    """The oldest feed position that is still served."""
    return now_us - int(retention_days * 86_400 * 1_000_000)
