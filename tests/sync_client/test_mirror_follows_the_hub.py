"""The reference sync client against a real hub, on SQLite and PostgreSQL: a practice's mirror follows a
day of changes made from every face, and at the end holds exactly what the practice sees on the hub.

A dedicated server (the polling rule counts per client and the test clock is moved) with a poll interval of
1 s. Two practices: `own`, whose practice client keeps the mirror, and `other`, whose data must never reach
it. The client runs in-process through its Python API, as a new runner after a "restart", and through
`terminhub sync --once` as a subprocess.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from terminhub.sync_client import Hub, Mirror, SyncRunner
from terminhub.sync_client.apply import MIRRORED
from tests.support.databases import BACKENDS, fresh_database
from tests.support.server import Credentials, Server, start_server

BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"
FACHGEBIET = "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_BAS_FACHGEBIET_GROB"
SLOT_IDS = "urn:terminhub:test:sync-client"
HOLD_MINUTES = 10


# -- the hub and its two practices -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=[pytest.param(b, marks=getattr(pytest.mark, b)) for b in BACKENDS])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp(f"sync-client-{request.param}")
    with fresh_database(request.param, directory) as url:
        running = start_server(
            url,
            request.param,
            env={"TERMINHUB_PROVENANCE_MIN_INTERVAL_S": "1", "TERMINHUB_HOLD_MINUTES": str(HOLD_MINUTES)},
            log_dir=directory,
        )
        try:
            yield running
        finally:
            running.stop()


def at(days: float, minutes: int = 0) -> str:
    moment = (datetime.now(UTC) + timedelta(days=days, minutes=minutes)).replace(second=0, microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def ok(reply: httpx.Response, *statuses: int) -> dict:
    assert reply.status_code in (statuses or (200,)), reply.text
    return reply.json() if reply.content else {}


@dataclass
class Practice:
    """One practice as admin registered it, and a practice client bound to its BSNR."""

    bsnr: str
    credentials: Credentials | None = None
    client: httpx.Client | None = None
    organization: str = ""
    practitioner: str = ""
    role: str = ""
    schedule: str = ""
    inactive_schedule: str = ""
    slots: list[str] = field(default_factory=list)
    minute: int = 0

    def slot_body(self, days: float = 2) -> dict:
        """A free Slot of this practice's Schedule, each at its own minute, with a reporting identifier."""
        self.minute += 15
        return {
            "resourceType": "Slot",
            "identifier": [{"system": SLOT_IDS, "value": uuid.uuid4().hex}],
            "schedule": {"reference": f"Schedule/{self.schedule}"},
            "status": "free",
            "start": at(days, self.minute),
            "end": at(days, self.minute + 15),
        }


def register(server: Server, admin: httpx.Client, name: str) -> Practice:
    practice = Practice("7" + "".join(secrets.choice("0123456789") for _ in range(8)))
    practice.organization = ok(
        admin.post(
            "Organization",
            json={
                "resourceType": "Organization",
                "identifier": [{"system": BSNR_SYSTEM, "value": practice.bsnr}],
                "name": f"Praxis {name}",
                "address": [{"postalCode": "10115", "city": "Berlin"}],
            },
        ),
        201,
    )["id"]
    practice.practitioner = ok(
        admin.post(
            "Practitioner",
            json={
                "resourceType": "Practitioner",
                "identifier": [{"system": ANR_SYSTEM, "value": "1234567"}],
                "name": [{"family": f"Ärztin {name}"}],
            },
        ),
        201,
    )["id"]
    practice.role = ok(
        admin.post(
            "PractitionerRole",
            json={
                "resourceType": "PractitionerRole",
                "active": True,
                "organization": {"reference": f"Organization/{practice.organization}"},
                "practitioner": {"reference": f"Practitioner/{practice.practitioner}"},
            },
        ),
        201,
    )["id"]
    practice.schedule = ok(
        admin.post(
            "Schedule",
            json={
                "resourceType": "Schedule",
                "active": True,
                "actor": [{"reference": f"PractitionerRole/{practice.role}"}],
                "serviceType": [{"coding": [{"system": FACHGEBIET, "code": "05"}]}],
            },
        ),
        201,
    )["id"]
    # A deactivated Terminprofil too: the initial sync must find it.
    practice.inactive_schedule = ok(
        admin.post(
            "Schedule",
            json={
                "resourceType": "Schedule",
                "active": False,
                "actor": [{"reference": f"PractitionerRole/{practice.role}"}],
            },
        ),
        201,
    )["id"]
    for _ in range(8):
        practice.slots.append(ok(admin.post("Slot", json=practice.slot_body()), 201)["id"])
    practice.credentials = server.add_client("practice", f"TVS {name}", (practice.bsnr,))
    practice.client = httpx.Client(
        base_url=server.fhir,
        headers={"Authorization": f"Bearer {server.token_for(practice.credentials)}"},
        timeout=60,
    )
    return practice


