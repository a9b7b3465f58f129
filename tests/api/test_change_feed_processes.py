"""The change feed across server processes on one PostgreSQL database (contract 5).

- Feed position: with many concurrent writers in two worker processes, a practice that keeps resuming
  from the last `recorded` it was served sees every change exactly once, in increasing order.
- Polling rule: the limit holds across two separate servers sharing the database.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.server import PRACTICE_BSNR, Server, start_server

pytestmark = pytest.mark.postgresql

BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
WRITERS = 8
SLOTS_PER_WRITER = 20


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("feed-processes")
    with fresh_database("postgresql", directory) as url:
        yield url, directory


def build_schedule(hub: Server) -> str:
    """The test practice's Organization, PractitionerRole and Schedule; returns the Schedule id."""
    admin = hub.client("admin")
    organization = admin.post(
        "Organization",
        json={
            "resourceType": "Organization",
            "identifier": [{"system": BSNR_SYSTEM, "value": PRACTICE_BSNR}],
        },
    ).json()["id"]
    role = admin.post(
        "PractitionerRole",
        json={
            "resourceType": "PractitionerRole",
            "organization": {"reference": f"Organization/{organization}"},
        },
    ).json()["id"]
    reply = admin.post(
        "Schedule",
        json={
            "resourceType": "Schedule",
            "active": True,
            "actor": [{"reference": f"PractitionerRole/{role}"}],
        },
    )
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def slot_body(schedule: str, minute: int) -> dict:
    return {
        "resourceType": "Slot",
        "schedule": {"reference": f"Schedule/{schedule}"},
        "status": "free",
        "start": f"2031-05-05T{8 + minute // 60:02d}:{minute % 60:02d}:00+02:00",
        "end": f"2031-05-05T{8 + minute // 60:02d}:{minute % 60:02d}:30+02:00",
    }


def read_feed(client: httpx.Client, position: str) -> tuple[list[dict], str]:
    """One poll: the Provenances after `position`, following next links; returns them and the new position."""
    found: list[dict] = []
    reply = client.get("Provenance", params={"recorded": f"gt{position}", "_count": "50"})
    while True:
        assert reply.status_code == 200, reply.text
        bundle = reply.json()
        found += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        link = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
        if link is None:
            break
        reply = client.get(link)
    return found, (found[-1]["recorded"] if found else position)


def test_a_resuming_reader_never_misses_a_change_of_concurrent_writers(database: tuple[str, Path]) -> None:
    url, directory = database
    hub = start_server(
        url, "postgresql", workers=2, log_dir=directory, env={"TERMINHUB_PROVENANCE_MIN_INTERVAL_S": "0"}
    )
    try:
        schedule = build_schedule(hub)
        start = hub.client("admin").get("Slot", params={"_count": "1"}).json()["meta"]["lastUpdated"]
        done = threading.Event()
        seen: list[dict] = []

        def reader() -> None:
            position = start
            with hub.client("practice") as client:
                while True:
                    finished = done.is_set()
                    found, position = read_feed(client, position)
                    seen.extend(found)
                    if finished:
                        return

        def writer(n: int) -> None:
            with hub.client("admin") as client:
                for i in range(SLOTS_PER_WRITER):
                    minute = n * SLOTS_PER_WRITER + i
                    if i % 5 == 4:  # now and then a transaction of three
                        entries = [
                            {
                                "resource": slot_body(schedule, minute),
                                "request": {"method": "POST", "url": "Slot"},
                            }
                            for _ in range(3)
                        ]
                        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
                        assert client.post("", json=bundle).status_code == 200
                    else:
                        created = client.post("Slot", json=slot_body(schedule, minute))
                        assert created.status_code == 201, created.text
                        slot = created.json()
                        changed = client.put(f"Slot/{slot['id']}", json=slot | {"comment": uuid.uuid4().hex})
                        assert changed.status_code == 200, changed.text

        read = threading.Thread(target=reader)
        read.start()
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(writer, range(WRITERS)))
        done.set()
        read.join(timeout=120)
        assert not read.is_alive()

        everything, _ = read_feed(hub.client("admin"), start)
        seen_targets = [p["target"][0]["reference"] for p in seen]
        all_targets = [
            p["target"][0]["reference"] for p in everything if "Slot/" in p["target"][0]["reference"]
        ]
        transactions = SLOTS_PER_WRITER // 5
        singles = SLOTS_PER_WRITER - transactions
        assert len(all_targets) == WRITERS * (2 * singles + 3 * transactions)
        assert len(seen_targets) == len(set(seen_targets)), "a change was delivered twice"
        assert sorted(t for t in seen_targets if "Slot/" in t) == sorted(all_targets), "a change was missed"
        recorded = [p["recorded"] for p in seen]
        assert recorded == sorted(recorded) and len(set(recorded)) == len(recorded)
    finally:
        hub.stop()


def test_the_poll_limit_holds_across_two_servers(database: tuple[str, Path]) -> None:
    url, directory = database
    first = start_server(url, "postgresql", log_dir=directory)
    # two hosts of one deployment: one public base URL, so a token is good at both
    second = start_server(url, "postgresql", log_dir=directory, env={"TERMINHUB_BASE_URL": first.base_url})
    try:
        cred = first.add_client("practice", "two servers", (PRACTICE_BSNR,))
        token = first.token_for(cred)
        headers = {"Authorization": f"Bearer {token}"}
        clients = [httpx.Client(base_url=s.fhir, headers=headers, timeout=60) for s in (first, second)]
        position = {
            "recorded": "gt" + clients[0].get("Slot", params={"_count": "1"}).json()["meta"]["lastUpdated"]
        }
        assert clients[0].get("Provenance", params=position).status_code == 200
        refused = clients[1].get("Provenance", params=position)
        assert refused.status_code == 429
        assert refused.json()["issue"][0]["details"]["coding"][0]["code"] == "poll-too-frequent"
        assert int(refused.headers["Retry-After"]) > 200

        # concurrent first pages of a fresh client through both servers: exactly one is answered
        fresh = first.add_client("practice", "two servers, concurrent", (PRACTICE_BSNR,))
        headers = {"Authorization": f"Bearer {first.token_for(fresh)}"}
        racers = [httpx.Client(base_url=s.fhir, headers=headers, timeout=60) for s in (first, second)]
        with ThreadPoolExecutor(10) as pool:
            statuses = list(
                pool.map(lambda i: racers[i % 2].get("Provenance", params=position).status_code, range(10))
            )
        assert sorted(statuses) == [200] + [429] * 9
    finally:
        first.stop()
        second.stop()
