"""Applying feed pages: versions decide, a change delivered twice does nothing, nothing goes backwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from terminhub.sync_client.apply import FeedError, apply_page, parse_target
from terminhub.sync_client.bundle import Page
from terminhub.sync_client.mirror import Mirror

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


def resource(resource_type: str, resource_id: str, version: int, **content: object) -> dict:
    return {"resourceType": resource_type, "id": resource_id, "meta": {"versionId": str(version)}, **content}


def provenance(n: int, target: str, activity: str) -> dict:
    return {
        "resourceType": "Provenance",
        "id": f"p{n}",
        "target": [{"reference": target}],
        "recorded": f"2026-03-02T09:00:00.{n:06d}Z",
        "activity": {"coding": [{"system": DATA_OPERATION, "code": activity}]},
    }


def page(*provenances: dict, includes: tuple[dict, ...] = ()) -> Page:
    return Page(matches=list(provenances), includes={(r["resourceType"], r["id"]): r for r in includes})


@pytest.fixture
def mirror(tmp_path: Path) -> Mirror:
    m = Mirror(tmp_path / "mirror.db")
    with m.transaction() as writer:
        writer.store_if_newer(resource("Slot", "held", 3, status="free"))
        writer.finish_initial("2026-03-02T08:59:00.000000Z")
    return m


def apply(mirror: Mirror, p: Page) -> list[str]:
    with mirror.transaction() as writer:
        result = apply_page(writer, p)
    return [e.effect for e in result.entries]


def test_a_created_resource_is_stored_in_its_included_version(mirror: Mirror) -> None:
    new = resource("Slot", "new", 1, status="free")
    assert apply(mirror, page(provenance(1, "Slot/new/_history/1", "CREATE"), includes=(new,))) == [
        "stored v1"
    ]
    assert mirror.resources("Slot")[("Slot", "new")] == new
    assert mirror.state().position == "2026-03-02T09:00:00.000001Z"


def test_the_current_version_is_stored_even_for_an_older_change(mirror: Mirror) -> None:
    current = resource("Slot", "held", 5, status="busy")
    effects = apply(
        mirror,
        page(
            provenance(1, "Slot/held/_history/4", "UPDATE"),
            provenance(2, "Slot/held/_history/5", "UPDATE"),
            includes=(current,),
        ),
    )
    assert effects == ["stored v5", "skipped"]
    assert mirror.versions()[("Slot", "held")] == 5


def test_a_redelivered_change_does_nothing_and_nothing_goes_backwards(mirror: Mirror) -> None:
    # The initial sync already saw version 3; the feed, started a margin earlier, reports versions 2 and 3.
    effects = apply(
        mirror,
        page(
            provenance(1, "Slot/held/_history/2", "UPDATE"),
            provenance(2, "Slot/held/_history/3", "UPDATE"),
            includes=(resource("Slot", "held", 3, status="free"),),
        ),
    )
    assert effects == ["skipped", "skipped"]
    assert mirror.versions()[("Slot", "held")] == 3


def test_a_delete_removes_only_an_older_version(mirror: Mirror) -> None:
    # Deleted as version 2 and re-created since (version 3 held): the old delete must not remove it.
    assert apply(mirror, page(provenance(1, "Slot/held/_history/2", "DELETE"))) == ["skipped"]
    assert ("Slot", "held") in mirror.versions()
    assert apply(mirror, page(provenance(2, "Slot/held/_history/4", "DELETE"))) == ["removed v3"]
    assert mirror.versions() == {}


def test_a_change_without_its_resource_removes_it_from_the_mirror(mirror: Mirror) -> None:
    # Updated, but not included: deleted since, or no longer in the practice's scope.
    assert apply(mirror, page(provenance(1, "Slot/held/_history/4", "UPDATE"))) == ["removed v3 (gone)"]
    assert apply(mirror, page(provenance(2, "Slot/gone/_history/1", "CREATE"))) == ["skipped"]
    assert mirror.versions() == {}


def test_a_resource_that_comes_back_is_stored_again(mirror: Mirror) -> None:
    back = resource("Slot", "held", 5, status="free")
    effects = apply(
        mirror,
        page(
            provenance(1, "Slot/held/_history/4", "UPDATE"),
            includes=(),
        ),
    )
    assert effects == ["removed v3 (gone)"]
    assert apply(mirror, page(provenance(2, "Slot/held/_history/5", "UPDATE"), includes=(back,))) == [
        "stored v5"
    ]


def test_patients_of_included_appointments_are_kept(mirror: Mirror) -> None:
    appointment = resource(
        "Appointment", "a1", 1, status="booked", participant=[{"actor": {"reference": "Patient/pat"}}]
    )
    patient = resource("Patient", "pat", 2, name=[{"family": "Muster"}])
    stray = resource("Organization", "org", 1)
    apply(
        mirror,
        page(provenance(1, "Appointment/a1/_history/1", "CREATE"), includes=(appointment, patient, stray)),
    )
    assert set(mirror.versions()) == {("Slot", "held"), ("Appointment", "a1"), ("Patient", "pat")}


def test_changes_of_other_types_are_ignored_but_move_the_position(mirror: Mirror) -> None:
    effects = apply(mirror, page(provenance(7, "ServiceRequest/sr/_history/2", "UPDATE")))
    assert effects == ["ignored"]
    assert mirror.state().position == "2026-03-02T09:00:00.000007Z"


def test_an_empty_page_keeps_the_position(mirror: Mirror) -> None:
    assert apply(mirror, page()) == []
    assert mirror.state().position == "2026-03-02T08:59:00.000000Z"


def test_the_journal_holds_every_provenance_in_order(mirror: Mirror) -> None:
    new = resource("Slot", "new", 1)
    apply(
        mirror,
        page(
            provenance(1, "Slot/new/_history/1", "CREATE"),
            provenance(2, "Slot/held/_history/4", "DELETE"),
            includes=(new,),
        ),
    )
    assert [(e.target, e.activity, e.effect) for e in mirror.journal()] == [
        ("Slot/new/_history/1", "CREATE", "stored v1"),
        ("Slot/held/_history/4", "DELETE", "removed v3"),
    ]


def test_a_page_that_fails_half_way_changes_nothing(mirror: Mirror) -> None:
    broken = {**provenance(2, "Slot/x/_history/1", "CREATE"), "activity": {"coding": []}}
    with pytest.raises(FeedError):
        apply(
            mirror,
            page(
                provenance(1, "Slot/new/_history/1", "CREATE"),
                broken,
                includes=(resource("Slot", "new", 1),),
            ),
        )
    assert set(mirror.versions()) == {("Slot", "held")}
    assert mirror.state().position == "2026-03-02T08:59:00.000000Z"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Slot/a/_history/3", (("Slot", "a"), 3)),
        ("http://hub/fhir/Appointment/b/_history/12", (("Appointment", "b"), 12)),
    ],
)
def test_targets_are_versioned_references(reference: str, expected: tuple) -> None:
    assert parse_target(reference) == expected


@pytest.mark.parametrize("reference", ["Slot/a", "Slot/a/_history/x", "Slot/a/_history"])
def test_an_unversioned_target_is_refused(reference: str) -> None:
    with pytest.raises(FeedError):
        parse_target(reference)
