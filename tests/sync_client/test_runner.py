"""The sync loop against an in-memory hub: start position, paging, polling rule, retention, tokens,
crashes. Time is injected: nothing here sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest

from terminhub.sync_client import Hub, HubError, Mirror, SyncRunner
from terminhub.sync_client.bundle import parse_instant
from tests.sync_client.fake_hub import BASE, FakeHub, outcome


@dataclass
class FakeTime:
    """The client's monotonic clock and its sleep; sleeping also moves the hub's clock."""

    hub: FakeHub
    now: float = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.hub.tick(seconds)

    def __post_init__(self) -> None:
        self.slept: list[float] = []


@pytest.fixture
def hub() -> FakeHub:
    fake = FakeHub()
    fake.write("Practitioner", "doc", name=[{"family": "Ärztin"}])
    fake.write("PractitionerRole", "role", practitioner={"reference": "Practitioner/doc"})
    fake.write("Schedule", "on", active=True)
    fake.write("Schedule", "off", active=False)
    for n in range(5):
        fake.write("Slot", f"s{n}", status="free")
    fake.write("Patient", "pat", name=[{"family": "Muster"}])
    fake.write("Appointment", "a1", status="booked", participant=[{"actor": {"reference": "Patient/pat"}}])
    fake.tick(3600)
    return fake


@pytest.fixture
def time_(hub: FakeHub) -> FakeTime:
    return FakeTime(hub)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = Mirror(tmp_path / "mirror.db")
    yield m
    m.close()


def runner_for(hub: FakeHub, mirror: Mirror, time_: FakeTime, **options: object) -> SyncRunner:
    client = Hub(BASE, "practice-1", "secret", http=hub.client(), clock=time_.clock)
    return SyncRunner(client, mirror, sleep=time_.sleep, clock=time_.clock, **options)  # type: ignore[arg-type]


def feed_requests(hub: FakeHub) -> list[dict[str, str]]:
    return [dict(parse_qsl(r.url.query.decode())) for r in hub.requests if r.url.path == "/fhir/Provenance"]


def assert_mirror_is_hub(mirror: Mirror, hub: FakeHub) -> None:
    assert mirror.resources() == hub.current


def test_the_initial_sync_takes_everything_and_starts_the_feed_a_margin_before(
    hub: FakeHub, mirror: Mirror, time_: FakeTime
) -> None:
    hub_time = hub.now
    result = runner_for(hub, mirror, time_).round()
    assert_mirror_is_hub(mirror, hub)  # both Schedules, all Slots over three pages, the Patient
    assert result.initial is not None and result.initial.counts["Slot"] == 5
    assert mirror.state().initial_complete
    [first_poll] = feed_requests(hub)
    start = parse_instant(first_poll["recorded"].removeprefix("gt"))
    assert start == hub_time - timedelta(seconds=60)
    assert first_poll["_include:iterate"] == "Appointment:patient" and first_poll["_count"] == "1000"
    searches = [r for r in hub.requests if r.url.path.endswith("/_search")]
    assert all(r.method == "POST" for r in searches)
    first_slot_page = next(
        r for r in searches if r.url.path == "/fhir/Slot/_search" and b"page=1" in r.content
    )
    assert dict(parse_qsl(first_slot_page.content.decode())) == {"page": "1", "_count": "1000"}


def test_the_feed_applies_changes_page_by_page(hub: FakeHub, mirror: Mirror, time_: FakeTime) -> None:
    runner = runner_for(hub, mirror, time_, interval_s=300)
    runner.round()
    hub.write("Slot", "s1", status="busy")
    hub.delete("Slot", "s2")
    hub.write("Slot", "s9", status="free")
    hub.write("Appointment", "a1", status="cancelled", participant=[{"actor": {"reference": "Patient/pat"}}])
    hub.write("Schedule", "on", visible=False, active=True)  # left the practice's scope
    result = runner.round()
    assert_mirror_is_hub(mirror, hub)
    assert time_.slept == [300]  # the second poll waited for the interval
    assert result.position == hub.provenances[-1]["recorded"] == mirror.state().position
    # Three pages of at most two Provenances: one first page, then `next` links as served.
    assert [("_cursor" in q) for q in feed_requests(hub)] == [False, False, True, True]


def test_too_early_means_waiting_as_long_as_the_hub_says(
    hub: FakeHub, mirror: Mirror, time_: FakeTime
) -> None:
    runner_for(hub, mirror, time_).round()
    hub.write("Slot", "s1", status="busy")
    # A new runner (a restart) knows nothing of the last poll: the hub tells it to wait.
    hub.tick(100)
    runner_for(hub, mirror, time_).round()
    assert time_.slept == [200]
    assert_mirror_is_hub(mirror, hub)


def test_an_expired_position_means_a_new_initial_sync(hub: FakeHub, mirror: Mirror, time_: FakeTime) -> None:
    runner = runner_for(hub, mirror, time_, interval_s=0)
    runner.round()
    with mirror.transaction() as writer:  # a copy of something the hub no longer has
        writer.store_if_newer({"resourceType": "Slot", "id": "stale", "meta": {"versionId": "1"}})
    hub.tick(100 * 86400)
    hub.retention_start = hub.now - timedelta(days=90)
    result = runner.round()
    assert result.initial is not None
    assert_mirror_is_hub(mirror, hub)
    assert parse_instant(mirror.state().position or "") == hub.now - timedelta(seconds=60)


def test_a_401_renews_the_token_once_and_repeats_the_request(
    hub: FakeHub, mirror: Mirror, time_: FakeTime
) -> None:
    runner = runner_for(hub, mirror, time_, interval_s=0)
    runner.round()
    hub.valid_tokens.clear()  # the hub restarted with a new key
    hub.tick(1)
    hub.write("Slot", "s1", status="busy")
    runner.round()
    assert hub.tokens_issued == 2
    assert_mirror_is_hub(mirror, hub)


def test_the_token_is_renewed_before_it_expires(hub: FakeHub, mirror: Mirror, time_: FakeTime) -> None:
    runner = runner_for(hub, mirror, time_, interval_s=300)
    runner.round()
    runner.round()
    runner.round()  # 600 s later: still valid for 300 s
    assert hub.tokens_issued == 1
    runner.round()  # 900 s later: past 840 s, a minute before the end of its 900 s
    assert hub.tokens_issued == 2


def test_refused_credentials_stop_the_client(hub: FakeHub, mirror: Mirror, time_: FakeTime) -> None:
    from terminhub.sync_client.auth import AuthError

    hub.fail("/auth/token", httpx.Response(401, json={"error": "invalid_client"}))
    with pytest.raises(AuthError, match="invalid_client"):
        runner_for(hub, mirror, time_).round()


def test_an_interrupted_initial_sync_starts_again_from_scratch(
    hub: FakeHub, mirror: Mirror, time_: FakeTime
) -> None:
    hub.fail("_cursor=2", httpx.ConnectError("network down"))  # the Slot search's second page
    with pytest.raises(httpx.ConnectError):
        runner_for(hub, mirror, time_).round()
    assert not mirror.state().initial_complete and mirror.resources()  # half a sync in the file
    hub.delete("Slot", "s0")  # meanwhile gone: a fresh start must not keep it
    runner_for(hub, mirror, time_).round()
    assert_mirror_is_hub(mirror, hub)


def test_a_crash_between_pages_resumes_without_missing_or_repeating(
    hub: FakeHub, mirror: Mirror, time_: FakeTime
) -> None:
    runner_for(hub, mirror, time_).round()
    for n in range(5):
        hub.write("Slot", f"s{n}", status="busy")
    hub.tick(400)
    hub.fail("_cursor=2", httpx.ReadTimeout("lost"))
    with pytest.raises(httpx.ReadTimeout):
        runner_for(hub, mirror, time_).round()
    assert mirror.state().position == hub.provenances[-4]["recorded"]  # the first page was committed
    hub.tick(400)
    runner_for(hub, mirror, time_).round()
    assert_mirror_is_hub(mirror, hub)
    targets = [e.target for e in mirror.journal()]
    assert len(targets) == len(set(targets))


def test_run_survives_a_failed_round_and_keeps_the_pace(
    hub: FakeHub, mirror: Mirror, time_: FakeTime
) -> None:
    said: list[str] = []
    runner = runner_for(hub, mirror, time_, interval_s=300, say=said.append)
    runner.round()
    hub.fail("/fhir/Provenance", outcome(503, "unavailable"))
    hub.write("Slot", "s1", status="busy")
    runner.run(rounds=2)
    assert any("round failed" in line for line in said)
    assert time_.slept == [300, 300]
    assert_mirror_is_hub(mirror, hub)


def test_other_refusals_are_raised_with_their_code(hub: FakeHub, mirror: Mirror, time_: FakeTime) -> None:
    hub.fail("/fhir/Slot/_search", outcome(403, "forbidden"))
    with pytest.raises(HubError) as raised:
        runner_for(hub, mirror, time_).round()
    assert raised.value.status == 403 and raised.value.code == "forbidden"


def test_a_position_expired_again_right_after_a_new_sync_is_an_error(
    hub: FakeHub, mirror: Mirror, time_: FakeTime
) -> None:
    runner = runner_for(hub, mirror, time_, interval_s=0)
    runner.round()
    hub.retention_start = hub.now + timedelta(days=1)  # a hub that keeps less than the safety margin
    with pytest.raises(HubError) as raised:
        runner.round()
    assert raised.value.code == "feed-expired"
