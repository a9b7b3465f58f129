"""The practice change feed (contract 5): a Provenance for every change of the synced types, delivered to
the practices whose scope holds the target, oldest first, with the changed resources; the polling rule.

Black-box over HTTP on SQLite and PostgreSQL. Each test registers its own practice clients (the polling
rule counts per client) on a world of two practices built by admin with BSNRs unique to this module.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.support.server import Server

BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"
ERROR_SYSTEM = "urn:terminhub:error"
ACTIVITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
SLOT_IDS = "urn:terminhub:test:feed"
A_DAY_AGO = (datetime.now(UTC) - timedelta(days=1)).isoformat(timespec="seconds")


def unique_bsnr() -> str:
    return "8" + "".join(secrets.choice("0123456789") for _ in range(8))


@dataclass
class Site:
    """One practice as admin registered it."""

    bsnr: str
    organization: str = ""
    practitioner: str = ""
    role: str = ""
    schedule: str = ""


@dataclass
class World:
    server: Server
    admin: httpx.Client
    sites: dict[str, Site] = field(default_factory=dict)

    def practice(self, site: str, name: str = "feed practice") -> httpx.Client:
        """A new practice client of one site: its own polling budget."""
        cred = self.server.add_client("practice", f"{name} {uuid.uuid4().hex[:6]}", (self.sites[site].bsnr,))
        token = self.server.token_for(cred)
        client = httpx.Client(
            base_url=self.server.fhir, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        client.client_id = cred.client_id  # type: ignore[attr-defined]
        return client

    def slot(
        self, site: str, start: str = "2031-03-03T09:00:00+01:00", end: str = "2031-03-03T09:15:00+01:00"
    ) -> dict:
        body = {
            "resourceType": "Slot",
            "identifier": [{"system": SLOT_IDS, "value": uuid.uuid4().hex}],
            "schedule": {"reference": f"Schedule/{self.sites[site].schedule}"},
            "status": "free",
            "start": start,
            "end": end,
        }
        reply = self.admin.post("Slot", json=body)
        assert reply.status_code == 201, reply.text
        return reply.json()


def create(client: httpx.Client, body: dict) -> dict:
    reply = client.post(body["resourceType"], json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()


@pytest.fixture(scope="module")
def world(server: Server) -> World:
    admin = server.client("admin")
    built = World(server, admin)
    for name in ("own", "other"):
        site = Site(unique_bsnr())
        site.organization = create(
            admin,
            {
                "resourceType": "Organization",
                "identifier": [{"system": BSNR_SYSTEM, "value": site.bsnr}],
                "name": f"Praxis {name}",
            },
        )["id"]
        site.practitioner = create(
            admin,
            {
                "resourceType": "Practitioner",
                "identifier": [{"system": ANR_SYSTEM, "value": "1234567"}],
                "name": [{"family": f"Arzt {name}"}],
            },
        )["id"]
        site.role = create(
            admin,
            {
                "resourceType": "PractitionerRole",
                "organization": {"reference": f"Organization/{site.organization}"},
                "practitioner": {"reference": f"Practitioner/{site.practitioner}"},
            },
        )["id"]
        site.schedule = create(
            admin,
            {
                "resourceType": "Schedule",
                "active": True,
                "actor": [{"reference": f"PractitionerRole/{site.role}"}],
            },
        )["id"]
        built.sites[name] = site
    return built


def feed(client: httpx.Client, params: dict | None = None) -> httpx.Response:
    """A feed page from a day ago (well inside the retention)."""
    return client.get("Provenance", params={"recorded": f"gt{A_DAY_AGO}", **(params or {})})


def provenances(reply: httpx.Response) -> list[dict]:
    assert reply.status_code == 200, reply.text
    return [e["resource"] for e in reply.json().get("entry", []) if e["search"]["mode"] == "match"]


def includes(reply: httpx.Response) -> dict[str, dict]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
        for e in reply.json().get("entry", [])
        if e["search"]["mode"] == "include"
    }


def targets(items: list[dict]) -> list[str]:
    return [p["target"][0]["reference"] for p in items]


def changes_of(items: list[dict], resource: str) -> list[tuple[str, str]]:
    """(activity, versioned target) of the Provenances about one resource, in feed order."""
    return [
        (p["activity"]["coding"][0]["code"], p["target"][0]["reference"])
        for p in items
        if p["target"][0]["reference"].startswith(resource + "/_history/")
    ]


def assert_refused(reply: httpx.Response, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    issue = reply.json()["issue"][0]
    assert {"system": ERROR_SYSTEM, "code": code} in issue["details"]["coding"]
    return issue


# -- what a Provenance says ------------------------------------------------------------------------------
def test_a_change_by_a_client_names_it_as_author(world: World) -> None:
    """`agent[0]`: type author, who = the client's id and name, role = its role (section 5)."""
    slot = world.slot("own")
    [provenance] = provenances(world.admin.get("Provenance", params={"target": f"Slot/{slot['id']}"}))
    assert provenance["target"] == [{"reference": f"Slot/{slot['id']}/_history/1"}]
    assert provenance["activity"]["coding"] == [{"system": ACTIVITY_SYSTEM, "code": "CREATE"}]
    [agent] = provenance["agent"]
    assert agent["type"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
        "code": "author",
    }
    assert agent["role"] == [{"coding": [{"system": "urn:terminhub:role", "code": "admin"}]}]
    assert agent["who"] == {
        "identifier": {
            "system": "urn:terminhub:client",
            "value": world.server.credentials["admin"].client_id,
        },
        "display": "test admin",
    }
    assert provenance["recorded"] == provenance["meta"]["lastUpdated"]


