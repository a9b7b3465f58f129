"""Booking workloads through `POST /fhir/Appointment/$book` (contract 3), as a `scheduling-client`.

Contention: many clients race for a few hot Slots; exactly one booking per Slot may win, the others must
get 409 `slot-unavailable`. Distinct: every client books Slots nobody else wants, so every answer must be
a 200. Afterwards the database itself is asked whether any Slot carries two active Appointments.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import orjson
from sqlalchemy import create_engine, text

from bench import curve, load
from terminhub.store.database import normalise_url

ACTIVE = frozenset({"booked", "pending", "arrived", "checked-in", "fulfilled"})
HOT_SLOTS = 20
CONTENTION_CONNECTIONS = 64
CONTENTION_TRIES = 5  # hot Slots each connection tries: every Slot is raced for, and the run stays short
MAX_RPS = 4_000  # Slots dealt per second of window: twice the target, and the plans stay small to ship
PATIENT_SYSTEM = "urn:terminhub:bench:patient"


@dataclass
class Booking:
    """What the booking workloads found."""

    contention: load.Result
    points: list[load.Result] = field(default_factory=list)
    hot: list[str] = field(default_factory=list)
    per_slot: Counter = field(default_factory=Counter)  # active Appointments per Slot, from the database


def create_patients(base_url: str, token: str, n: int) -> list[str]:
    """`n` Patients created by the booking client, so that it may name them in its bookings (2.2)."""
    headers = {"Authorization": f"Bearer {token}", **load.JSON}

    def one(i: int) -> str:
        body = {
            "resourceType": "Patient",
            "identifier": [{"system": PATIENT_SYSTEM, "value": f"{i}-{uuid.uuid4().hex[:12]}"}],
            "name": [{"family": f"Bench{i}", "given": ["Lastprobe"]}],
            "birthDate": "1980-01-01",
        }
        resp = client.post("/fhir/Patient", content=orjson.dumps(body), headers=headers)
        if resp.status_code != 201:
            raise RuntimeError(f"Patient create failed: {resp.status_code} {resp.text[:300]}")
        return resp.json()["id"]

    with httpx.Client(base_url=base_url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def book_request(slot_id: str, patient_id: str) -> load.Request:
    """A `$book` of `slot_id` for `patient_id`: a proposed Appointment with one Slot and one Patient."""
    appointment = {
        "resourceType": "Appointment",
        "status": "proposed",
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "participant": [{"actor": {"reference": f"Patient/{patient_id}"}, "status": "needs-action"}],
    }
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "appointment-resource", "resource": appointment}],
    }
    return ("POST", "/fhir/Appointment/$book", orjson.dumps(body))


def _per_connection(connections: int) -> list[list[int]]:
    """Global connection numbers, grouped per process as load.split lays them out."""
    out, n = [], 0
    for size in load.split(connections):
        out.append(list(range(n, n + size)))
        n += size
    return out


def contention_plans(hot: list[str], patients: list[str], connections: int) -> list[list[list[load.Request]]]:
    """Every connection tries CONTENTION_TRIES of the hot Slots, each connection its own random pick."""
    plans = []
    for group in _per_connection(connections):
        procs = []
        for c in group:
            order = random.Random(c).sample(hot, min(CONTENTION_TRIES, len(hot)))
            procs.append([book_request(s, patients[c % len(patients)]) for s in order])
        plans.append(procs)
    return plans


def distinct_plans(slots: list[str], patients: list[str], connections: int) -> list[list[list[load.Request]]]:
    """The Slots dealt out to the connections: no two connections ever ask for the same Slot."""
    plans = []
    for group in _per_connection(connections):
        plans.append(
            [[book_request(s, patients[c % len(patients)]) for s in slots[c::connections]] for c in group]
        )
    return plans


def shares(pool: list[str], lv: curve.Levels) -> list[list[str]]:
    """The free Slots split between the levels by load and window, so that none runs dry early."""
    windows = [lv.short_s] * (len(lv.connections) - 1) + [lv.long_s]
    # one connection books slower than many, but not 8 times slower: beyond 8 the server is the limit
    weights = [min(c, 8) * seconds for c, seconds in zip(lv.connections, windows, strict=True)]
    total, out, start = sum(weights), [], 0
    for w, seconds in zip(weights, windows, strict=True):
        n = min(int(len(pool) * w / total), int(MAX_RPS * seconds))
        out.append(pool[start : start + n])
        start += n
    return out


def active_per_slot(url: str) -> Counter:
    """Active Appointments per Slot id, read from the stored Appointments themselves, not through the API."""
    engine = create_engine(normalise_url(url))
    per_slot: Counter = Counter()
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT content FROM resources WHERE type = 'Appointment' AND NOT deleted")
            )
            for (content,) in rows:
                appointment = orjson.loads(content) if content else {}
                if appointment.get("status") in ACTIVE:
                    for ref in appointment.get("slot", []):
                        per_slot[ref.get("reference", "").removeprefix("Slot/")] += 1
    finally:
        engine.dispose()
    return per_slot


def run(base_url: str, url: str, token: str, slot_ids: list[str], lv: curve.Levels, show) -> Booking:  # noqa: ANN001
    """Contention on HOT_SLOTS Slots, distinct-Slot bookings at every level, then a count in the database."""
    pool = random.Random(7).sample(slot_ids, len(slot_ids))
    hot, rest = pool[:HOT_SLOTS], pool[HOT_SLOTS:]
    patients = create_patients(base_url, token, max(CONTENTION_CONNECTIONS, *lv.connections))
    plans = contention_plans(hot, patients, CONTENTION_CONNECTIONS)
    contention = load.run_plans("book contention", base_url, plans, token=token, seconds=lv.long_s * 4)
    show(contention)
    out = Booking(contention=contention, hot=hot)
    for conns, slots in zip(lv.connections, shares(rest, lv), strict=True):
        last = conns == lv.connections[-1]
        plans = distinct_plans(slots, patients, conns)
        r = load.run_plans("book", base_url, plans, token=token, seconds=lv.long_s if last else lv.short_s)
        show(r)
        out.points.append(r)
    out.per_slot = active_per_slot(url)
    return out


def figures(b: Booking) -> dict:
    """The result keys: the table's, and the details behind them."""
    top = b.points[-1]
    failures = Counter()
    for p in b.points:
        failures.update({k: n for k, n in p.statuses.items() if k != "200"})
    c = b.contention.statuses
    other = {k: n for k, n in c.items() if k not in ("200", "409 slot-unavailable")}
    return {
        "book_rps": round(top.rps, 1),
        "book_p99_ms": round(top.p99_ms, 2),
        "book_p50_ms": round(top.p50_ms, 2),
        "book_connections": top.connections,
        "double_bookings": sum(1 for n in b.per_slot.values() if n > 1),
        "spurious_failures": sum(failures.values()),
        "book_failures": dict(failures),
        "contention_rps": round(b.contention.rps + b.contention.errors / b.contention.seconds, 1),
        "contention_p99_ms": round(b.contention.p99_ms, 2),
        "contention_200s": c.get("200", 0),
        "contention_409s": c.get("409 slot-unavailable", 0),
        "contention_errors": sum(other.values()),
        "contention_other": other,
        "hot_slots": len(b.hot),
        "hot_slots_booked_once": sum(1 for s in b.hot if b.per_slot.get(s) == 1),
    }
