"""What a FHIR request carries through the layers: caller, policy, format, clock, one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Select, bindparam

from terminhub.access.policy import Caller, Policy
from terminhub.booking.expiry import present
from terminhub.booking.service import Booker, BookingService
from terminhub.clock import Clock
from terminhub.config import Settings
from terminhub.fhir.outcome import FhirError
from terminhub.store.repository import Actor, Repository, Stored
from terminhub.store.search import SearchEngine, holding

# A Bundle's entries run through the single-request handlers, which label the request for its AuditEvent
# (`interaction`, `audit_entity`); once a request is a Bundle, it keeps its own label: one AuditEvent with
# action E for the whole request.
BUNDLE_INTERACTIONS = frozenset({"transaction", "batch"})
AUDIT_LABELS = frozenset({"interaction", "audit_entity"})


@dataclass
class Reply:
    """A FHIR response before rendering: a resource (dict, or stored bytes) or nothing."""

    status: int = 200
    body: dict | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Context:
    """One request's view of the world, passed to every handler."""

    settings: Settings
    conn: Connection
    clock: Clock
    tz: ZoneInfo
    caller: Caller
    fmt: str = "json"
    prefer_return: str = "representation"
    strict: bool = False
    audit_entity: str | None = None
    interaction: str = "read"

    def __setattr__(self, name: str, value: object) -> None:
        if name in AUDIT_LABELS and self.__dict__.get("interaction") in BUNDLE_INTERACTIONS:
            return
        super().__setattr__(name, value)

    def __post_init__(self) -> None:
        self.policy = Policy(self.caller)
        self.repo = Repository(
            self.conn, self.clock, self.tz, Actor(self.caller.client_id, self.caller.role, self.caller.name)
        )

    @property
    def base(self) -> str:
        return self.settings.fhir_base

    def engine(self) -> SearchEngine:
        return SearchEngine(
            self.conn, self.tz, self.policy.scope, self.settings.base_url, self.clock.now_us()
        )

    def booking(self) -> BookingService:
        """The booking core on this request's transaction."""
        s = self.settings
        return BookingService(
            self.repo,
            hold_minutes=s.hold_minutes,
            max_holds=s.max_holds,
            confirm_hours=s.confirm_hours,
            tz=self.tz,
        )

    def booker(self) -> Booker:
        return Booker(self.caller.client_id, self.caller.role)

    def present(self, items: list[Stored]) -> list[Stored]:
        """Stored versions as readers see them now (expired holds and pending bookings have ended)."""
        return present(self.conn, self.clock.now_us(), items)

    def visible(self, resource_type: str, resource_id: str) -> bool:
        """Whether the caller may see this resource (its type being readable)."""
        query = _membership(self.caller, resource_type)
        if query is None:
            return True
        return self.conn.execute(query, {"resource_id": resource_id}).first() is not None

    def load_visible(self, resource_type: str, resource_id: str) -> Stored:
        """The current version, or 404 (unknown or invisible) / 410 (deleted)."""
        self.audit_entity = f"{resource_type}/{resource_id}"
        stored = self.repo.get(resource_type, resource_id)
        if stored is None:
            raise FhirError("not-found", f"{resource_type}/{resource_id} is not known.")
        if stored.deleted:
            if self.policy.scope(resource_type) is None:
                raise FhirError("gone", f"{resource_type}/{resource_id} was deleted.")
            raise FhirError("not-found", f"{resource_type}/{resource_id} is not known.")
        if not self.visible(resource_type, resource_id):
            raise FhirError("not-found", f"{resource_type}/{resource_id} is not known.")
        return stored


@lru_cache(maxsize=1024)
def _membership(caller: Caller, resource_type: str) -> Select | None:
    """Whether an id is in the caller's scope of a type, as a statement built once per caller and type
    (building and keying it cost more than running it, twice in every booking); None: all are visible.

    The id is tested inside the scope's query (`holding`): a scheduling client's Patients grow with its
    bookings."""
    scope = Policy(caller).scope(resource_type)
    if scope is None:
        return None
    return holding(scope, bindparam("resource_id")).limit(1)
