"""`/admin/clock` (contract 2.4): the test clock's offset, set by admin, seen by every request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from terminhub.app import create_app
from terminhub.config import Settings
from tests.support.server import Server
from tests.support.unit_db import migrated_database

HOUR = 3600


@pytest.fixture
def clock(server: Server) -> Iterator[httpx.Client]:
    """An admin client for /admin/clock; the offset is back at 0 after the test, whatever happened."""
    with httpx.Client(
        base_url=server.base_url, timeout=60, headers={"Authorization": f"Bearer {server.token('admin')}"}
    ) as client:
        try:
            yield client
        finally:
            assert client.post("/admin/clock", json={"offset_s": 0}).status_code == 200


def _seconds(instant: str) -> float:
    return datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp()


def test_get_answers_the_current_offset(clock: httpx.Client) -> None:
    """GET answers `{"offset_s": N}`, 0 when nothing was set."""
    assert clock.post("/admin/clock", json={"offset_s": 0}).status_code == 200
    reply = clock.get("/admin/clock")
    assert reply.status_code == 200
    assert reply.json() == {"offset_s": 0}


def test_post_sets_the_offset(clock: httpx.Client) -> None:
    """POST `{"offset_s": N}` sets the offset and answers it; GET reads it back."""
    reply = clock.post("/admin/clock", json={"offset_s": 2 * HOUR})
    assert reply.status_code == 200
    assert reply.json() == {"offset_s": 2 * HOUR}
    assert clock.get("/admin/clock").json() == {"offset_s": 2 * HOUR}


def test_offset_is_absolute_not_cumulative(clock: httpx.Client) -> None:
    """Setting the offset twice leaves the second value, not the sum."""
    clock.post("/admin/clock", json={"offset_s": HOUR})
    clock.post("/admin/clock", json={"offset_s": 3 * HOUR})
    assert clock.get("/admin/clock").json() == {"offset_s": 3 * HOUR}


def test_offset_may_be_negative_and_fractional(clock: httpx.Client) -> None:
    """The clock can be set back and by parts of a second."""
    assert clock.post("/admin/clock", json={"offset_s": -90.5}).json() == {"offset_s": -90.5}
    assert clock.get("/admin/clock").json() == {"offset_s": -90.5}


@pytest.mark.parametrize(
    "body",
    [
        b'{"offset_s": "soon"}',
        b'{"offset": 5}',
        b"[1]",
        b"not json",
        b'{"offset_s": true}',
        b'{"offset_s": null}',
        b'{"offset_s": "nan"}',
        b'{"offset_s": "inf"}',
        b'{"offset_s": 1e300}',
    ],
)
def test_bad_bodies_are_refused_and_change_nothing(clock: httpx.Client, body: bytes) -> None:
    """A body that is not `{"offset_s": <finite number of seconds>}` → 400 invalid; the offset stays."""
    clock.post("/admin/clock", json={"offset_s": 60})
    reply = clock.post("/admin/clock", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == "invalid"
    assert clock.get("/admin/clock").json() == {"offset_s": 60}


def test_resources_written_after_setting_the_offset_carry_the_shifted_time(
    server: Server, clock: httpx.Client
) -> None:
    """`meta.lastUpdated` of a write follows the shifted clock (± a few seconds)."""
    offset = 5 * 24 * HOUR
    clock.post("/admin/clock", json={"offset_s": offset})
    with server.client("admin") as admin:
        created = admin.post("Patient", json={"resourceType": "Patient"}).json()
    shift = _seconds(created["meta"]["lastUpdated"]) - time.time()
    assert abs(shift - offset) < 5


def test_audit_events_of_refusals_carry_the_shifted_time(server: Server, clock: httpx.Client) -> None:
    """The clock of the refusal path is shifted too: a refused call's AuditEvent is `recorded` then."""
    clock.post("/admin/clock", json={"offset_s": -HOUR})
    cred = server.add_client("scheduling-client", "clock refusal")
    refused = httpx.post(
        f"{server.fhir}/AuditEvent",
        json={"resourceType": "AuditEvent"},
        headers={"Authorization": f"Bearer {server.token_for(cred)}"},
    )
    assert refused.status_code == 405
    with server.client("admin") as admin:
        found = admin.get("AuditEvent", params={"agent:identifier": f"urn:terminhub:client|{cred.client_id}"})
    [event] = [e["resource"] for e in found.json()["entry"]]
    assert event["outcome"] == "4"
    assert abs(_seconds(event["recorded"]) - time.time() + HOUR) < 5


def test_reset_to_zero_restores_real_time(server: Server, clock: httpx.Client) -> None:
    """After setting the offset back to 0, writes carry the real time again."""
    clock.post("/admin/clock", json={"offset_s": 10 * HOUR})
    clock.post("/admin/clock", json={"offset_s": 0})
    with server.client("admin") as admin:
        created = admin.post("Patient", json={"resourceType": "Patient"}).json()
    assert abs(_seconds(created["meta"]["lastUpdated"]) - time.time()) < 5


@pytest.mark.parametrize("role", ["practice", "referrer", "third-party", "scheduling-client"])
def test_only_admin_reads_or_sets_the_clock(server: Server, clock: httpx.Client, role: str) -> None:
    """Every other role gets 403 forbidden, for GET and POST; the offset stays."""
    clock.post("/admin/clock", json={"offset_s": 7})
    headers = {"Authorization": f"Bearer {server.token(role)}"}
    for reply in (
        httpx.get(f"{server.base_url}/admin/clock", headers=headers),
        httpx.post(f"{server.base_url}/admin/clock", headers=headers, json={"offset_s": 99}),
    ):
        assert reply.status_code == 403, reply.text
        assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == "forbidden"
    assert clock.get("/admin/clock").json() == {"offset_s": 7}


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic YWRtaW46YWRtaW4="])
def test_the_clock_needs_a_token(server: Server, authorization: str | None) -> None:
    """Without a valid bearer token → 401 unauthorized with `WWW-Authenticate: Bearer`."""
    headers = {"Authorization": authorization} if authorization else {}
    for reply in (
        httpx.get(f"{server.base_url}/admin/clock", headers=headers),
        httpx.post(f"{server.base_url}/admin/clock", headers=headers, json={"offset_s": 99}),
    ):
        assert reply.status_code == 401, reply.text
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == "unauthorized"


def test_without_the_test_clock_there_is_no_clock_endpoint(tmp_path) -> None:  # noqa: ANN001
    """Outside test mode (TERMINHUB_TEST_CLOCK off, as in production) `/admin/clock` does not exist: 404."""

    async def ask(app) -> tuple[int, int]:  # noqa: ANN001
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
            read = await client.get("/admin/clock")
            write = await client.post("/admin/clock", json={"offset_s": 60})
            return read.status_code, write.status_code

    with migrated_database("sqlite", tmp_path) as db:
        assert asyncio.run(ask(create_app(Settings(database_url=db.url, test_clock=False)))) == (404, 404)
