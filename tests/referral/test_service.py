"""The life of a referral code (4.1) without HTTP, on a real database and an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from terminhub.clock import FixedClock
from terminhub.config import Settings
from terminhub.fhir.outcome import FhirError
from terminhub.referral.service import ReferralService, record_failed_lookup, sweep_job
from terminhub.referral.urgency import DAY_US
from terminhub.store.database import Database, WriteNeeded
from terminhub.store.repository import Actor, Repository
from tests.support.unit_db import BACKEND_PARAMS, migrated_database

TZ = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
FACHGEBIET = "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_BAS_FACHGEBIET_GROB"
SETTINGS = Settings(codes_per_day=2)


@dataclass(frozen=True)
class Issuer:
    client_id: str
    role: str


REFERRER = Issuer("pvs", "referrer")
APP = Issuer("app", "third-party")


@pytest.fixture(params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


def _service(conn, clock: FixedClock) -> ReferralService:  # noqa: ANN001
    return ReferralService(Repository(conn, clock, TZ, Actor("x", "referrer", "x")), SETTINGS, TZ)


def _issue(
    db: Database, clock: FixedClock, code: str = "01", priority: str = "urgent", issuer: Issuer = REFERRER
) -> str:
    with db.transaction(write=True) as conn:
        practitioner = {
            "resourceType": "Practitioner",
            "name": [{"family": "Weber"}],
            "identifier": [
                {"system": "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR", "value": "1234567"}
            ],
        }
        ref = _service(conn, clock).issue(
            leistungsmerkmale=[{"system": FACHGEBIET, "code": code}],
            priority=priority,
            issuer=issuer,
            bsnr="721234500",
            practitioner=practitioner if issuer is REFERRER else None,
            formular="muster6" if issuer is REFERRER else None,
        )
        return ref.code


def test_a_new_code_is_a_draft_service_request_of_the_contracts_shape(
    db: Database, clock: FixedClock
) -> None:
    code = _issue(db, clock)
    with db.transaction() as conn:
        ref = _service(conn, clock).lookup(code.lower(), "app")
        resource = ref.service_request.resource()
    assert resource["status"] == "draft" and resource["intent"] == "order"
    assert resource["identifier"][0]["value"] == code
    assert resource["performerType"]["coding"] == [{"system": FACHGEBIET, "code": "01"}]
    assert resource["_priority"]["extension"][0]["valueCoding"]["code"] == "103391001"
    assert resource["requester"] == {"reference": "#requester"}
    assert resource["subject"]["extension"][0]["valueCode"] == "unknown"
    assert resource["extension"] == [{"url": "urn:terminhub:formular", "valueCode": "muster6"}]


def test_third_parties_only_get_referral_free_codes_within_their_daily_quota(
    db: Database, clock: FixedClock
) -> None:
    with pytest.raises(FhirError) as refused:
        _issue(db, clock, "01", issuer=APP)
    assert refused.value.code == "business-rule"
    _issue(db, clock, "05", issuer=APP)
    _issue(db, clock, "09", issuer=APP)
    with pytest.raises(FhirError) as limited:
        _issue(db, clock, "05", issuer=APP)
    assert limited.value.code == "rate-limited"
    clock.advance(DAY_US // 1_000_000)
    _issue(db, clock, "05", issuer=APP)


def test_the_window_opens_at_first_use_and_ends_the_claim(db: Database, clock: FixedClock) -> None:
    code = _issue(db, clock)
    clock.advance(10 * 86400)  # an unused code does not age
    with db.transaction(write=True) as conn:
        service = _service(conn, clock)
        ref = service.open_window(service.lookup(code, "app"))
        assert ref.window_end - ref.window_start == 35 * DAY_US
        assert service.inside(ref, ref.window_end - 1) and not service.inside(ref, ref.window_end)
    clock.advance(35 * 86400)
    with db.transaction(write=True) as conn:
        assert sweep_job(conn, clock, SETTINGS) == 1
    with db.transaction() as conn:
        service = _service(conn, clock)
        ref = service.lookup(code, "app")
        assert ref.status == "completed"
        with pytest.raises(FhirError) as expired:
            service.guard(ref, "search")
        assert expired.value.code == "code-expired"


def test_the_status_table_guards_every_operation(db: Database, clock: FixedClock) -> None:
    code = _issue(db, clock)
    with db.transaction(write=True) as conn:
        service = _service(conn, clock)
        ref = service.lookup(code, "app")
        for allowed in ("search", "book", "status"):
            service.guard(ref, allowed)
        for refused in ("cancel", "info"):
            with pytest.raises(FhirError) as error:
                service.guard(ref, refused)
            assert (error.value.code, error.value.diagnostics) == ("code-status", "draft")
        ref = service.booked(service.open_window(ref), "appointment-1")
        assert ref.status == "active"
        service.guard(ref, "cancel")
        with pytest.raises(FhirError):
            service.guard(ref, "book")


def test_the_patient_forfeits_a_code_by_cancelling_its_second_booking(
    db: Database, clock: FixedClock
) -> None:
    code = _issue(db, clock)
    with db.transaction(write=True) as conn:
        service = _service(conn, clock)
        ref = service.booked(service.open_window(service.lookup(code, "app")), "a1")
        ref = service.cancelled(ref, patient_side=True)
        assert ref.status == "revoked"
        ref = service.booked(ref, "a2")
        assert service.cancelled(ref, patient_side=True).status == "completed"


def test_a_practice_cancellation_never_forfeits(db: Database, clock: FixedClock) -> None:
    code = _issue(db, clock)
    with db.transaction(write=True) as conn:
        service = _service(conn, clock)
        ref = service.booked(service.open_window(service.lookup(code, "app")), "a1")
        ref = service.booked(service.cancelled(ref, patient_side=False), "a2")
        assert service.cancelled(ref, patient_side=False).status == "revoked"


def test_a_cancellation_after_the_window_ends_the_claim(db: Database, clock: FixedClock) -> None:
    code = _issue(db, clock, priority="urgent")
    with db.transaction(write=True) as conn:
        service = _service(conn, clock)
        service.booked(service.open_window(service.lookup(code, "app")), "a1")
    clock.advance(36 * 86400)
    with db.transaction(write=True) as conn:
        service = _service(conn, clock)
        ref = service.cancelled(service.lookup(code, "app"), patient_side=False)
        assert (ref.status, ref.expired) == ("completed", True)


def test_a_search_looks_up_its_code_as_every_operation_does(db: Database, clock: FixedClock) -> None:
    """Known, unknown and malformed codes, below and past the failed look-up limit; a window that still has
    to open makes a read ask to be run again as a write."""
    code = _issue(db, clock)
    with db.transaction() as conn, pytest.raises(WriteNeeded):
        _service(conn, clock).lookup_to_search(code, "app")
    with db.transaction(write=True) as conn:
        service = _service(conn, clock)
        ref = service.open_window(service.lookup_to_search(code, "app"))
        assert ref.window_start == clock.now_us() and ref.service_request.type == "ServiceRequest"
    with db.transaction() as conn:
        found = _service(conn, clock).lookup_to_search(code.lower(), "app")
        assert (found.code, found.window_end) == (ref.code, ref.window_end)
        assert found.service_request.content == ref.service_request.content
    for raw, expected in (("XN6PF4HPZ5KX", "code-unknown"), ("ABC", "code-malformed")):
        with db.transaction() as conn, pytest.raises(FhirError) as refused:
            _service(conn, clock).lookup_to_search(raw, "app")
        assert refused.value.code == expected
    with db.transaction(write=True) as conn:
        for _ in range(600):
            record_failed_lookup(conn, "app", clock.now_us())
    for raw in (code, "XN6PF4HPZ5KX", "ABC"):
        with db.transaction() as conn, pytest.raises(FhirError) as limited:
            _service(conn, clock).lookup_to_search(raw, "app")
        assert limited.value.code == "rate-limited"
        assert limited.value.headers["Retry-After"] == "60"


def test_six_hundred_failed_look_ups_a_minute_shut_the_client_out(db: Database, clock: FixedClock) -> None:
    with db.transaction(write=True) as conn:
        for _ in range(600):
            record_failed_lookup(conn, "prober", clock.now_us())
    with db.transaction() as conn, pytest.raises(FhirError) as limited:
        _service(conn, clock).lookup("XN6PF4HPZ5KX", "prober")
    assert limited.value.code == "rate-limited"
    assert limited.value.headers["Retry-After"] == "60"
    clock.advance(60)
    with db.transaction() as conn, pytest.raises(FhirError) as unknown:
        _service(conn, clock).lookup("XN6PF4HPZ5KX", "prober")
    assert unknown.value.code == "code-unknown"
