"""The life of a referral code (contract 4.1): issue, look-up, window, status, booking, cancellation.

The ServiceRequest is versioned only when its status changes; window, bookings and the like live in the
`referrals` table beside it. Rows are locked (`FOR UPDATE`) by operations that change them, so exactly
one of two concurrent cancellations counts.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from terminhub.clock import Clock, from_us, instant
from terminhub.config import Settings
from terminhub.fhir.outcome import FhirError
from terminhub.referral import code as codes
from terminhub.referral.urgency import SNOMED, SNOMED_OF, priority_element, window_us
from terminhub.store import counters, hot_reads, schema
from terminhub.store.database import WriteNeeded, is_writer
from terminhub.store.repository import HUB, Repository, Stored

T = schema.referrals
FAILURES = "code-failures"
CODES_PER_DAY = "codes-per-day"
FAILURE_LIMIT = 600
FAILURE_WINDOW_S = 60
BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"
FORMULAR = "urn:terminhub:formular"
ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
# operation -> statuses in which the code allows it (4.1)
ALLOWED = {
    "search": {"draft", "revoked"},
    "book": {"draft", "revoked"},
    "cancel": {"active"},
    "info": {"active"},
    "status": {"draft", "active", "revoked", "completed", "on-hold"},
}

Coding = tuple[str | None, str]


@dataclass
class Referral:
    code: str
    service_request: Stored
    status: str
    priority: str
    leistungsmerkmale: list[Coding]
    window_start: int | None
    window_end: int | None
    appointment_id: str | None
    expired: bool
    bookings: int
    acute: bool


def parse_codings(setting: str) -> set[Coding]:
    """`system|code,system|code` as in TERMINHUB_REFERRAL_FREE and TERMINHUB_ACUTE_PT_CODINGS."""
    found: set[Coding] = set()
    for item in setting.split(","):
        system, _, value = item.strip().rpartition("|")
        if value:
            found.add((system or None, value))
    return found


_Row = namedtuple("_Row", [column.name for column in T.c])  # noqa: PYI024 - fields from the table
_R = schema.resources
_FAILED = counters.total_query(bindparam("client_id"), bindparam("kind"), bindparam("since"))
_REQUEST = (_R.c.version_id, _R.c.last_updated, _R.c.deleted, _R.c.content, _R.c.created_by)
# Every code search asks, in one statement: the client's failed look-ups in the window, the code's row and
# its ServiceRequest (three round trips took a fifth of a search's time).
_SEARCHED = (
    select(_FAILED.scalar_subquery(), *T.c, *_REQUEST)
    .select_from(T.outerjoin(_R, and_(_R.c.type == "ServiceRequest", _R.c.id == T.c.service_request_id)))
    .where(T.c.code == bindparam("code"))
)


class ReferralService:
    def __init__(self, repo: Repository, settings: Settings | None, tz: ZoneInfo) -> None:
        """`settings` may be None for status changes, which need none of them."""
        self.repo = repo
        self.conn: Connection = repo.conn
        self.settings = settings or Settings()
        self.tz = tz

    @property
    def now(self) -> int:
        return self.repo.clock.now_us()

    # -- issuing -------------------------------------------------------------------------------------
    def issue(
        self,
        *,
        leistungsmerkmale: list[dict],
        priority: str,
        issuer,
        bsnr: str | None = None,  # noqa: ANN001
        practitioner: dict | None = None,
        patient: dict | None = None,
        formular: str | None = None,
    ) -> Referral:
        """A new `draft` code; third parties only for referral-free services and within the daily quota."""
        wanted = [(c.get("system"), c.get("code")) for c in leistungsmerkmale]
        third_party = issuer.role == "third-party"
        if third_party:
            free = parse_codings(self.settings.referral_free)
            if not all(w in free for w in wanted):
                raise FhirError(
                    "business-rule",
                    "A third party may request codes only for services that need no referral.",
                )
            self._count_quota(issuer.client_id)
        acute = any(w in parse_codings(self.settings.acute_pt_codings) for w in wanted)
        resource = self._service_request(leistungsmerkmale, priority, bsnr, practitioner, patient, formular)
        for _ in range(5):
            value = codes.generate()
            resource["identifier"] = [{"system": codes.SYSTEM, "value": value}]
            try:
                with self.conn.begin_nested():
                    stored = self.repo.save("ServiceRequest", resource)
                    self.conn.execute(
                        insert(T).values(
                            code=value,
                            service_request_id=stored.id,
                            issuer=issuer.client_id,
                            priority=priority,
                            acute=acute,
                            bookings=0,
                            expired=False,
                            issued_at=self.now,
                        )
                    )
            except IntegrityError:
                continue
            return Referral(value, stored, "draft", priority, wanted, None, None, None, False, 0, acute)
        raise FhirError("internal", "Could not issue a unique referral code.")

    def _count_quota(self, client_id: str) -> None:
        day = from_us(self.now).astimezone(self.tz).date().toordinal()
        if counters.total(self.conn, client_id, CODES_PER_DAY, day) >= self.settings.codes_per_day:
            raise FhirError(
                "rate-limited",
                "The daily number of codes for this client is used up.",
                headers={"Retry-After": str(self._seconds_to_midnight())},
            )
        counters.add(self.conn, client_id, CODES_PER_DAY, day)

    def _seconds_to_midnight(self) -> int:
        local = from_us(self.now).astimezone(self.tz)
        return max(1, 86400 - (local.hour * 3600 + local.minute * 60 + local.second))

    def _service_request(
        self,
        leistungsmerkmale: list[dict],
        priority: str,
        bsnr: str | None,
        practitioner: dict | None,
        patient: dict | None,
        formular: str | None,
    ) -> dict:
        value, extension = priority_element(priority)
        resource: dict = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "performerType": {"coding": [dict(c) for c in leistungsmerkmale]},
            "priority": value,
            "_priority": extension,
            "authoredOn": instant(self.now),
        }
        contained = []
        if bsnr and practitioner:
            contained.append(
                {
                    "resourceType": "PractitionerRole",
                    "id": "requester",
                    "organization": {"identifier": {"system": BSNR_SYSTEM, "value": bsnr}},
                    "practitioner": {"reference": "#arzt"},
                }
            )
            contained.append(
                {**{k: v for k, v in practitioner.items() if k not in ("id", "meta")}, "id": "arzt"}
            )
            resource["requester"] = {"reference": "#requester"}
        if patient:
            contained.append(
                {**{k: v for k, v in patient.items() if k not in ("id", "meta")}, "id": "patient"}
            )
            resource["subject"] = {"reference": "#patient"}
        else:
            resource["subject"] = {"extension": [{"url": ABSENT, "valueCode": "unknown"}]}
        if contained:
            resource["contained"] = contained
        if formular:
            resource["extension"] = [{"url": FORMULAR, "valueCode": formular}]
        return resource

    # -- look-up -------------------------------------------------------------------------------------
    def lookup(self, raw: str, client_id: str, *, for_update: bool = False) -> Referral:
        """The code's referral; 429 past the failed look-up limit, 400 malformed, 404 unknown."""
        self._check_failures(client_id)
        value = codes.normalise(raw)
        query = select(T).where(T.c.code == value)
        if for_update:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        if row is None:
            raise FhirError("code-unknown", "This referral code is not known.")
        ref = self._load(row)
        if ref.window_end is not None and ref.window_end <= self.now and ref.status in ("draft", "revoked"):
            # the window's end is the hub's change, whoever finds it first
            ref = self._set_status(ref, "completed", expired=True, repo=self.repo.acting_as(HUB))
        return ref

    def lookup_to_search(self, raw: str, client_id: str) -> Referral:
        """`lookup` for a search: without a row lock where the window is open and running, since the search
        then changes nothing (a lock would make concurrent searches with one code wait for each other and
        turn each search into a write); with it where the window still has to open or has ended."""
        try:
            code = codes.normalise(raw)
        except FhirError:
            self._check_failures(client_id)  # past the limit, 429 comes first
            raise
        params = {"code": code, "client_id": client_id, "kind": FAILURES, "since": self._failures_since()}
        found = hot_reads.rows(self.conn, _SEARCHED, params, flush=False)
        if not found or found[0][0] >= FAILURE_LIMIT:
            self._check_failures(client_id)  # the rare answers: 429 (with its Retry-After) or unknown
        row = _Row._make(found[0][1 : 1 + len(_Row._fields)]) if found else None
        if row is not None and row.window_start is not None and row.window_end > self.now:
            version, updated, deleted, content, creator = found[0][1 + len(_Row._fields) :]
            if version is not None and not deleted:
                request = Stored(
                    "ServiceRequest", row.service_request_id, version, updated, False, content, creator
                )
                return self._referral(row, request)
        if row is not None and not is_writer(self.conn):
            raise WriteNeeded  # the window opens now, or its end is to be written down
        return self.lookup(raw, client_id, for_update=row is not None)

    def _load(self, row) -> Referral:  # noqa: ANN001
        return self._referral(row, self.repo.get("ServiceRequest", row.service_request_id))

    def _referral(self, row, stored: Stored) -> Referral:  # noqa: ANN001
        resource = stored.resource()
        performer = [
            (c.get("system"), c.get("code")) for c in (resource.get("performerType") or {}).get("coding", [])
        ]
        return Referral(
            row.code,
            stored,
            resource.get("status", "draft"),
            row.priority,
            performer,
            row.window_start,
            row.window_end,
            row.appointment_id,
            row.expired,
            row.bookings,
            row.acute,
        )

    def _failures_since(self) -> int:
        """The first bucket (second) of the failed look-ups that count now."""
        return self.now // 1_000_000 - FAILURE_WINDOW_S + 1

    def _check_failures(self, client_id: str) -> None:
        now_s = self.now // 1_000_000
        seen = counters.buckets(self.conn, client_id, FAILURES, self._failures_since())
        total = sum(count for _, count in seen)
        if total < FAILURE_LIMIT:
            return
        for bucket, count in seen:  # wait until enough of the oldest failures leave the window
            total -= count
            if total < FAILURE_LIMIT:
                retry = bucket + FAILURE_WINDOW_S - now_s
                break
        else:
            retry = FAILURE_WINDOW_S
        raise FhirError(
            "rate-limited",
            "Too many failed referral code look-ups; try again later.",
            headers={"Retry-After": str(max(1, retry))},
        )

    # -- status --------------------------------------------------------------------------------------
    def guard(self, ref: Referral, operation: str) -> None:
        if ref.status in ALLOWED[operation]:
            return
        if ref.status == "completed" and ref.expired:
            raise FhirError(
                "code-expired", "The claim period of this referral code has ended.", diagnostics=ref.status
            )
        raise FhirError(
            "code-status",
            f"This is not possible while the referral code is {ref.status}.",
            diagnostics=ref.status,
        )

    def open_window(self, ref: Referral) -> Referral:
        """The window opens at the first search or booking and lasts an exact duration."""
        if ref.window_start is not None:
            return ref
        start = self.now
        end = start + window_us(ref.priority, ref.acute)
        self.conn.execute(
            update(T)
            .where(T.c.code == ref.code, T.c.window_start.is_(None))
            .values(window_start=start, window_end=end)
        )
        row = self.conn.execute(select(T).where(T.c.code == ref.code)).first()
        return self._load(row)

    def inside(self, ref: Referral, slot_start_us: int) -> bool:
        return ref.window_end is not None and self.now <= slot_start_us < ref.window_end

    def offers_urgency(self, bookable_urgency, ref: Referral) -> bool:  # noqa: ANN001
        return bookable_urgency is None or (SNOMED, SNOMED_OF[ref.priority]) in bookable_urgency

    def booked(self, ref: Referral, appointment_id: str) -> Referral:
        self.conn.execute(
            update(T)
            .where(T.c.code == ref.code)
            .values(appointment_id=appointment_id, bookings=T.c.bookings + 1)
        )
        ref.appointment_id = appointment_id
        ref.bookings += 1
        return self._set_status(ref, "active")

    def cancelled(self, ref: Referral, *, patient_side: bool) -> Referral:
        """`active` → `revoked`; `completed` when the patient cancels a code booked twice (forfeit) or when
        the window has ended (the claim period is over)."""
        if ref.status != "active":
            raise FhirError(
                "code-status",
                f"This is not possible while the referral code is {ref.status}.",
                diagnostics=ref.status,
            )
        self.conn.execute(update(T).where(T.c.code == ref.code).values(appointment_id=None))
        ref.appointment_id = None
        if ref.window_end is not None and ref.window_end <= self.now:
            return self._set_status(ref, "completed", expired=True)
        if patient_side and ref.bookings >= 2:
            return self._set_status(ref, "completed")
        return self._set_status(ref, "revoked")

    def _set_status(
        self, ref: Referral, status: str, *, expired: bool = False, repo: Repository | None = None
    ) -> Referral:
        resource = ref.service_request.resource()
        resource["status"] = status
        ref.service_request = (repo or self.repo).save(
            "ServiceRequest", resource, resource_id=ref.service_request.id
        )
        ref.status = status
        if expired or status == "completed":
            self.conn.execute(update(T).where(T.c.code == ref.code).values(expired=expired, closed=True))
            ref.expired = expired
        return ref

    def reduced(self, ref: Referral) -> dict:
        """What a third party may see of a code: never subject, requester or contained resources."""
        resource = ref.service_request.resource()
        keep = (
            "resourceType",
            "id",
            "identifier",
            "status",
            "intent",
            "priority",
            "_priority",
            "performerType",
        )
        reduced = {k: resource[k] for k in keep if k in resource}
        reduced["meta"] = {k: resource["meta"][k] for k in ("versionId", "lastUpdated")}
        return reduced

    def by_appointment(self, appointment_id: str) -> Referral | None:
        row = self.conn.execute(
            select(T).where(T.c.appointment_id == appointment_id).with_for_update()
        ).first()
        return self._load(row) if row else None


