"""The RESTful interactions of contract 2 over real HTTP: create, read, vread, update, conditional create,
delete, history and `Prefer`, as admin unless a test says otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime

import httpx
import pytest

from tests.api.rest_helpers import JSON_CONTENT_TYPE, TEST_SYSTEM, assert_error, new_id, patient, search
from tests.support.server import Server


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client("admin") as client:
        yield client


def create(admin: httpx.Client, resource: dict | None = None) -> dict:
    reply = admin.post("Patient", json=resource or patient())
    assert reply.status_code == 201, reply.text
    return reply.json()


def updated(resource: dict, **changes: object) -> dict:
    return {k: v for k, v in resource.items() if k != "meta"} | changes


def if_none_exist(marker: str) -> dict[str, str]:
    return {"If-None-Exist": f"identifier={TEST_SYSTEM}|{marker}"}


# -- create ------------------------------------------------------------------------------------------
def test_create_answers_201_with_location_etag_and_the_stored_resource(
    server: Server, admin: httpx.Client
) -> None:
    """Location is the versioned URL of the new resource, ETag its version, meta stamped by the server."""
    sent = patient()
    reply = admin.post("Patient", json=sent)
    assert reply.status_code == 201
    assert reply.headers["content-type"] == JSON_CONTENT_TYPE
    body = reply.json()
    assert reply.headers["location"] == f"{server.fhir}/Patient/{body['id']}/_history/1"
    assert reply.headers["etag"] == 'W/"1"'
    assert body["meta"]["versionId"] == "1"
    assert datetime.fromisoformat(body["meta"]["lastUpdated"]).tzinfo is not None
    assert body["identifier"] == sent["identifier"] and body["name"] == sent["name"]


def test_create_stamps_its_own_meta_but_keeps_the_rest_of_it(admin: httpx.Client) -> None:
    """meta.versionId and meta.lastUpdated are the server's; meta.profile is kept as sent."""
    profile = "https://fhir.kbv.de/StructureDefinition/KBV_PR_FOR_Patient|1.1.0"
    sent = patient(meta={"versionId": "42", "lastUpdated": "2001-01-01T00:00:00Z", "profile": [profile]})
    body = create(admin, sent)
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"] > "2020"
    assert body["meta"]["profile"] == [profile]


def test_create_assigns_the_id_even_when_the_body_carries_one(admin: httpx.Client) -> None:
    chosen = new_id()
    body = create(admin, patient(id=chosen))
    assert body["id"] != chosen
    assert admin.get(f"Patient/{chosen}").status_code == 404


# -- read and vread ----------------------------------------------------------------------------------
def test_read_answers_the_resource_with_etag_and_last_modified(admin: httpx.Client) -> None:
    created = create(admin)
    reply = admin.get(f"Patient/{created['id']}")
    assert reply.status_code == 200
    assert reply.json() == created
    assert reply.headers["etag"] == 'W/"1"'
    last_modified = parsedate_to_datetime(reply.headers["last-modified"])
    stamped = datetime.fromisoformat(created["meta"]["lastUpdated"])
    assert abs((last_modified - stamped).total_seconds()) < 1


def test_vread_answers_the_version_asked_for(admin: httpx.Client) -> None:
    created = create(admin)
    admin.put(f"Patient/{created['id']}", json=updated(created, active=False)).raise_for_status()
    reply = admin.get(f"Patient/{created['id']}/_history/1")
    assert reply.status_code == 200
    assert reply.headers["etag"] == 'W/"1"'
    assert reply.json() == created


def test_vread_of_a_version_that_does_not_exist_is_404(admin: httpx.Client) -> None:
    created = create(admin)
    assert_error(admin.get(f"Patient/{created['id']}/_history/7"), 404, "not-found")


def test_read_of_an_unknown_id_is_404(admin: httpx.Client) -> None:
    assert_error(admin.get(f"Patient/{new_id()}"), 404, "not-found")


def test_an_unknown_resource_type_is_404(admin: httpx.Client) -> None:
    assert_error(admin.get(f"Spaceship/{new_id()}"), 404, "not-found")
    assert_error(admin.post("Spaceship", json={"resourceType": "Spaceship"}), 404, "not-found")


# -- update ------------------------------------------------------------------------------------------
def test_update_stores_version_2(admin: httpx.Client) -> None:
    created = create(admin)
    reply = admin.put(f"Patient/{created['id']}", json=updated(created, gender="female"))
    assert reply.status_code == 200
    assert reply.headers["etag"] == 'W/"2"'
    body = reply.json()
    assert body["meta"]["versionId"] == "2" and body["gender"] == "female"
    assert body["meta"]["lastUpdated"] > created["meta"]["lastUpdated"]
    assert admin.get(f"Patient/{created['id']}").json() == body


