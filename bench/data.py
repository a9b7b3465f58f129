"""Test data loaded through the public FHIR API: practices, their Schedules and free Slots."""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

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


def _slots(schedules: list[str], total: int, first_day: datetime.date) -> Iterator[dict]:
    """`total` free 15-minute Slots spread round-robin over the Schedules, weekdays 08:00–16:00."""
    per_day = 32
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
            start = datetime.datetime.combine(date, datetime.time(8), TZ) + datetime.timedelta(minutes=15 * k)
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


def load(base_url: str, admin_token: str, practices: int, slots: int, progress=None) -> Loaded:  # noqa: ANN001
    """Load the directory and `slots` free Slots; time the Slot load alone."""
    schedules_per_practice = 2
    first_day = datetime.date.today() + datetime.timedelta(days=1)
    out = Loaded(first_day=first_day, bsnrs=[bsnr(p) for p in range(1, practices + 1)])
    out.specialties = sorted({FACHGEBIETE[p % len(FACHGEBIETE)].code for p in range(1, practices + 1)})
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        for batch in _batched(_directory(practices, schedules_per_practice), BUNDLE_SIZE):
            _post(client, batch)
        schedules = [f"b-sched-{p}-{s}" for p in range(1, practices + 1) for s in range(1, 3)]
        t0 = time.perf_counter()
        for batch in _batched(_slots(schedules, slots, first_day), BUNDLE_SIZE):
            _post(client, batch)
            out.slots += len(batch)
            out.all_slot_ids.extend(r["id"] for r in batch)
            # keep a sample of ids for the read workload
            out.slot_ids.extend(r["id"] for r in random.sample(batch, min(len(batch), 50)))
            if progress:
                progress(len(batch))
        out.seconds = time.perf_counter() - t0
    return out
