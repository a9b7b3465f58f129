"""The directory as slot searches read it, kept per process while its generation number stands.

A search looks at a few hundred Slots and, for each, the Schedule, its actors, their Organization and
Location: read afresh, that was most of a search's cost, although the directory changes rarely. Each
process keeps what its searches read, parsed, and drops it all when the directory's generation number
(terminhub/store/generations.py) moves on. A transaction that itself changed the directory reads past the
shared cache, so nothing uncommitted ever enters it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine

from terminhub.store import generations
from terminhub.store.repository import Stored

# At most so many parsed resources, and so many answers derived from them; then the cache starts again
# (memory stays bounded). A directory of 5,000 practices holds some 38,000 resources that searches read,
# and searches and the feed derive some 37,000 small answers from them (the owners of each Schedule,
# PractitionerRole and Location, the place of each Schedule): with one limit of 60,000 for both, such a
# cache started again every time it filled.
MAX_RESOURCES = 60_000
MAX_DERIVED = 150_000
# Answers that depend on what a request asks as well as on the directory (whether a Schedule lies at the
# place a search asks for): as many kinds as requests bring, so kept apart, and started afresh alone.
MAX_JUDGED = 100_000


@dataclass(frozen=True)
class Parsed(Stored):
    """A cached version with its parsed content: callers read it and must not change it."""

    parsed: dict = field(default_factory=dict, compare=False)

    def resource(self) -> dict:
        return self.parsed


def parsed(stored: Stored) -> Parsed:
    return Parsed(
        stored.type, stored.id, stored.version_id, stored.last_updated, stored.deleted, stored.content,
        stored.created_by, stored.method, stored.resource(),
    )  # fmt: skip


@dataclass
class DirectoryCache:
    """Directory resources by (type, id) (None: no such resource), an Organization's managed Locations,
    whatever else a search derives from them (`derived`, e.g. a Schedule's place), and what it judges of
    them by its own question (`judgements`, e.g. whether a Schedule lies at the place asked for)."""

    generation: int | None
    stored: dict[tuple[str, str], Stored | None] = field(default_factory=dict)
    managed: dict[str, list[dict]] = field(default_factory=dict)
    derived: dict[Any, Any] = field(default_factory=dict)
    judged: dict[Any, Any] = field(default_factory=dict)

    def judgements(self) -> dict[Any, Any]:
        """Where to keep answers that depend on a request's question as well (`MAX_JUDGED`); a full one is
        replaced by an empty one, and the directory's resources and answers stay."""
        if len(self.judged) >= MAX_JUDGED:
            self.judged = {}
        return self.judged

    @property
    def shared(self) -> bool:
        return self.generation is not None

    def full(self) -> bool:
        return len(self.stored) >= MAX_RESOURCES or len(self.derived) >= MAX_DERIVED


_caches: WeakKeyDictionary[Engine, DirectoryCache] = WeakKeyDictionary()
_lock = threading.Lock()


def for_transaction(conn: Connection) -> DirectoryCache:
    """The process's cache if it is current for this transaction, else one for this transaction alone."""
    if generations.changes(conn, generations.DIRECTORY):
        return DirectoryCache(None)
    number = generations.current(conn, generations.DIRECTORY)
    if number is None:
        return DirectoryCache(None)
    with _lock:
        cache = _caches.get(conn.engine)
        if cache is None or cache.generation < number or cache.full():
            cache = _caches[conn.engine] = DirectoryCache(number)
        elif cache.generation > number:  # this transaction saw an older directory than the cache holds
            return DirectoryCache(None)
        return cache