def test_create_update_and_delete_each_leave_a_provenance(world: World) -> None:
    practice = world.practice("own")
    slot = create(
        practice,
        {
            "resourceType": "Slot",
            "schedule": {"reference": f"Schedule/{world.sites['own'].schedule}"},
            "status": "free",
            "start": "2031-03-04T09:00:00+01:00",
            "end": "2031-03-04T09:15:00+01:00",
        },
    )
    booked = world.admin.put(f"Slot/{slot['id']}", json=slot | {"status": "busy"})
    assert booked.status_code == 200, booked.text
    assert world.admin.delete(f"Slot/{slot['id']}").status_code == 204
    found = provenances(
        world.admin.get("Provenance", params={"target": f"Slot/{slot['id']}", "_count": "10"})
    )
    assert changes_of(found, f"Slot/{slot['id']}") == [
        ("CREATE", f"Slot/{slot['id']}/_history/1"),
        ("UPDATE", f"Slot/{slot['id']}/_history/2"),
        ("DELETE", f"Slot/{slot['id']}/_history/3"),
    ]
    roles = [p["agent"][0]["role"][0]["coding"][0]["code"] for p in found]
    assert roles == ["practice", "admin", "admin"]


def test_changes_of_unsynced_types_leave_none(world: World) -> None:
    """Organization, Location, Patient and other types are not in the feed."""
    organization = world.sites["own"].organization
    reply = world.admin.get("Provenance", params={"target": f"Organization/{organization}"})
    assert provenances(reply) == []


def test_the_hubs_own_expiry_is_signed_by_the_hub(world: World) -> None:
    """A hold that runs out is written down with the hub as agent (`hub`, TERMINHUB_SYSTEM_NAME)."""
    slot = world.slot("own")
    client = world.server.client("scheduling-client")
    held = client.post(
        "Slot/$hold",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "slot-reference", "valueReference": {"reference": f"Slot/{slot['id']}"}},
                {"name": "slot-status", "valueCode": "busy-tentative"},
            ],
        },
    )
    assert held.status_code == 200, held.text
    try:
        set_clock(world, 3600)
        # a practice's feed search writes down what has expired (2.4)
        feed(world.practice("own"))
    finally:
        set_clock(world, 0)
    found = provenances(world.admin.get("Provenance", params={"target": f"Slot/{slot['id']}"}))
    last = found[-1]
    assert last["target"][0]["reference"] == f"Slot/{slot['id']}/_history/3"
    assert last["agent"][0]["who"] == {
        "identifier": {"system": "urn:terminhub:client", "value": "hub"},
        "display": "116117 Terminservice",
    }
    assert last["agent"][0]["role"][0]["coding"][0]["code"] == "hub"


