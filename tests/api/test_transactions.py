"""Batch and transaction Bundles at `POST /fhir`, over real HTTP on SQLite and PostgreSQL (contract 2, 2.5).

A transaction is all or nothing: when it fails, `Server.counts()` (rows of everything a request may change,
AuditEvents aside) shows that nothing was stored. A batch answers each entry on its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.server import Server


@dataclass
class Hub:
    """The admin client and an identifier system of this module's own."""

    server: Server
    http: httpx.Client
    system: str

    def post(self, bundle: dict) -> httpx.Response:
        return self.http.post("", json=bundle)

    def ok(self, bundle: dict) -> dict:
        reply = self.post(bundle)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def slot_ids(self, value: str = "") -> set[str]:
        """Ids of the Slots carrying `<system>|<value>` (every one of this module's Slots for "")."""
        reply = self.http.get("/Slot", params={"identifier": f"{self.system}|{value}", "_count": "1000"})
        assert reply.status_code == 200, reply.text
        return {e["resource"]["id"] for e in reply.json().get("entry", [])}

    def create(self, resource: dict) -> dict:
        reply = self.http.post(f"/{resource['resourceType']}", json=resource)
        assert reply.status_code == 201, reply.text
        return reply.json()


@pytest.fixture(scope="module")
def hub(server: Server) -> Iterator[Hub]:
    with server.client("admin") as http:
        yield Hub(server, http, f"urn:test:{uuid.uuid4().hex}")


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def schedule(hub: Hub, name: str) -> dict:
    return {
        "resourceType": "Schedule",
        "active": True,
        "actor": [{"reference": "Location/tx-somewhere"}],
        "identifier": [{"system": hub.system, "value": name}],
    }


def slot(hub: Hub, schedule_reference: str, name: str, minute: int = 0, **extra: object) -> dict:
    day, minute = divmod(minute, 600)
    start = f"2032-01-{10 + day:02d}T{8 + minute // 60:02d}:{minute % 60:02d}:00+01:00"
    end = f"2032-01-{10 + day:02d}T{8 + minute // 60:02d}:{minute % 60:02d}:30+01:00"
    return {
        "resourceType": "Slot",
        "schedule": {"reference": schedule_reference},
        "status": "free",
        "start": start,
        "end": end,
        "identifier": [{"system": hub.system, "value": name}],
        **extra,
    }


def post(resource: dict, full_url: str | None = None, if_none_exist: str | None = None) -> dict:
    request = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {**({"fullUrl": full_url} if full_url else {}), "resource": resource, "request": request}


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def statuses(response: dict) -> list[str]:
    return [e["response"]["status"].split()[0] for e in response["entry"]]


def assert_refused(reply: httpx.Response, status: int) -> None:
    assert reply.status_code == status, reply.text
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"


# --- urn:uuid references -------------------------------------------------------------------------------


def test_transaction_rewrites_urn_uuid_references_to_assigned_ids(hub: Hub) -> None:
    """A new Schedule and new Slots pointing at it by `urn:uuid:`: the Slots are stored with its new id."""
    schedule_urn = urn()
    entries = [post(slot(hub, schedule_urn, f"ref-{i}", i * 15)) for i in range(3)]
    response = hub.ok(bundle("transaction", *entries, post(schedule(hub, "ref-schedule"), schedule_urn)))
    assert response["type"] == "transaction-response"
    assert statuses(response) == ["201"] * 4
    locations = [e["response"]["location"] for e in response["entry"]]
    assert all(loc.split("/")[0] in ("Slot", "Schedule") and "/_history/1" in loc for loc in locations)
    schedule_id = locations[3].split("/")[1]
    assert hub.http.get(f"/Schedule/{schedule_id}").status_code == 200
    for entry in response["entry"][:3]:
        assert entry["resource"]["schedule"]["reference"] == f"Schedule/{schedule_id}"
        assert entry["response"]["etag"] == 'W/"1"'
    found = hub.http.get("/Slot", params={"schedule": f"Schedule/{schedule_id}"}).json()
    assert {e["resource"]["id"] for e in found["entry"]} == {loc.split("/")[1] for loc in locations[:3]}


def test_transaction_response_entries_follow_the_request_order(hub: Hub) -> None:
    names = ["order-b", "order-a", "order-c"]
    response = hub.ok(bundle("transaction", *[post(slot(hub, "Schedule/tx-x", n)) for n in names]))
    assert [e["resource"]["identifier"][0]["value"] for e in response["entry"]] == names


# --- ifNoneExist: retries create nothing twice (2.5) ---------------------------------------------------


