"""The invariant behind every face (3.2): never two active Appointments on one Slot.

Many clients book the same Slots at once through several server processes sharing one PostgreSQL
database: exactly one wins each Slot, every loser gets 409 `slot-unavailable`, and the database holds one
active Appointment per Slot. This is what the conditional update on the Slot's claim row decides.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.server import Credentials, Server, start_server

CLIENTS = 50
SLOTS = 200
WORKERS = 4
ACTIVE = {"booked", "pending", "arrived", "checked-in", "fulfilled"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Four server processes on one fresh PostgreSQL database."""
    directory: Path = tmp_path_factory.mktemp("race")
    with fresh_database("postgresql", directory) as url:
        server = start_server(url, "postgresql", workers=WORKERS, log_dir=directory)
        try:
            yield server
        finally:
            server.stop()


def _directory(server: Server, slots: int) -> tuple[str, list[str]]:
    """A Schedule with `slots` free Slots in the future (written by admin in one transaction)."""
    tag = uuid.uuid4().hex[:8]
    schedule = f"race-{tag}"
    entries = [
        {
            "resource": {
                "resourceType": "Schedule",
                "id": schedule,
                "active": True,
                "actor": [{"reference": f"Location/race-loc-{tag}"}],
            },
            "request": {"method": "PUT", "url": f"Schedule/{schedule}"},
        }
    ]
    ids = []
    for n in range(slots):
        slot_id = f"race-{tag}-{n}"
        day, minute = divmod(n, 48)
        start = f"2031-03-{1 + day:02d}T{8 + minute // 6:02d}:{(minute % 6) * 10:02d}:00+01:00"
        end = f"2031-03-{1 + day:02d}T{8 + minute // 6:02d}:{(minute % 6) * 10 + 9:02d}:00+01:00"
        ids.append(slot_id)
        entries.append(
            {
                "resource": {
                    "resourceType": "Slot",
                    "id": slot_id,
                    "status": "free",
                    "start": start,
                    "end": end,
                    "schedule": {"reference": f"Schedule/{schedule}"},
                },
                "request": {"method": "PUT", "url": f"Slot/{slot_id}"},
            }
        )
    with server.client("admin") as admin:
        reply = admin.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert reply.status_code == 200, reply.text
    return schedule, ids


def _patients(server: Server, tokens: list[str]) -> list[str]:
    """One Patient per client, created by that client (so it may book for it)."""
    ids = []
    for token in tokens:
        reply = httpx.post(
            server.fhir + "/Patient",
            headers={"Authorization": f"Bearer {token}"},
            json={"resourceType": "Patient", "name": [{"family": "Race"}]},
        )
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["id"])
    return ids


def _appointment(slot_id: str, patient_id: str) -> dict:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "appointment-resource",
                "resource": {
                    "resourceType": "Appointment",
                    "status": "proposed",
                    "slot": [{"reference": f"Slot/{slot_id}"}],
                    "participant": [
                        {"actor": {"reference": f"Patient/{patient_id}"}, "status": "needs-action"}
                    ],
                },
            }
        ],
    }


def _clients(server: Server, count: int) -> list[str]:
    creds: list[Credentials] = [server.add_client("scheduling-client", f"racer {n}") for n in range(count)]
    return [server.token_for(c) for c in creds]