# -- the faces ---------------------------------------------------------------------------------------------
def params(*parts: tuple[str, str, object]) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": n, k: v} for n, k, v in parts]}


def patient() -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:terminhub:test", "value": uuid.uuid4().hex}],
        "name": [{"family": "Musterfrau", "given": ["Erika"]}],
        "birthDate": "1964-08-12",
    }


def hold(scheduler: httpx.Client, slot: str) -> None:
    body = params(
        ("slot-reference", "valueReference", {"reference": f"Slot/{slot}"}),
        ("slot-status", "valueCode", "busy-tentative"),
    )
    ok(scheduler.post("Slot/$hold", json=body))


def book(scheduler: httpx.Client, slot: str) -> dict:
    """Hold and book a Slot for a new Patient, as a scheduling client does."""
    person = ok(scheduler.post("Patient", json=patient()), 201)["id"]
    hold(scheduler, slot)
    appointment = {
        "resourceType": "Appointment",
        "status": "proposed",
        "slot": [{"reference": f"Slot/{slot}"}],
        "participant": [{"actor": {"reference": f"Patient/{person}"}, "status": "needs-action"}],
    }
    out = ok(
        scheduler.post("Appointment/$book", json=params(("appointment-resource", "resource", appointment)))
    )
    return next(p["resource"] for p in out["parameter"] if p["name"] == "appointment")


def referral_code(third: httpx.Client) -> str:
    body = params(("leistungsmerkmale", "valueCoding", {"system": FACHGEBIET, "code": "05"}))
    [out] = ok(third.post("$vermittlungscode_anfordern", json=body))["parameter"]
    return out["valueIdentifier"]["value"]


def book_with_code(third: httpx.Client, code: str, slot: str) -> None:
    body = params(
        ("vermittlungscode", "valueString", code),
        ("slotId", "valueString", slot),
        ("patientendaten", "resource", patient()),
    )
    ok(third.post("$termin_buchen", json=body), 204)


def cancel_with_code(third: httpx.Client, code: str) -> None:
    ok(third.post("$termin_absagen", json=params(("vermittlungscode", "valueString", code))), 204)


def set_status(practice: Practice, appointment_id: str, status: str) -> None:
    assert practice.client is not None
    current = ok(practice.client.get(f"Appointment/{appointment_id}"))
    ok(practice.client.put(f"Appointment/{appointment_id}", json={**current, "status": status}))


def appointment_on(admin: httpx.Client, slot: str, status: str = "booked") -> str:
    found = ok(admin.get("Appointment", params={"slot": f"Slot/{slot}", "status": status}))
    [entry] = [e for e in found.get("entry", []) if e["search"]["mode"] == "match"]
    return entry["resource"]["id"]


def serves_slot_status(server: Server) -> bool:
    return "slotstatus_aktualisieren" in httpx.get(server.fhir + "/metadata").text


# -- what the practice sees, and what the mirror holds -----------------------------------------------------
def hub_view(practice: Practice) -> dict[tuple[str, str], dict]:
    """Everything of the mirrored types the practice sees now, by full searches."""
    assert practice.client is not None
    seen: dict[tuple[str, str], dict] = {}
    for resource_type in MIRRORED:
        reply = practice.client.get(resource_type, params={"_count": "1000"})
        while True:
            bundle = ok(reply)
            for entry in bundle.get("entry", []):
                if entry["search"]["mode"] == "match":
                    resource = entry["resource"]
                    seen[(resource["resourceType"], resource["id"])] = resource
            nxt = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            if nxt is None:
                break
            reply = practice.client.get(nxt)
    return seen