def _sync_bundle(hub: Hub, run: str) -> dict:
    """A practice's report: its Schedule and three Slots, each with a client-assigned identifier."""
    schedule_urn = urn()
    condition = f"identifier={hub.system}|{run}-schedule"
    entries = [post(schedule(hub, f"{run}-schedule"), schedule_urn, condition)]
    for i in range(3):
        name = f"{run}-slot-{i}"
        entries.append(post(slot(hub, schedule_urn, name, i * 15), urn(), f"identifier={hub.system}|{name}"))
    return bundle("transaction", *entries)


def test_if_none_exist_makes_a_retried_transaction_create_nothing_twice(hub: Hub) -> None:
    run = f"sync-{uuid.uuid4().hex[:8]}"
    first = hub.ok(_sync_bundle(hub, run))
    assert statuses(first) == ["201"] * 4
    before = hub.server.counts()
    retry = hub.ok(_sync_bundle(hub, run))
    assert statuses(retry) == ["200"] * 4
    assert [e["resource"]["id"] for e in retry["entry"]] == [e["resource"]["id"] for e in first["entry"]]
    after = hub.server.counts()
    assert {k: after[k] for k in ("resources", "versions", "index")} == {
        k: before[k] for k in ("resources", "versions", "index")
    }
    assert len(hub.slot_ids(f"{run}-slot-0")) == 1


def test_if_none_exist_of_a_retry_resolves_references_to_the_existing_resource(hub: Hub) -> None:
    """A retried report that adds a Slot: the new Slot points at the Schedule stored by the first report."""
    run = f"grow-{uuid.uuid4().hex[:8]}"
    first = hub.ok(_sync_bundle(hub, run))
    schedule_id = first["entry"][0]["resource"]["id"]
    grown = _sync_bundle(hub, run)
    schedule_urn = grown["entry"][0]["fullUrl"]
    grown["entry"].append(
        post(
            slot(hub, schedule_urn, f"{run}-slot-new", 120), urn(), f"identifier={hub.system}|{run}-slot-new"
        )
    )
    retry = hub.ok(grown)
    assert statuses(retry) == ["200"] * 4 + ["201"]
    assert retry["entry"][4]["resource"]["schedule"]["reference"] == f"Schedule/{schedule_id}"


def test_if_none_exist_with_several_matches_fails_the_transaction(hub: Hub) -> None:
    name = f"twice-{uuid.uuid4().hex[:8]}"
    hub.create(slot(hub, "Schedule/tx-x", name))
    hub.create(slot(hub, "Schedule/tx-x", name))
    before = hub.server.counts()
    reply = hub.post(
        bundle(
            "transaction",
            post(slot(hub, "Schedule/tx-x", "other"), urn()),
            post(slot(hub, "Schedule/tx-x", name), urn(), f"identifier={hub.system}|{name}"),
        )
    )
    assert_refused(reply, 412)
    assert hub.server.counts() == before


# --- ifMatch ----------------------------------------------------------------------------------------


def test_if_match_mismatch_fails_the_whole_transaction_with_412(hub: Hub) -> None:
    stored = hub.create(slot(hub, "Schedule/tx-x", f"match-{uuid.uuid4().hex[:8]}"))
    changed = {**stored, "comment": "changed"}
    before = hub.server.counts()
    reply = hub.post(
        bundle(
            "transaction",
            post(slot(hub, "Schedule/tx-x", "never-stored")),
            {
                "resource": changed,
                "request": {"method": "PUT", "url": f"Slot/{stored['id']}", "ifMatch": 'W/"7"'},
            },
        )
    )
    assert_refused(reply, 412)
    assert hub.server.counts() == before
    assert hub.slot_ids("never-stored") == set()
    assert hub.http.get(f"/Slot/{stored['id']}").json()["meta"]["versionId"] == "1"


def test_if_match_that_matches_updates(hub: Hub) -> None:
    stored = hub.create(slot(hub, "Schedule/tx-x", f"match-{uuid.uuid4().hex[:8]}"))
    changed = {**stored, "comment": "changed"}
    response = hub.ok(
        bundle(
            "transaction",
            {
                "resource": changed,
                "request": {"method": "PUT", "url": f"Slot/{stored['id']}", "ifMatch": 'W/"1"'},
            },
        )
    )
    assert statuses(response) == ["200"]
    assert response["entry"][0]["response"]["etag"] == 'W/"2"'
    assert hub.http.get(f"/Slot/{stored['id']}").json()["comment"] == "changed"


# --- failures of a transaction -------------------------------------------------------------------------


