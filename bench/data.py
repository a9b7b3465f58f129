"""The benchmark's data: `terminhub demo load`'s directory at a larger size, loaded through the public API.

The demo generator (terminhub.demo) plans practices in German cities with their doctors, Terminprofile and
consultation hours; over 12 weeks, 5,000 practices have about 10.6 million whole Slots. A benchmark of
`n` Slots keeps every k-th of them (k = that total / n, at least 1), so the Slots still cover every
practice and all 12 weeks, only thinner (as when a practice offers part of its hours online). Everything is
posted as transaction Bundles of about 1,000 PUTs by an admin, several Bundles at a time (IN_FLIGHT): first
the directory, in Bundles of whole practices (a practice refers only to its own resources), then the Slots.
"""

from __future__ import annotations

import datetime
import random
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from terminhub.demo import DemoSettings, count
from terminhub.demo.directory import directory, directory_count
from terminhub.demo.plan import PracticePlan, plan
from terminhub.demo.slots import slot, slot_times, working_days

BUNDLE_SIZE = 1000
DAYS = 84  # 12 weeks
SEED = 1
STAGES = 10  # the first scale loads one Slot in STAGES of the chosen ones, the second the rest
BOOKABLE_BY = "urn:terminhub:bookable-by"
# Bundles under way at once. The two server workers share one listening socket and a kept connection stays
# with the worker that accepted it, so two connections may well land on one worker; eight keep both busy
# while others wait for the feed's lock at their commit (2,368 Slots/s against 2,069 with four, 1,000
# practices). SQLite writes one transaction at a time: more than two only wait for its lock.
IN_FLIGHT = {"sqlite": 2, "postgresql": 8}


@dataclass
class Loaded:
    """What the workloads need to know about the loaded data."""

    settings: DemoSettings
    step: int  # every step-th Slot of the demo's is loaded
    practices: list[PracticePlan]
    slot_ids: list[str] = field(default_factory=list)  # a sample, for reads
    all_slot_ids: list[str] = field(default_factory=list)  # bookable by scheduling clients, for bookings
    slots: int = 0
    seconds: float = 0.0
    stages_loaded: int = 0
    not_for_booking: set[str] = field(default_factory=set)  # Schedules a scheduling client may not book
    directory_seconds: float = 0.0

    @property
    def slots_per_s(self) -> float:
        return self.slots / self.seconds if self.seconds else 0.0

    @property
    def specialties(self) -> list[str]:
        return sorted({p.fachgebiet.code for p in self.practices})

    @property
    def places(self) -> list[tuple[str, str]]:
        """(Fachgebiet code, postal code) of every practice."""
        return [(p.fachgebiet.code, p.postal_code) for p in self.practices]


def settings(practices: int) -> DemoSettings:
    """The demo at benchmark size: 12 weeks of Slots from tomorrow (no Slot of the run lies in the past)."""
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    return DemoSettings(practices=practices, days=DAYS, seed=SEED, start=tomorrow)


def practice_plans(practices: int) -> list[PracticePlan]:
    """The practices the benchmark will load (their BSNRs are known before anything is loaded)."""
    return plan(settings(practices))


class Login(httpx.Auth):
    """A client's OAuth 2.0 login that outlives its tokens: `bearer()` gives a token with at least
    RENEW_S left, fetching a new one when needed (a load of a million Slots takes longer than a token
    lives). As an httpx Auth it signs each request with such a token."""

    RENEW_S = 300

    def __init__(self, base_url: str, client_id: str, secret: str) -> None:
        self.base_url, self.client_id, self.secret = base_url, client_id, secret
        self._token, self._until = "", 0.0

    def bearer(self) -> str:
        if time.monotonic() > self._until - self.RENEW_S:
            with httpx.Client(base_url=self.base_url) as client:
                resp = client.post("/auth/token", data=_credentials(self.client_id, self.secret))
                resp.raise_for_status()
            body = resp.json()
            self._token, self._until = body["access_token"], time.monotonic() + body["expires_in"]
        return self._token

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self.bearer()}"
        yield request


def _credentials(client_id: str, secret: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}


def demo_slot_count(demo: DemoSettings) -> int:
    return count(demo) - sum(directory_count(p) for p in plan(demo))