def test_update_with_a_matching_if_match_succeeds(admin: httpx.Client) -> None:
    created = create(admin)
    reply = admin.put(
        f"Patient/{created['id']}", json=updated(created, active=False), headers={"If-Match": 'W/"1"'}
    )
    assert reply.status_code == 200
    assert reply.headers["etag"] == 'W/"2"'


def test_if_match_may_carry_a_strong_etag(admin: httpx.Client) -> None:
    created = create(admin)
    reply = admin.put(f"Patient/{created['id']}", json=updated(created), headers={"If-Match": '"1"'})
    assert reply.status_code == 200


def test_update_with_a_stale_if_match_is_412_and_changes_nothing(admin: httpx.Client) -> None:
    created = create(admin)
    admin.put(f"Patient/{created['id']}", json=updated(created, active=False)).raise_for_status()
    reply = admin.put(
        f"Patient/{created['id']}", json=updated(created, gender="male"), headers={"If-Match": 'W/"1"'}
    )
    assert_error(reply, 412, "version-conflict")
    current = admin.get(f"Patient/{created['id']}").json()
    assert current["meta"]["versionId"] == "2" and "gender" not in current


def test_update_with_another_id_in_the_body_is_400(admin: httpx.Client) -> None:
    created = create(admin)
    assert_error(admin.put(f"Patient/{created['id']}", json=updated(created, id=new_id())), 400, "invalid")


def test_update_without_an_id_in_the_body_is_400(admin: httpx.Client) -> None:
    created = create(admin)
    body = {k: v for k, v in updated(created).items() if k != "id"}
    assert_error(admin.put(f"Patient/{created['id']}", json=body), 400, "invalid")


def test_update_as_create_by_admin_is_201_at_the_chosen_id(server: Server, admin: httpx.Client) -> None:
    chosen = new_id()
    reply = admin.put(f"Patient/{chosen}", json=patient(id=chosen))
    assert reply.status_code == 201
    assert reply.headers["location"] == f"{server.fhir}/Patient/{chosen}/_history/1"
    assert reply.headers["etag"] == 'W/"1"'
    assert admin.get(f"Patient/{chosen}").json()["id"] == chosen


def test_update_as_create_by_another_role_is_405(server: Server, admin: httpx.Client) -> None:
    """Only admin chooses ids: a scheduling client, which may create Patients, may not PUT a new one."""
    chosen = new_id()
    with server.client("scheduling-client") as client:
        assert_error(client.put(f"Patient/{chosen}", json=patient(id=chosen)), 405, "method-not-allowed")
    assert_error(admin.get(f"Patient/{chosen}"), 404, "not-found")


# -- conditional create ------------------------------------------------------------------------------
def test_conditional_create_without_a_match_creates(admin: httpx.Client) -> None:
    marker = new_id()
    reply = admin.post("Patient", json=patient(marker), headers=if_none_exist(marker))
    assert reply.status_code == 201
    found = search(admin, "Patient", identifier=f"{TEST_SYSTEM}|{marker}")
    assert [p["id"] for p in found] == [reply.json()["id"]]


def test_conditional_create_with_one_match_answers_200_with_that_resource(admin: httpx.Client) -> None:
    marker = new_id()
    existing = create(admin, patient(marker))
    reply = admin.post("Patient", json=patient(marker, gender="other"), headers=if_none_exist(marker))
    assert reply.status_code == 200
    assert reply.json() == existing
    assert reply.headers["etag"] == 'W/"1"'
    assert len(search(admin, "Patient", identifier=f"{TEST_SYSTEM}|{marker}")) == 1


def test_conditional_create_with_several_matches_is_412(admin: httpx.Client) -> None:
    """Ambiguous If-None-Exist creates nothing."""
    marker = new_id()
    create(admin, patient(marker))
    create(admin, patient(marker))
    reply = admin.post("Patient", json=patient(marker), headers=if_none_exist(marker))
    assert_error(reply, 412, "version-conflict")
    assert len(search(admin, "Patient", identifier=f"{TEST_SYSTEM}|{marker}")) == 2


# -- delete ------------------------------------------------------------------------------------------
def test_delete_answers_204_and_a_later_read_410(admin: httpx.Client) -> None:
    created = create(admin)
    reply = admin.delete(f"Patient/{created['id']}")
    assert reply.status_code == 204
    assert reply.content == b""
    assert_error(admin.get(f"Patient/{created['id']}"), 410, "gone")