def test_an_invalid_entry_fails_the_whole_transaction_with_400(hub: Hub) -> None:
    schedule_urn = urn()
    before = hub.server.counts()
    reply = hub.post(
        bundle(
            "transaction",
            post(schedule(hub, "invalid-schedule"), schedule_urn),
            post(slot(hub, schedule_urn, "valid")),
            post({**slot(hub, schedule_urn, "invalid"), "start": "next tuesday"}),
        )
    )
    assert_refused(reply, 400)
    assert reply.json()["issue"][0]["code"] == "invalid"
    assert hub.server.counts() == before


def test_an_operation_inside_a_transaction_is_400(hub: Hub) -> None:
    before = hub.server.counts()
    hold = {
        "resourceType": "Parameters",
        "parameter": [{"name": "slot-status", "valueCode": "busy-tentative"}],
    }
    reply = hub.post(
        bundle(
            "transaction",
            post(slot(hub, "Schedule/tx-x", "before-hold")),
            {"resource": hold, "request": {"method": "POST", "url": "Slot/$hold"}},
        )
    )
    assert_refused(reply, 400)
    assert hub.server.counts() == before


def test_an_unknown_resource_type_in_an_entry_fails_the_transaction(hub: Hub) -> None:
    before = hub.server.counts()
    reply = hub.post(
        bundle(
            "transaction",
            post(slot(hub, "Schedule/tx-x", "x")),
            {"request": {"method": "DELETE", "url": "Spaceship/1"}},
        )
    )
    assert_refused(reply, 400)
    assert hub.server.counts() == before


@pytest.mark.parametrize("kind", ["collection", "searchset", "document", None])
def test_a_bundle_that_is_not_batch_or_transaction_is_400(hub: Hub, kind: str | None) -> None:
    body = bundle(kind or "transaction", post(slot(hub, "Schedule/tx-x", "collected")))
    if kind is None:
        body.pop("type")
    before = hub.server.counts()
    assert_refused(hub.post(body), 400)
    assert hub.server.counts() == before


def test_a_resource_other_than_a_bundle_is_400(hub: Hub) -> None:
    assert_refused(hub.post(slot(hub, "Schedule/tx-x", "not-a-bundle")), 400)


# --- processing order and GET entries ------------------------------------------------------------------


def test_transaction_processes_deletes_before_creates(hub: Hub) -> None:
    """A DELETE and a POST of different resources: both take effect, and a GET entry (run last) sees both."""
    run = f"order-{uuid.uuid4().hex[:8]}"
    old = hub.create(slot(hub, "Schedule/tx-x", f"{run}-old"))
    response = hub.ok(
        bundle(
            "transaction",
            {
                "request": {
                    "method": "GET",
                    "url": f"Slot?identifier={hub.system}|{run}-old,{hub.system}|{run}-new",
                }
            },
            post(slot(hub, "Schedule/tx-x", f"{run}-new")),
            {"request": {"method": "DELETE", "url": f"Slot/{old['id']}"}},
        )
    )
    assert statuses(response) == ["200", "201", "204"]
    searchset = response["entry"][0]["resource"]
    seen = [e["resource"]["identifier"][0]["value"] for e in searchset.get("entry", [])]
    assert seen == [f"{run}-new"]
    assert hub.http.get(f"/Slot/{old['id']}").status_code == 410
    assert len(hub.slot_ids(f"{run}-new")) == 1


def test_get_entries_of_a_transaction_return_their_results(hub: Hub) -> None:
    stored = hub.create(slot(hub, "Schedule/tx-x", f"read-{uuid.uuid4().hex[:8]}"))
    response = hub.ok(
        bundle(
            "transaction",
            {"request": {"method": "GET", "url": f"Slot/{stored['id']}"}},
            {"request": {"method": "GET", "url": f"Slot?_id={stored['id']}&_total=accurate"}},
        )
    )
    assert statuses(response) == ["200", "200"]
    read, found = (e["resource"] for e in response["entry"])
    assert read == stored
    assert response["entry"][0]["response"]["etag"] == 'W/"1"'
    assert found["type"] == "searchset" and found["total"] == 1 and found["entry"][0]["resource"] == stored


def test_a_failing_get_entry_fails_the_transaction(hub: Hub) -> None:
    before = hub.server.counts()
    reply = hub.post(
        bundle(
            "transaction",
            post(slot(hub, "Schedule/tx-x", "x")),
            {"request": {"method": "GET", "url": "Slot/does-not-exist"}},
        )
    )
    assert_refused(reply, 404)
    assert hub.server.counts() == before


# --- batch ------------------------------------------------------------------------------------------