def _directory(demo: DemoSettings) -> Iterator[dict]:
    """The demo's directory: everything it generates before the first Slot, practice by practice."""
    for practice in plan(demo):
        yield from directory(practice, demo)


def _directory_batches(demo: DemoSettings) -> Iterator[list[dict]]:
    """The directory in Bundles of whole practices (about BUNDLE_SIZE resources each): a practice's
    resources refer only to each other, so these Bundles can be posted side by side."""
    batch: list[dict] = []
    for practice in plan(demo):
        batch += directory(practice, demo)
        if len(batch) >= BUNDLE_SIZE:
            yield batch
            batch = []
    if batch:
        yield batch


def _slots(demo: DemoSettings, step: int, stages: range) -> Iterator[dict]:
    """Every step-th Slot of the demo whose position among those falls into one of `stages` (of STAGES),
    in the demo's order; only the Slots kept are built."""
    days = working_days(demo)
    i = chosen = 0
    for practice in plan(demo):
        for doctor in practice.doctors:
            for day, window, minute in slot_times(doctor, days):
                if i % step == 0:
                    if chosen % STAGES in stages:
                        yield slot(practice, doctor, day, window, minute)
                    chosen += 1
                i += 1


def _bundle(resources: list[dict]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }


def _batched(items: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# A loader keeps what it sent: the transaction-response need not carry every resource back.
LOAD_HEADERS = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}


def _post(client: httpx.Client, resources: list[dict]) -> None:
    resp = client.post("/fhir", json=_bundle(resources), headers=LOAD_HEADERS)
    if resp.status_code >= 300:
        raise RuntimeError(f"transaction failed: {resp.status_code} {resp.text[:500]}")


def _posted(client: httpx.Client, batches: Iterator[list[dict]], in_flight: int) -> Iterator[list[dict]]:
    """Post Bundles with `in_flight` of them under way at once, yielding each batch once it is stored."""
    with ThreadPoolExecutor(in_flight) as pool:
        pending: deque[tuple[Future, list[dict]]] = deque()
        for batch in batches:
            pending.append((pool.submit(_post, client, batch), batch))
            if len(pending) >= in_flight:
                future, done = pending.popleft()
                future.result()
                yield done
        for future, done in pending:
            future.result()
            yield done


def _loader(base_url: str, admin: Login) -> httpx.Client:
    return httpx.Client(base_url=base_url, auth=admin, timeout=600)


def load(base_url: str, admin: Login, practices: int, slots: int, in_flight: int = 2) -> Loaded:
    """Load the directory of `practices` practices and the first of two scales: a tenth of `slots`."""
    demo = settings(practices)
    loaded = Loaded(demo, max(1, demo_slot_count(demo) // max(1, slots)), plan(demo))
    t0 = time.perf_counter()
    with _loader(base_url, admin) as client:
        for batch in _posted(client, _directory_batches(demo), in_flight):
            for r in batch:
                if r["resourceType"] == "Schedule" and _not_for_scheduling_clients(r):
                    loaded.not_for_booking.add(f"Schedule/{r['id']}")
    loaded.directory_seconds = time.perf_counter() - t0
    load_more(loaded, base_url, admin, range(0, 1), in_flight)
    return loaded


def load_more(
    loaded: Loaded, base_url: str, admin: Login, stages: range | None = None, in_flight: int = 2
) -> None:
    """Load the Slots of `stages` (by default all not loaded yet), timing the Slot load alone."""
    stages = stages or range(loaded.stages_loaded, STAGES)
    t0 = time.perf_counter()
    with _loader(base_url, admin) as client:
        batches = _batched(_slots(loaded.settings, loaded.step, stages), BUNDLE_SIZE)
        for batch in _posted(client, batches, in_flight):
            loaded.slots += len(batch)
            loaded.all_slot_ids += [
                r["id"] for r in batch if r["schedule"]["reference"] not in loaded.not_for_booking
            ]
            # keep a sample of ids for the read workload
            loaded.slot_ids += [r["id"] for r in random.sample(batch, min(len(batch), 50))]
    loaded.seconds += time.perf_counter() - t0
    loaded.stages_loaded = stages.stop


def _not_for_scheduling_clients(schedule: dict) -> bool:
    faces = [e.get("valueCode") for e in schedule.get("extension") or [] if e.get("url") == BOOKABLE_BY]
    return bool(faces) and "scheduling-client" not in faces