def assert_mirror_matches(mirror: Mirror, practice: Practice, other: Practice, step: str) -> None:
    mirrored = {k: v for k, v in mirror.resources().items() if k[0] in MIRRORED}
    expected = hub_view(practice)
    missing, extra = sorted(set(expected) - set(mirrored)), sorted(set(mirrored) - set(expected))
    assert not missing and not extra, f"after {step}: missing {missing}, not on the hub {extra}"
    stale = [
        (k, mirrored[k]["meta"]["versionId"], expected[k]["meta"]["versionId"])
        for k in expected
        if mirrored[k] != expected[k]
    ]
    assert not stale, f"after {step}: differing (key, mirror version, hub version): {stale}"
    # The Patients of mirrored Appointments came along.
    for (resource_type, _), appointment in mirrored.items():
        if resource_type == "Appointment":
            for participant in appointment["participant"]:
                reference = participant.get("actor", {}).get("reference", "")
                if reference.startswith("Patient/"):
                    assert ("Patient", reference.split("/")[1]) in mirror.resources("Patient"), step
    theirs = {("Organization", other.organization), ("Practitioner", other.practitioner)}
    theirs |= {("PractitionerRole", other.role), ("Schedule", other.schedule)}
    theirs |= {("Slot", s) for s in other.slots}
    assert not theirs & set(mirror.resources()), f"after {step}: the other practice's data in the mirror"


def assert_nothing_applied_twice(mirror: Mirror) -> None:
    journal = mirror.journal()
    recorded = [e.recorded for e in journal]
    assert len(recorded) == len(set(recorded)), "a Provenance was processed twice"
    assert recorded == sorted(recorded, key=lambda r: datetime.fromisoformat(r.replace("Z", "+00:00")))
    effects = Counter(
        (e.target.rsplit("/_history/", 1)[0], e.effect.split(" (")[0])
        for e in journal
        if e.effect.startswith(("stored", "removed"))
    )
    twice = [k for k, n in effects.items() if n > 1]
    assert not twice, f"applied twice: {twice}"


def run_cli(server: Server, practice: Practice, mirror_file: Path) -> subprocess.CompletedProcess:
    assert practice.credentials is not None
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "terminhub",
            "sync",
            "--base-url",
            server.base_url,
            "--client-id",
            practice.credentials.client_id,
            "--client-secret",
            practice.credentials.secret,
            "--mirror",
            str(mirror_file),
            "--once",
            "--interval",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- the day -----------------------------------------------------------------------------------------------
