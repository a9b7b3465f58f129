"""Searches by a referral code (4.1 secrecy): the code is normalised and looked up like in every operation,
failed look-ups are refused with their codes, and no link of the result carries the code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import httpx
import pytest

from terminhub.clock import Clock
from terminhub.config import Settings
from terminhub.referral.code import SYSTEM, display
from terminhub.referral.service import ReferralService
from terminhub.store.database import Database
from terminhub.store.repository import Actor, Repository
from tests.support.server import Server

FACHGEBIET = "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_BAS_FACHGEBIET_GROB"


@dataclass(frozen=True)
class Issuer:
    client_id: str
    role: str


def _issue(server: Server) -> str:
    """A referral code issued by the core straight into the server's database."""
    db = Database(server.database_url)
    try:
        with db.transaction(write=True) as conn:
            repo = Repository(conn, Clock(), ZoneInfo("Europe/Berlin"), Actor("t", "referrer", "t"))
            ref = ReferralService(repo, Settings(), repo.tz).issue(
                leistungsmerkmale=[{"system": FACHGEBIET, "code": "01"}],
                priority="urgent",
                issuer=Issuer("test-referrer", "referrer"),
            )
            return ref.code
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client("admin") as client:
        yield client


def test_a_code_search_finds_the_code_in_any_spelling_and_hides_it_in_links(
    server: Server, admin: httpx.Client
) -> None:
    code = _issue(server)
    reply = admin.get("ServiceRequest", params={"identifier": f"{SYSTEM}|{display(code).lower()}"})
    assert reply.status_code == 200, reply.text
    bundle = reply.json()
    assert [e["resource"]["identifier"][0]["value"] for e in bundle["entry"]] == [code]
    for link in bundle["link"]:
        assert code not in link["url"] and display(code) not in link["url"]
        assert "identifier" not in link["url"]
    again = admin.get(bundle["link"][0]["url"])
    assert again.status_code == 200, again.text
    assert [e["resource"]["id"] for e in again.json()["entry"]] == [
        e["resource"]["id"] for e in bundle["entry"]
    ]


def test_appointments_are_found_by_their_code(server: Server, admin: httpx.Client) -> None:
    code = _issue(server)
    slot = {
        "resourceType": "Slot",
        "status": "free",
        "schedule": {"reference": "Schedule/cs"},
        "start": "2031-01-02T08:00:00+01:00",
        "end": "2031-01-02T08:10:00+01:00",
    }
    slot_id = admin.post("Slot", json=slot).json()["id"]
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "start": slot["start"],
        "end": slot["end"],
        "basedOn": [{"identifier": {"system": SYSTEM, "value": code}}],
        "participant": [{"actor": {"display": "Patient"}, "status": "accepted"}],
    }
    created = admin.post("Appointment", json=appointment)
    assert created.status_code == 201, created.text
    reply = admin.get("Appointment", params={"based-on:identifier": f"{SYSTEM}|{display(code)}"})
    assert reply.status_code == 200, reply.text
    assert [e["resource"]["id"] for e in reply.json()["entry"]] == [created.json()["id"]]
    assert all(code not in link["url"] for link in reply.json()["link"])


@pytest.mark.parametrize(
    ("value", "status", "code"),
    [
        ("XN6P-F4HP", 400, "code-malformed"),
        ("XN6PF4HPZ5K0", 400, "code-malformed"),
        ("XN6PF4HPZ5KX", 404, "code-unknown"),
    ],
)
def test_a_bad_or_unknown_code_is_a_failed_look_up(
    admin: httpx.Client, value: str, status: int, code: str
) -> None:
    reply = admin.get("ServiceRequest", params={"identifier": f"{SYSTEM}|{value}"})
    assert reply.status_code == status
    assert reply.json()["issue"][0]["details"]["coding"][0]["code"] == code


def test_failed_look_ups_are_counted_per_client_in_the_database(server: Server) -> None:
    """The counter lives in the database, so it would hold across processes: after a failure the client's
    count is visible to a fresh connection."""
    from sqlalchemy import func, select

    from terminhub.store import schema

    cred = server.add_client("admin", f"prober {time.time_ns()}")
    token = server.token_for(cred)
    with httpx.Client(base_url=server.fhir, headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(3):
            assert client.get("ServiceRequest", params={"identifier": f"{SYSTEM}|nope"}).status_code == 400
    db = Database(server.database_url)
    try:
        with db.transaction() as conn:
            t = schema.rate_counters
            counted = conn.execute(
                select(func.sum(t.c.count)).where(t.c.client_id == cred.client_id)
            ).scalar()
    finally:
        db.dispose()
    assert counted == 3
