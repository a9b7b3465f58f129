"""The mirror file: versions never go backwards, transactions are all or nothing, state survives reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from terminhub.sync_client import mirror as mirror_module
from terminhub.sync_client.mirror import JournalEntry, Mirror


def slot(version: int, status: str = "free") -> dict:
    return {"resourceType": "Slot", "id": "s1", "meta": {"versionId": str(version)}, "status": status}


def test_a_fresh_mirror_has_no_position_and_no_complete_sync(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m.db")
    assert mirror.state().position is None and not mirror.state().initial_complete
    assert mirror.resources() == {}


def test_store_if_newer_never_goes_backwards(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m.db")
    with mirror.transaction() as writer:
        assert writer.store_if_newer(slot(2, "busy"))
        assert not writer.store_if_newer(slot(1, "free"))
        assert not writer.store_if_newer(slot(2, "free"))
        assert writer.store_if_newer(slot(10, "free"))  # numbers, not strings: "10" > "2"
    assert mirror.versions() == {("Slot", "s1"): 10}
    assert mirror.resources("Slot")[("Slot", "s1")]["status"] == "free"


def test_a_transaction_that_raises_leaves_nothing(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m.db")
    with mirror.transaction() as writer:
        writer.finish_initial("2026-03-02T09:00:00.000000Z")
    with pytest.raises(RuntimeError), mirror.transaction() as writer:
        writer.store_if_newer(slot(1))
        writer.set_position("2026-03-02T10:00:00.000000Z")
        raise RuntimeError("crash half-way")
    assert mirror.resources() == {}
    assert mirror.state().position == "2026-03-02T09:00:00.000000Z"


def test_state_and_resources_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    first = Mirror(path)
    with first.transaction() as writer:
        writer.store_if_newer(slot(3))
        writer.finish_initial("2026-03-02T09:00:00.000000Z")
    first.close()
    again = Mirror(path)
    assert again.state().initial_complete and again.state().position == "2026-03-02T09:00:00.000000Z"
    assert again.versions() == {("Slot", "s1"): 3}


def test_start_initial_forgets_everything(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m.db")
    with mirror.transaction() as writer:
        writer.store_if_newer(slot(3))
        writer.log(JournalEntry("2026-03-02T09:00:00.000001Z", "Slot/s1/_history/3", "UPDATE", "stored v3"))
        writer.finish_initial("2026-03-02T09:00:00.000000Z")
    with mirror.transaction() as writer:
        writer.start_initial()
    assert mirror.resources() == {} and mirror.journal() == []
    assert mirror.state().position is None and not mirror.state().initial_complete


def test_the_journal_keeps_only_its_last_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror_module, "JOURNAL_KEEP", 3)
    mirror = Mirror(tmp_path / "m.db")
    with mirror.transaction() as writer:
        for n in range(5):
            writer.log(JournalEntry(f"t{n}", f"Slot/s1/_history/{n + 1}", "UPDATE", "skipped"))
    assert [e.recorded for e in mirror.journal()] == ["t2", "t3", "t4"]


def test_removing_a_schedule_removes_its_slots_and_their_appointments(tmp_path: Path) -> None:
    """They were in the practice's scope only through it, and leave it without a Provenance of their own."""

    def resource(resource_type: str, resource_id: str, **fields: object) -> dict:
        return {"resourceType": resource_type, "id": resource_id, "meta": {"versionId": "1"}, **fields}

    mirror = Mirror(tmp_path / "m.db")
    with mirror.transaction() as writer:
        writer.store_if_newer(resource("Schedule", "moved"))
        writer.store_if_newer(resource("Schedule", "kept"))
        writer.store_if_newer(resource("Slot", "a", schedule={"reference": "Schedule/moved"}))
        writer.store_if_newer(resource("Slot", "b", schedule={"reference": "Schedule/kept"}))
        writer.store_if_newer(resource("Appointment", "on-a", slot=[{"reference": "Slot/a"}]))
        writer.store_if_newer(resource("Appointment", "on-b", slot=[{"reference": "Slot/b"}]))
        assert writer.remove(("Schedule", "moved"))
    assert set(mirror.versions()) == {("Schedule", "kept"), ("Slot", "b"), ("Appointment", "on-b")}