async def _race(server: Server, slot_ids: list[str], tokens: list[str], patients: list[str]) -> list[Counter]:
    limits = httpx.Limits(max_connections=len(tokens) + 10)
    async with httpx.AsyncClient(base_url=server.fhir, timeout=300, limits=limits) as http:
        outcomes = []
        for slot_id in slot_ids:
            replies = await asyncio.gather(
                *[
                    http.post(
                        "/Appointment/$book",
                        json=_appointment(slot_id, patient),
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    for token, patient in zip(tokens, patients, strict=True)
                ]
            )
            outcomes.append(Counter(_outcome(r) for r in replies))
        return outcomes


def _outcome(reply: httpx.Response) -> str:
    if reply.status_code == 200:
        return "won"
    codes = [c["code"] for i in reply.json().get("issue", []) for c in i.get("details", {}).get("coding", [])]
    return f"{reply.status_code} {','.join(codes)}"


def _active_per_slot(server: Server, schedule: str) -> Counter:
    with server.client("admin") as admin:
        counts: Counter = Counter()
        url, params = "/Appointment", {"_count": "1000"}
        while url:
            reply = admin.get(url, params=params)
            assert reply.status_code == 200, reply.text
            bundle = reply.json()
            for entry in bundle.get("entry", []):
                appointment = entry["resource"]
                if appointment["status"] in ACTIVE:
                    for slot in appointment.get("slot", []):
                        counts[slot["reference"]] += 1
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
            params = None
        return counts


@pytest.mark.postgresql
def test_fifty_clients_racing_for_each_of_200_slots_leave_exactly_one_winner(cluster: Server) -> None:
    """50 clients × 200 Slots through 4 processes: one winner per Slot, 49 × 409 `slot-unavailable`."""
    schedule, slot_ids = _directory(cluster, SLOTS)
    tokens = _clients(cluster, CLIENTS)
    patients = _patients(cluster, tokens)
    began = time.perf_counter()
    outcomes = asyncio.run(_race(cluster, slot_ids, tokens, patients))
    elapsed = time.perf_counter() - began
    total = sum(outcomes, Counter())
    print(
        f"\nrace: {SLOTS} slots x {CLIENTS} clients via {WORKERS} processes in {elapsed:.1f} s: {dict(total)}"
    )
    assert all(o["won"] == 1 for o in outcomes), [o for o in outcomes if o["won"] != 1][:3]
    assert total == Counter({"won": SLOTS, "409 slot-unavailable": SLOTS * (CLIENTS - 1)}), dict(total)
    active = _active_per_slot(cluster, schedule)
    assert set(active.values()) == {1}
    assert len(active) >= SLOTS


@pytest.mark.postgresql
def test_concurrent_holds_and_books_on_overlapping_slots_never_double_book(cluster: Server) -> None:
    """Holds and bookings of overlapping Slot sets at once: every Slot ends with at most one booking and a
    booking never lands on a Slot held by someone else."""
    schedule, slot_ids = _directory(cluster, 20)
    tokens = _clients(cluster, 20)
    patients = _patients(cluster, tokens)

    async def attempt(http: httpx.AsyncClient, n: int) -> list[tuple[str, str, int]]:
        token, patient = tokens[n], patients[n]
        headers = {"Authorization": f"Bearer {token}"}
        done = []
        for slot_id in slot_ids[n % 5 :: 3][:4]:
            hold = await http.post(
                "/Slot/$hold",
                headers=headers,
                json={
                    "resourceType": "Parameters",
                    "parameter": [
                        {"name": "slot-reference", "valueReference": {"reference": f"Slot/{slot_id}"}},
                        {"name": "slot-status", "valueCode": "busy-tentative"},
                    ],
                },
            )
            done.append(("hold", slot_id, hold.status_code))
            book = await http.post("/Appointment/$book", headers=headers, json=_appointment(slot_id, patient))
            done.append(("book", slot_id, book.status_code))
        return done

    async def run() -> list[tuple[str, str, int]]:
        async with httpx.AsyncClient(base_url=cluster.fhir, timeout=120) as http:
            results = await asyncio.gather(*[attempt(http, n) for n in range(len(tokens))])
        return [item for items in results for item in items]

    results = asyncio.run(run())
    assert {status for _, _, status in results} <= {200, 409, 429}
    booked = Counter(slot for kind, slot, status in results if kind == "book" and status == 200)
    assert all(n == 1 for n in booked.values())
    active = _active_per_slot(cluster, schedule)
    assert all(n == 1 for n in active.values())
    assert sum(1 for ref in active if ref.split("/")[1] in slot_ids) == len(booked)