def test_the_mirror_follows_a_day_at_the_hub(hub: Server, tmp_path: Path) -> None:
    admin = hub.client("admin")
    scheduler = hub.client("scheduling-client")
    third = hub.client("third-party")
    clock = httpx.Client(
        base_url=hub.base_url, headers={"Authorization": f"Bearer {hub.token('admin')}"}, timeout=60
    )
    own, other = register(hub, admin, "own"), register(hub, admin, "other")
    assert own.credentials is not None and own.client is not None and other.client is not None
    book(scheduler, other.slots[0])  # the other practice's life goes on alongside

    mirror_file = tmp_path / "own-mirror.db"
    mirror = Mirror(mirror_file)
    said: list[str] = []

    def new_runner() -> SyncRunner:
        assert own.credentials is not None
        client = Hub(hub.base_url, own.credentials.client_id, own.credentials.secret)
        return SyncRunner(client, mirror, interval_s=1, say=said.append)

    runner = new_runner()
    result = runner.round()
    assert result.initial is not None
    assert result.initial.counts["Schedule"] == 2 and result.initial.counts["Slot"] == 8
    assert_mirror_matches(mirror, own, other, "the initial sync")

    def poll(step: str) -> None:
        runner.round()
        assert_mirror_matches(mirror, own, other, step)

    try:
        # The practice reports Slots: one, then three in a transaction, and withdraws two.
        single = ok(own.client.post("Slot", json=own.slot_body(3)), 201)["id"]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": body,
                    "request": {
                        "method": "POST",
                        "url": "Slot",
                        "ifNoneExist": f"identifier={SLOT_IDS}|{body['identifier'][0]['value']}",
                    },
                }
                for body in (own.slot_body(3) for _ in range(3))
            ],
        }
        reported = ok(own.client.post("", json=bundle))
        new_slots = [e["response"]["location"].split("/")[1] for e in reported["entry"]]
        assert len(new_slots) == 3
        ok(own.client.delete(f"Slot/{single}"), 204)
        ok(own.client.delete(f"Slot/{own.slots[7]}"), 204)
        poll("the practice reported and withdrew Slots")

        # The practice takes a Slot for itself ($slotstatus_aktualisieren).
        if serves_slot_status(hub):
            status = params(("status", "valueCode", "busy"))
            ok(own.client.post(f"Slot/{new_slots[0]}/$slotstatus_aktualisieren", json=status), 204)
            poll("the practice set a Slot busy")
        else:
            warnings.warn("step skipped: the hub does not serve $slotstatus_aktualisieren yet", stacklevel=1)

        # A scheduling client holds and books two Slots.
        first = book(scheduler, own.slots[0])
        second = book(scheduler, own.slots[1])
        poll("a scheduling client booked")

        # A third party books with a referral code, cancels, books again.
        code = referral_code(third)
        book_with_code(third, code, own.slots[2])
        poll("a third party booked with a referral code")
        cancel_with_code(third, code)
        book_with_code(third, code, own.slots[3])
        poll("a third party cancelled and booked again")

        # The practice cancels the third party's booking and marks a scheduling client's one fulfilled.
        set_status(own, appointment_on(admin, own.slots[3]), "cancelled")
        set_status(own, first["id"], "fulfilled")
        poll("the practice cancelled one booking and marked one fulfilled")

        # Admin edits both practices' doctors; only one of them is ours.
        for practice in (own, other):
            doctor = ok(admin.get(f"Practitioner/{practice.practitioner}"))
            ok(admin.put(f"Practitioner/{practice.practitioner}", json={**doctor, "gender": "female"}))
        assert second["status"] == "booked"
        # … and hands the deactivated Terminprofil over to the other practice: it leaves our scope.
        moved = ok(admin.get(f"Schedule/{own.inactive_schedule}"))
        moved["actor"] = [{"reference": f"PractitionerRole/{other.role}"}]
        ok(admin.put(f"Schedule/{own.inactive_schedule}", json=moved))
        poll("a Terminprofil left our scope")

        # The other way round: a Terminprofil of the other practice, with Slots and a booking, is handed to
        # ours. Its Slots and the Appointment come with it, without a change of their own.
        handed = ok(
            admin.post(
                "Schedule",
                json={
                    "resourceType": "Schedule",
                    "active": True,
                    "actor": [{"reference": f"PractitionerRole/{other.role}"}],
                },
            ),
            201,
        )
        handed_slots = []
        for _ in range(3):
            body = other.slot_body() | {"schedule": {"reference": f"Schedule/{handed['id']}"}}
            handed_slots.append(ok(admin.post("Slot", json=body), 201)["id"])
        book(scheduler, handed_slots[0])
        handed["actor"] = [{"reference": f"PractitionerRole/{own.role}"}]
        ok(admin.put(f"Schedule/{handed['id']}", json=handed))
        poll("a Terminprofil came into our scope")
        assert ("Slot", handed_slots[2]) in mirror.versions()

        # The client restarts: a new runner on the same mirror file resumes from its position.
        ok(own.client.post("Slot", json=own.slot_body(4)), 201)
        runner = new_runner()
        poll("a restart")

        # A hold runs out on the hub's clock; the practice's next poll hears of it.
        hold(scheduler, own.slots[4])
        poll("a hold")
        assert mirror.resources("Slot")[("Slot", own.slots[4])]["status"] == "busy-tentative"
        ok(clock.post("/admin/clock", json={"offset_s": (HOLD_MINUTES + 1) * 60}))
        poll("the hold expired")
        assert mirror.resources("Slot")[("Slot", own.slots[4])]["status"] == "free"

        # The command line continues the same mirror, and builds a fresh one from scratch.
        ok(own.client.delete(f"Slot/{own.slots[6]}"), 204)
        mirror.close()
        continued = run_cli(hub, own, mirror_file)
        assert continued.returncode == 0, continued.stderr
        fresh_file = tmp_path / "fresh-mirror.db"
        fresh = run_cli(hub, own, fresh_file)
        assert fresh.returncode == 0, fresh.stderr
        assert "initial sync" in fresh.stderr

        mirror = Mirror(mirror_file)
        assert_mirror_matches(mirror, own, other, "terminhub sync --once")
        assert_nothing_applied_twice(mirror)
        assert any(e.effect.startswith("removed") for e in mirror.journal())
        assert any(e.effect == "ignored" for e in mirror.journal())  # the referral code's changes
        copy = Mirror(fresh_file)
        assert_mirror_matches(copy, own, other, "a fresh terminhub sync --once")
        assert {k: v for k, v in copy.resources().items() if k[0] in MIRRORED} == {
            k: v for k, v in mirror.resources().items() if k[0] in MIRRORED
        }
        copy.close()
    finally:
        mirror.close()
        ok(clock.post("/admin/clock", json={"offset_s": 0}))
        for client in (admin, scheduler, third, clock, own.client, other.client):
            client.close()