def test_older_versions_stay_readable_after_delete(admin: httpx.Client) -> None:
    created = create(admin)
    admin.delete(f"Patient/{created['id']}").raise_for_status()
    reply = admin.get(f"Patient/{created['id']}/_history/1")
    assert reply.status_code == 200
    assert reply.json() == created


def test_vread_of_the_deletion_is_410(admin: httpx.Client) -> None:
    created = create(admin)
    admin.delete(f"Patient/{created['id']}").raise_for_status()
    assert_error(admin.get(f"Patient/{created['id']}/_history/2"), 410, "gone")


def test_deleting_again_is_204(admin: httpx.Client) -> None:
    created = create(admin)
    admin.delete(f"Patient/{created['id']}").raise_for_status()
    assert admin.delete(f"Patient/{created['id']}").status_code == 204


def test_update_after_delete_brings_the_resource_back_with_the_next_version(admin: httpx.Client) -> None:
    """The history continues: created (1), deleted (2), created again by PUT (3, 201)."""
    created = create(admin)
    admin.delete(f"Patient/{created['id']}").raise_for_status()
    reply = admin.put(f"Patient/{created['id']}", json=updated(created))
    assert reply.status_code == 201
    assert reply.headers["etag"] == 'W/"3"'
    assert admin.get(f"Patient/{created['id']}").json()["meta"]["versionId"] == "3"


def test_deleted_resources_leave_searches(admin: httpx.Client) -> None:
    marker = new_id()
    created = create(admin, patient(marker))
    admin.delete(f"Patient/{created['id']}").raise_for_status()
    assert search(admin, "Patient", identifier=f"{TEST_SYSTEM}|{marker}") == []


# -- history -----------------------------------------------------------------------------------------
def test_instance_history_lists_every_version_newest_first_including_the_delete(admin: httpx.Client) -> None:
    created = create(admin)
    second = admin.put(f"Patient/{created['id']}", json=updated(created, active=False)).json()
    admin.delete(f"Patient/{created['id']}").raise_for_status()
    reply = admin.get(f"Patient/{created['id']}/_history")
    assert reply.status_code == 200
    bundle = reply.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    entries = bundle["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert "resource" not in entries[0]
    assert entries[1]["resource"] == second and entries[2]["resource"] == created


def test_type_history_holds_the_versions_of_the_type_newest_first(admin: httpx.Client) -> None:
    """`_since` narrows the type's history to this test's writes (other tests write Patients too)."""
    first = create(admin)
    second = create(admin)
    third = admin.put(f"Patient/{first['id']}", json=updated(first, active=False)).json()
    reply = admin.get("Patient/_history", params={"_since": first["meta"]["lastUpdated"], "_count": "1000"})
    assert reply.status_code == 200
    bundle = reply.json()
    assert bundle["type"] == "history"
    assert all(e["fullUrl"].startswith(f"{admin.base_url}Patient/") for e in bundle["entry"])
    ours = [
        (e["resource"]["id"], e["response"]["etag"])
        for e in bundle["entry"]
        if e["fullUrl"].rsplit("/", 1)[-1] in (first["id"], second["id"])
    ]
    assert ours == [(first["id"], 'W/"2"'), (second["id"], 'W/"1"'), (first["id"], 'W/"1"')]
    assert third["meta"]["versionId"] == "2"


# -- Prefer ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("write", ["create", "update"])
def test_prefer_return_minimal_answers_without_a_body(admin: httpx.Client, write: str) -> None:
    headers = {"Prefer": "return=minimal"}
    if write == "create":
        reply = admin.post("Patient", json=patient(), headers=headers)
        assert reply.status_code == 201
        assert reply.headers["location"]
    else:
        created = create(admin)
        reply = admin.put(f"Patient/{created['id']}", json=updated(created), headers=headers)
        assert reply.status_code == 200
    assert reply.content == b""
    assert reply.headers["etag"]


@pytest.mark.parametrize("write", ["create", "update"])
def test_prefer_return_operation_outcome_answers_one(admin: httpx.Client, write: str) -> None:
    headers = {"Prefer": "return=OperationOutcome"}
    if write == "create":
        reply = admin.post("Patient", json=patient(), headers=headers)
        assert reply.status_code == 201
    else:
        created = create(admin)
        reply = admin.put(f"Patient/{created['id']}", json=updated(created), headers=headers)
        assert reply.status_code == 200
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "information"
    assert reply.headers["etag"]


def test_prefer_return_representation_answers_the_resource(admin: httpx.Client) -> None:
    reply = admin.post("Patient", json=patient(), headers={"Prefer": "return=representation"})
    assert reply.status_code == 201
    assert reply.json()["resourceType"] == "Patient"
