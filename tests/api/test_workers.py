"""Several server processes on one port and one PostgreSQL database (contract 1, `--workers N`).

A dedicated server with two workers on a fresh database; requests are spread over both processes by the
kernel, so many concurrent requests exercise both with the same token and the same clock.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.server import Server, start_server

REQUESTS = 200
THREADS = 32
MARKER = "urn:terminhub:test:workers"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory: Path = tmp_path_factory.mktemp("workers")
    with fresh_database("postgresql", directory) as url:
        running = start_server(url, "postgresql", workers=2, log_dir=directory)
        try:
            yield running
        finally:
            running.stop()


pytestmark = pytest.mark.postgresql


class Clients:
    """One HTTP client per thread, all with the same admin token."""

    def __init__(self, hub: Server) -> None:
        self.hub = hub
        self.token = hub.token("admin")
        self._local = threading.local()
        self._all: list[httpx.Client] = []
        self._lock = threading.Lock()

    def get(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                base_url=self.hub.fhir, timeout=60, headers={"Authorization": f"Bearer {self.token}"}
            )
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        for client in self._all:
            client.close()


@pytest.fixture
def clients(hub: Server) -> Iterator[Clients]:
    made = Clients(hub)
    yield made
    made.close()


def _create(clients: Clients, run: str, n: int) -> httpx.Response:
    return clients.get().post(
        "Patient", json={"resourceType": "Patient", "identifier": [{"system": MARKER, "value": f"{run}-{n}"}]}
    )


def test_concurrent_creates_all_succeed_and_are_all_stored(hub: Server, clients: Clients) -> None:
    """200 concurrent creates on two processes: every one 201, every one stored once, ids all distinct."""
    run = uuid.uuid4().hex
    with ThreadPoolExecutor(THREADS) as pool:
        replies = list(pool.map(lambda n: _create(clients, run, n), range(REQUESTS)))
    refused = [r.text for r in replies if r.status_code != 201]
    assert refused == []
    ids = {r.json()["id"] for r in replies}
    assert len(ids) == REQUESTS
    found = clients.get().get(
        "Patient",
        params={"identifier": f"{MARKER}|", "_count": "1000", "_total": "accurate", "_id": ",".join(ids)},
    )
    assert found.json()["total"] == REQUESTS


def test_concurrent_reads_and_writes_mixed(hub: Server, clients: Clients) -> None:
    """Reads and creates interleaved from many threads all succeed with the one token."""
    run = uuid.uuid4().hex
    first = _create(clients, run, -1).json()["id"]

    def work(n: int) -> int:
        if n % 2:
            return _create(clients, run, n).status_code
        return clients.get().get(f"Patient/{first}").status_code

    with ThreadPoolExecutor(THREADS) as pool:
        statuses = list(pool.map(work, range(REQUESTS)))
    assert statuses.count(201) == REQUESTS // 2
    assert statuses.count(200) == REQUESTS // 2


def test_a_token_works_on_every_process(hub: Server) -> None:
    """A token issued by one process is accepted by all: fresh connections land on either worker."""
    token = hub.token_for(hub.credentials["scheduling-client"])
    statuses = set()
    for _ in range(40):
        # a new connection each time, so that the kernel may hand it to either process
        reply = httpx.get(
            f"{hub.fhir}/Organization",
            params={"_count": "1"},
            headers={"Authorization": f"Bearer {token}", "Connection": "close"},
        )
        statuses.add(reply.status_code)
    assert statuses == {200}


def test_clock_offset_is_seen_by_every_process(hub: Server, clients: Clients) -> None:
    """An offset set through one request holds for all later requests, whichever process serves them."""
    admin_headers = {"Authorization": f"Bearer {hub.token('admin')}"}
    offset = 3 * 24 * 3600
    assert (
        httpx.post(
            f"{hub.base_url}/admin/clock", json={"offset_s": offset}, headers=admin_headers
        ).status_code
        == 200
    )
    try:

        def check(n: int) -> tuple[float, float]:
            read = httpx.get(f"{hub.base_url}/admin/clock", headers=admin_headers | {"Connection": "close"})
            created = _create(clients, "clock", n).json()
            stamped = datetime.fromisoformat(created["meta"]["lastUpdated"].replace("Z", "+00:00"))
            return read.json()["offset_s"], stamped.timestamp() - time.time()

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(check, range(60)))
        assert {offset_s for offset_s, _ in results} == {offset}
        assert all(abs(shift - offset) < 10 for _, shift in results)
    finally:
        httpx.post(f"{hub.base_url}/admin/clock", json={"offset_s": 0}, headers=admin_headers)