def record_failed_lookup(conn: Connection, client_id: str, now_us: int) -> None:
    """Called for every refusal with code-malformed or code-unknown, in the refusal's own transaction."""
    counters.add(conn, client_id, FAILURES, now_us // 1_000_000)


def sweep_job(conn: Connection, clock: Clock, settings: Settings) -> int:
    """Windows that ended: `draft`/`revoked` codes become `completed` (agent: the hub); old counters go."""
    tz = ZoneInfo(settings.timezone)
    service = ReferralService(Repository(conn, clock, tz, HUB), settings, tz)
    now = clock.now_us()
    due = select(T).where(T.c.window_end <= now, T.c.closed.is_(False), T.c.appointment_id.is_(None))
    rows = conn.execute(due.limit(500)).all()
    done = 0
    for row in rows:
        ref = service._load(row)
        if ref.status in ("draft", "revoked"):
            service._set_status(ref, "completed", expired=True)
            done += 1
    counters.forget_before(conn, FAILURES, now // 1_000_000 - FAILURE_WINDOW_S * 2)
    return done


def release_code(repo: Repository, appointment_id: str, cause: str) -> None:
    """A booking with a code ended elsewhere (practice, admin, expiry): revoked, never forfeited."""
    service = ReferralService(repo, None, repo.tz)
    ref = service.by_appointment(appointment_id)
    if ref is not None and ref.status == "active":
        service.cancelled(ref, patient_side=False)
