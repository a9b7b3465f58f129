"""Test data loaded through the public FHIR API: practices, their Schedules and free Slots."""

from __future__ import annotations

import datetime
import random
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import httpx

from terminhub.demo.names import BSNR_SYSTEM, FACHGEBIET_SYSTEM, FACHGEBIETE

BUNDLE_SIZE = 1000
TZ = datetime.timezone(datetime.timedelta(hours=1))  # CET; the offset is explicit on every instant


@dataclass
class Loaded:
    """What the workloads need to know about the loaded data."""

    slot_ids: list[str] = field(default_factory=list)  # a sample, for reads
    all_slot_ids: list[str] = field(default_factory=list)  # every one, for bookings that must not collide
    specialties: list[str] = field(default_factory=list)
    first_day: datetime.date = datetime.date.today()
    slots: int = 0
    seconds: float = 0.0
    bsnrs: list[str] = field(default_factory=list)
    schedules: list[str] = field(default_factory=list)
    planned: int = 0  # the Slots of the largest scale: they are spread over 12 weeks from the start

    @property
    def slots_per_s(self) -> float:
        return self.slots / self.seconds if self.seconds else 0.0


def bsnr(number: int) -> str:
    """A 9-digit BSNR, unique per practice number."""
    return f"99{number:07d}"


def token(client: httpx.Client, client_id: str, secret: str) -> str:
    """A bearer token by OAuth 2.0 client credentials."""
    resp = client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    resp.raise_for_status()
    return resp.json()["access_token"]


def postal_code(practice: int) -> str:
    """A German-looking postal code, spread over the country by practice number."""
    return f"{(practice * 7919) % 90000 + 10000:05d}"


def specialty_of(practice: int) -> str:
    return FACHGEBIETE[practice % len(FACHGEBIETE)].code


def _coding(code: str, display: str) -> dict:
    return {"coding": [{"system": FACHGEBIET_SYSTEM, "code": code, "display": display}]}


def _directory(practices: int, schedules_per_practice: int) -> Iterator[dict]:
    """Organization, PractitionerRoles and Schedules of every practice, each after what it references."""
    for p in range(1, practices + 1):
        fg = FACHGEBIETE[p % len(FACHGEBIETE)]
        spec = _coding(fg.code, fg.display)
        yield {
            "resourceType": "Organization",
            "id": f"b-org-{p}",
            "identifier": [{"system": BSNR_SYSTEM, "value": bsnr(p)}],
            "active": True,
            "name": f"Bench-Praxis {p} – {fg.label}",
            "address": [{"city": "Musterstadt", "postalCode": postal_code(p), "country": "DE"}],
        }
        for s in range(1, schedules_per_practice + 1):
            yield {
                "resourceType": "PractitionerRole",
                "id": f"b-role-{p}-{s}",
                "active": True,
                "organization": {"reference": f"Organization/b-org-{p}"},
                "specialty": [spec],
            }
            yield {
                "resourceType": "Schedule",
                "id": f"b-sched-{p}-{s}",
                "active": True,
                "specialty": [spec],
                "actor": [{"reference": f"PractitionerRole/b-role-{p}-{s}"}],
            }


WEEKDAYS = 60  # 12 weeks


def _slots(schedules: list[str], total: int, first_day: datetime.date) -> Iterator[dict]:
    """`total` free 15-minute Slots spread round-robin over the Schedules and over the weekdays of 12 weeks
    (08:00–16:00, spread over the day where a Schedule has fewer than 32 a day)."""
    per_day = min(32, max(1, -(-total // (len(schedules) * WEEKDAYS))))
    step = 32 // per_day
    counters = dict.fromkeys(schedules, 0)
    n = 0
    while n < total:
        for sched in schedules:
            if n >= total:
                return
            i = counters[sched]
            counters[sched] = i + 1
            day, k = divmod(i, per_day)
            date = first_day + datetime.timedelta(days=day + 2 * (day // 5))  # skip weekends
            start = datetime.datetime.combine(date, datetime.time(8), TZ)
            start += datetime.timedelta(minutes=15 * k * step)
            yield {
                "resourceType": "Slot",
                "id": f"b-slot-{sched.removeprefix('b-sched-')}-{i}",
                "schedule": {"reference": f"Schedule/{sched}"},
                "status": "free",
                "start": start.isoformat(),
                "end": (start + datetime.timedelta(minutes=15)).isoformat(),
            }
            n += 1


def _bundle(resources: list[dict]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
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


def _post(client: httpx.Client, resources: list[dict]) -> None:
    resp = client.post("/fhir", json=_bundle(resources), headers={"Content-Type": "application/fhir+json"})
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


def load(base_url: str, admin_token: str, practices: int, slots: int, planned: int | None = None) -> Loaded:
    """Load the directory and the first `slots` of `planned` free Slots; time the Slot load alone."""
    schedules_per_practice = 2
    first_day = datetime.date.today() + datetime.timedelta(days=1)
    out = Loaded(first_day=first_day, bsnrs=[bsnr(p) for p in range(1, practices + 1)])
    out.specialties = sorted({specialty_of(p) for p in range(1, practices + 1)})
    out.schedules = [f"b-sched-{p}-{s}" for p in range(1, practices + 1) for s in range(1, 3)]
    out.planned = planned or slots
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        for batch in _batched(_directory(practices, schedules_per_practice), BUNDLE_SIZE):
            _post(client, batch)
    load_more(out, base_url, admin_token, slots)
    return out


def load_more(loaded: Loaded, base_url: str, admin_token: str, upto: int) -> None:
    """Load further Slots until `upto` are stored, two Bundles at a time (one per server worker)."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    wanted = islice(_slots(loaded.schedules, loaded.planned, loaded.first_day), loaded.slots, upto)
    t0 = time.perf_counter()
    with (
        httpx.Client(base_url=base_url, headers=headers, timeout=600) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        for batch in pool.map(lambda b: _post(client, b) or b, _batched(wanted, BUNDLE_SIZE)):
            loaded.slots += len(batch)
            loaded.all_slot_ids.extend(r["id"] for r in batch)
            # keep a sample of ids for the read workload
            loaded.slot_ids.extend(r["id"] for r in random.sample(batch, min(len(batch), 50)))
    loaded.seconds += time.perf_counter() - t0