def set_clock(world: World, offset_s: float) -> None:
    reply = httpx.post(
        world.server.base_url + "/admin/clock",
        json={"offset_s": offset_s},
        headers={"Authorization": f"Bearer {world.server.token('admin')}"},
    )
    assert reply.status_code == 200, reply.text


# -- whose feed ------------------------------------------------------------------------------------------
def test_a_practice_gets_the_changes_in_its_scope_only(world: World) -> None:
    own, other = world.slot("own"), world.slot("other")
    mine = targets(provenances(feed(world.practice("own"), {"_count": "1000"})))
    assert f"Slot/{own['id']}/_history/1" in mine
    assert all(not t.startswith(f"Slot/{other['id']}/") for t in mine)
    theirs = targets(provenances(feed(world.practice("other"), {"_count": "1000"})))
    assert f"Slot/{other['id']}/_history/1" in theirs
    assert all(not t.startswith(f"Slot/{own['id']}/") for t in theirs)


def test_a_practice_reads_its_own_provenances_only(world: World) -> None:
    own = world.slot("own")
    [provenance] = provenances(world.admin.get("Provenance", params={"target": f"Slot/{own['id']}"}))
    assert world.practice("own").get(f"Provenance/{provenance['id']}").status_code == 200
    assert_refused(world.practice("other").get(f"Provenance/{provenance['id']}"), 404, "not-found")


@pytest.mark.parametrize("role", ["referrer", "third-party", "scheduling-client"])
def test_other_roles_may_not_read_the_feed(world: World, role: str) -> None:
    assert_refused(world.server.client(role).get("Provenance"), 403, "forbidden")


def test_a_change_moving_a_resource_between_practices_reaches_both(world: World) -> None:
    """A Provenance belongs to every practice whose scope holds the target's new or previous version."""
    schedule = create(
        world.admin,
        {
            "resourceType": "Schedule",
            "active": True,
            "actor": [{"reference": f"PractitionerRole/{world.sites['own'].role}"}],
        },
    )
    moved = world.admin.put(
        f"Schedule/{schedule['id']}",
        json=schedule | {"actor": [{"reference": f"PractitionerRole/{world.sites['other'].role}"}]},
    )
    assert moved.status_code == 200, moved.text
    update = f"Schedule/{schedule['id']}/_history/2"
    own_reply = feed(world.practice("own"), {"_count": "1000"})
    other_reply = feed(world.practice("other"), {"_count": "1000"})
    assert update in targets(provenances(own_reply))
    assert update in targets(provenances(other_reply))
    # the resource itself is included only where it is now in scope
    assert f"Schedule/{schedule['id']}" not in includes(own_reply)
    assert includes(other_reply)[f"Schedule/{schedule['id']}"]["meta"]["versionId"] == "2"


# -- order and content of a feed page ------------------------------------------------------------------
def test_the_feed_is_oldest_first_with_unique_positions(world: World) -> None:
    for _ in range(3):
        world.slot("own")
    found = provenances(feed(world.practice("own"), {"_count": "1000"}))
    recorded = [p["recorded"] for p in found]
    assert len(recorded) >= 3
    assert recorded == sorted(recorded)
    assert len(set(recorded)) == len(recorded)


def test_the_feed_includes_the_current_version_of_each_changed_resource(world: World) -> None:
    slot = world.slot("own")
    world.admin.put(f"Slot/{slot['id']}", json=slot | {"comment": "changed"}).raise_for_status()
    deleted = world.slot("own")
    world.admin.delete(f"Slot/{deleted['id']}").raise_for_status()
    reply = feed(world.practice("own"), {"_count": "1000"})
    found = includes(reply)
    assert found[f"Slot/{slot['id']}"]["meta"]["versionId"] == "2"
    assert found[f"Slot/{slot['id']}"]["comment"] == "changed"
    assert f"Slot/{deleted['id']}" not in found
    assert changes_of(provenances(reply), f"Slot/{deleted['id']}")[-1][0] == "DELETE"