def test_batch_stores_the_good_entries_and_reports_the_failed_ones(hub: Hub) -> None:
    run = f"batch-{uuid.uuid4().hex[:8]}"
    stored = hub.create(slot(hub, "Schedule/tx-x", f"{run}-stored"))
    response = hub.ok(
        bundle(
            "batch",
            post(slot(hub, "Schedule/tx-x", f"{run}-good")),
            {
                "resource": {**stored, "comment": "x"},
                "request": {"method": "PUT", "url": f"Slot/{stored['id']}", "ifMatch": 'W/"9"'},
            },
            {"request": {"method": "GET", "url": "Slot/does-not-exist"}},
            {"request": {"method": "DELETE", "url": f"Slot/{stored['id']}"}},
        )
    )
    assert response["type"] == "batch-response"
    assert statuses(response) == ["201", "412", "404", "204"]
    for failed in response["entry"][1:3]:
        assert failed["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert len(hub.slot_ids(f"{run}-good")) == 1


def test_batch_answers_an_invalid_resource_in_its_entry_only(hub: Hub) -> None:
    run = f"batch-{uuid.uuid4().hex[:8]}"
    response = hub.ok(
        bundle(
            "batch",
            post({**slot(hub, "Schedule/tx-x", f"{run}-bad"), "start": "soon"}),
            post(slot(hub, "Schedule/tx-x", f"{run}-good")),
        )
    )
    assert statuses(response) == ["400", "201"]
    assert response["entry"][0]["response"]["outcome"]["issue"][0]["code"] == "invalid"
    assert hub.slot_ids(f"{run}-bad") == set() and len(hub.slot_ids(f"{run}-good")) == 1


def test_batch_answers_an_operation_in_its_entry_only(hub: Hub) -> None:
    run = f"batch-{uuid.uuid4().hex[:8]}"
    hold = {
        "resourceType": "Parameters",
        "parameter": [{"name": "slot-status", "valueCode": "busy-tentative"}],
    }
    response = hub.ok(
        bundle(
            "batch",
            {"resource": hold, "request": {"method": "POST", "url": "Slot/$hold"}},
            post(slot(hub, "Schedule/tx-x", f"{run}-good")),
        )
    )
    assert statuses(response) == ["400", "201"]
    assert response["entry"][0]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_batch_get_entries_return_their_results(hub: Hub) -> None:
    stored = hub.create(slot(hub, "Schedule/tx-x", f"read-{uuid.uuid4().hex[:8]}"))
    response = hub.ok(
        bundle(
            "batch",
            {"request": {"method": "GET", "url": f"Slot/{stored['id']}"}},
            {"request": {"method": "GET", "url": f"Slot?_id={stored['id']}"}},
        )
    )
    assert statuses(response) == ["200", "200"]
    assert response["entry"][0]["resource"] == stored
    assert response["entry"][1]["resource"]["entry"][0]["resource"] == stored


def test_batch_honours_if_none_exist(hub: Hub) -> None:
    name = f"batch-once-{uuid.uuid4().hex[:8]}"
    entry = post(slot(hub, "Schedule/tx-x", name), if_none_exist=f"identifier={hub.system}|{name}")
    assert statuses(hub.ok(bundle("batch", entry))) == ["201"]
    assert statuses(hub.ok(bundle("batch", entry))) == ["200"]
    assert len(hub.slot_ids(name)) == 1


# --- size ------------------------------------------------------------------------------------------


def test_a_transaction_of_1000_slots_completes(hub: Hub) -> None:
    """The practice-sync bulk case: one Schedule and 1,000 Slots in one transaction (time printed)."""
    run = f"bulk-{uuid.uuid4().hex[:8]}"
    schedule_urn = urn()
    entries = [post(schedule(hub, f"{run}-schedule"), schedule_urn)]
    entries += [
        post(slot(hub, schedule_urn, f"{run}-{i}", i), urn(), f"identifier={hub.system}|{run}-{i}")
        for i in range(1000)
    ]
    began = time.perf_counter()
    response = hub.ok(bundle("transaction", *entries))
    elapsed = time.perf_counter() - began
    print(f"\n[{hub.server.backend}] transaction of 1,000 Slots (with ifNoneExist): {elapsed:.2f} s")
    assert statuses(response) == ["201"] * 1001
    schedule_id = response["entry"][0]["resource"]["id"]
    found = hub.http.get("/Slot", params={"schedule": f"Schedule/{schedule_id}", "_count": "0"}).json()
    assert found["total"] == 1000


def test_a_urn_uuid_reference_to_no_entry_fails_the_transaction(hub: Hub) -> None:
    """A `urn:uuid:` reference naming no entry of the Bundle is invalid: 400, nothing stored."""
    before = hub.server.counts()
    dangling = slot(hub, urn(), f"dangling-{uuid.uuid4().hex}")
    reply = hub.post(bundle("transaction", post(dangling, urn())))
    assert reply.status_code == 400, reply.text
    assert "names no entry" in reply.json()["issue"][0]["details"]["text"]
    assert hub.server.counts() == before