def test_the_feed_resumes_after_the_last_position_it_served(world: World) -> None:
    """`recorded=gt<last recorded, as served>` returns exactly the later changes."""
    first = world.slot("own")
    reply = feed(world.practice("own"), {"_count": "1000"})
    last = provenances(reply)[-1]["recorded"]
    second = world.slot("own")
    later = provenances(world.practice("own").get("Provenance", params={"recorded": f"gt{last}"}))
    assert targets(later) == [f"Slot/{second['id']}/_history/1"]
    assert all(not t.startswith(f"Slot/{first['id']}/") for t in targets(later))


def test_next_links_page_through_the_feed_without_the_poll_limit(world: World) -> None:
    practice = world.practice("own")
    for _ in range(3):
        world.slot("own")
    reply = feed(practice, {"_count": "2"})
    seen = targets(provenances(reply))
    while True:
        link = next((x["url"] for x in reply.json().get("link", []) if x["relation"] == "next"), None)
        if link is None:
            break
        reply = practice.get(link)
        seen += targets(provenances(reply))
    assert len(seen) == len(set(seen)) >= 3
    everything = targets(provenances(feed(world.practice("own"), {"_count": "1000"})))
    assert seen == everything[: len(seen)]


def test_pages_between_other_practices_changes_hold_each_of_the_practices_own_once(world: World) -> None:
    """A practice's page is read from its own feed positions: others' changes in between neither fill
    its pages nor end them early."""
    mine, theirs = [], []
    for _ in range(3):
        mine.append(world.slot("own")["id"])
        theirs += [world.slot("other")["id"], world.slot("other")["id"]]
    practice = world.practice("own")
    reply = feed(practice, {"_count": "2"})
    pages = [provenances(reply)]
    while link := next((x["url"] for x in reply.json().get("link", []) if x["relation"] == "next"), None):
        reply = practice.get(link)
        pages.append(provenances(reply))
    seen = [t for page in pages for t in targets(page)]
    assert all(len(page) == 2 for page in pages[:-1])
    assert len(seen) == len(set(seen))
    assert {f"Slot/{i}/_history/1" for i in mine} <= set(seen)
    assert not {t for t in seen if t.split("/")[1] in theirs}
    recorded = [p["recorded"] for page in pages for p in page]
    assert recorded == sorted(recorded)


def test_include_iterate_adds_the_patients_of_changed_appointments(world: World) -> None:
    slot = world.slot("own")
    patient = create(world.admin, {"resourceType": "Patient", "name": [{"family": "Feed"}]})
    appointment = create(
        world.admin,
        {
            "resourceType": "Appointment",
            "status": "booked",
            "slot": [{"reference": f"Slot/{slot['id']}"}],
            "participant": [{"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"}],
        },
    )
    reply = feed(world.practice("own"), {"_count": "1000", "_include:iterate": "Appointment:patient"})
    found = includes(reply)
    assert f"Appointment/{appointment['id']}" in found
    assert f"Patient/{patient['id']}" in found


# -- retention -------------------------------------------------------------------------------------------
def test_a_position_older_than_the_retention_is_feed_expired(world: World) -> None:
    issue = assert_refused(
        world.practice("own").get("Provenance", params={"recorded": "gt2020-01-01T00:00:00Z"}),
        422,
        "feed-expired",
    )
    assert "synchronise again" in issue["details"]["text"]


# -- the polling rule ------------------------------------------------------------------------------------
def test_a_second_first_page_within_the_interval_is_too_frequent(world: World) -> None:
    practice = world.practice("own")
    assert feed(practice).status_code == 200
    issue = assert_refused(feed(practice), 429, "poll-too-frequent")
    assert issue["code"] == "throttled"
    retry = feed(practice).headers["Retry-After"]
    assert retry.isdigit() and 1 <= int(retry) <= 300


def test_the_limit_is_per_client(world: World) -> None:
    assert feed(world.practice("own")).status_code == 200
    assert feed(world.practice("own")).status_code == 200


def test_a_refused_first_page_does_not_count(world: World) -> None:
    """Only first pages answered 200 are limited: a malformed one leaves the budget untouched."""
    practice = world.practice("own")
    assert practice.get("Provenance", params={"recorded": "gtnot-a-date"}).status_code == 400
    assert feed(practice).status_code == 200


def test_further_pages_by_page_number_are_not_limited(world: World) -> None:
    practice = world.practice("own")
    assert feed(practice, {"_count": "1"}).status_code == 200
    assert feed(practice, {"_count": "1", "page": "2"}).status_code == 200
    assert feed(practice, {"_count": "1", "page": "3"}).status_code == 200
    # a page 2 of another search is a first page
    assert_refused(feed(practice, {"_count": "2", "page": "2"}), 429, "poll-too-frequent")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("Slot/_history", {}),
        ("Appointment/_history", {}),
        ("Slot", {"_lastUpdated": f"gt{A_DAY_AGO}"}),
        ("Practitioner", {"_lastUpdated": f"gt{A_DAY_AGO}"}),
    ],
)
def test_history_and_last_updated_searches_count_as_feed_polls(world: World, path: str, params: dict) -> None:
    practice = world.practice("own")
    assert feed(practice).status_code == 200
    assert_refused(practice.get(path, params=params), 429, "poll-too-frequent")


def test_reads_and_id_searches_are_never_limited(world: World) -> None:
    slot = world.slot("own")
    [provenance] = provenances(world.admin.get("Provenance", params={"target": f"Slot/{slot['id']}"}))
    practice = world.practice("own")
    assert feed(practice).status_code == 200
    for _ in range(2):
        assert practice.get(f"Slot/{slot['id']}").status_code == 200
        assert practice.get(f"Slot/{slot['id']}/_history/1").status_code == 200
        assert practice.get(f"Provenance/{provenance['id']}").status_code == 200
        assert practice.get("Provenance", params={"_id": provenance["id"]}).status_code == 200
        assert (
            practice.get("Slot", params={"_id": slot["id"], "_lastUpdated": "gt2026-01-01"}).status_code
            == 200
        )
        code = "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode|ABCDFGHJKLMN"
        # an unknown code is 404 code-unknown, but never 429 poll-too-frequent
        assert practice.get("Appointment", params={"based-on:identifier": code}).status_code == 404
        # plain searches of the initial sync are no feed polls
        assert practice.post("Slot/_search", data={"page": "1", "_count": "10"}).status_code == 200


def test_other_roles_are_not_limited(world: World) -> None:
    for _ in range(3):
        assert world.admin.get("Provenance", params={"_count": "1"}).status_code == 200
        assert world.admin.get("Slot/_history", params={"_count": "1"}).status_code == 200


def test_an_expiry_found_by_another_clients_write_is_still_the_hubs(world: World) -> None:
    """A lapsed hold written down because another client holds the Slot: that version's agent is the hub."""
    slot = world.slot("own")
    first = world.server.client("scheduling-client")
    second_cred = world.server.add_client("scheduling-client", "second booker")
    second = httpx.Client(
        base_url=world.server.fhir, headers={"Authorization": f"Bearer {world.server.token_for(second_cred)}"}
    )
    hold = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "slot-reference", "valueReference": {"reference": f"Slot/{slot['id']}"}},
            {"name": "slot-status", "valueCode": "busy-tentative"},
        ],
    }
    assert first.post("Slot/$hold", json=hold).status_code == 200
    try:
        set_clock(world, 3600)
        assert second.post("Slot/$hold", json=hold).status_code == 200
    finally:
        set_clock(world, 0)
    found = provenances(world.admin.get("Provenance", params={"target": f"Slot/{slot['id']}"}))
    agents = [
        (p["target"][0]["reference"].rsplit("/", 1)[1], p["agent"][0]["who"]["identifier"]["value"])
        for p in found
    ]
    assert agents == [
        ("1", world.server.credentials["admin"].client_id),
        ("2", world.server.credentials["scheduling-client"].client_id),
        ("3", "hub"),
        ("4", second_cred.client_id),
    ]
