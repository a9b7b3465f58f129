"""Applying one page of the change feed to the mirror. Each Provenance names a versioned target; the page
carries the *current* version of every changed resource that still exists and that the practice may see.
Decisions rest on versions only, so a change delivered twice (the initial sync overlaps the feed by a
safety margin) is never applied twice, and nothing is ever applied backwards."""

from __future__ import annotations

from dataclasses import dataclass, field

from terminhub.sync_client.bundle import Key, Page, version_of
from terminhub.sync_client.mirror import JournalEntry, Writer

MIRRORED = ("Practitioner", "PractitionerRole", "Schedule", "Slot", "Appointment")
COMPANIONS = ("Patient",)  # kept as included with Appointments; the feed names no Patient changes
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


class FeedError(Exception):
    """A Provenance the client cannot read: a target without a version, an unknown activity."""


@dataclass
class PageResult:
    """What a page did: its journal entries in order, and the position after it (None: no change)."""

    entries: list[JournalEntry] = field(default_factory=list)
    position: str | None = None
    # Schedules that came into the practice's scope by an update (e.g. moved to its PractitionerRole):
    # their Slots and Appointments came with them, without a change of their own.
    arrived: list[str] = field(default_factory=list)

    def count(self, effect: str) -> int:
        return sum(1 for e in self.entries if e.effect.startswith(effect))


def apply_page(writer: Writer, page: Page) -> PageResult:
    """Apply the Provenances of `page` in served order (oldest first) and set the position to the
    `recorded` of the last one, in the caller's transaction."""
    result = PageResult()
    for provenance in page.matches:
        if provenance.get("resourceType") != "Provenance":
            continue
        entry = _apply_one(writer, provenance, page.includes)
        if entry.target.startswith("Schedule/") and entry.effect.endswith("(new here)"):
            result.arrived.append(parse_target(entry.target)[0][1])
        writer.log(entry)
        result.entries.append(entry)
        result.position = entry.recorded
    for (resource_type, _), resource in page.includes.items():
        if resource_type in COMPANIONS:
            writer.store_if_newer(resource)
    if result.position is not None:
        writer.set_position(result.position)
    return result


def _apply_one(writer: Writer, provenance: dict, includes: dict[Key, dict]) -> JournalEntry:
    target = provenance["target"][0]["reference"]
    key, version = parse_target(target)
    activity = activity_of(provenance)
    recorded = provenance["recorded"]
    if key[0] not in MIRRORED:  # e.g. referral ServiceRequests: not part of this mirror
        return JournalEntry(recorded, target, activity, "ignored")
    held = writer.version(key)
    if activity == "DELETE":
        # Only a delete of a version after the one held: a resource re-created since keeps its copy.
        if held is not None and held < version and writer.remove(key):
            return JournalEntry(recorded, target, activity, f"removed v{held}")
        return JournalEntry(recorded, target, activity, "skipped")
    current = includes.get(key)
    if current is None:
        # Changed, but not served: deleted since, or out of the practice's scope now. A later
        # Provenance brings it back if it returns.
        if held is not None and writer.remove(key):
            return JournalEntry(recorded, target, activity, f"removed v{held} (gone)")
        return JournalEntry(recorded, target, activity, "skipped")
    if writer.store_if_newer(current):
        # A Schedule that was changed elsewhere and is new here came into scope: its Slots come next.
        arrival = " (new here)" if key[0] == "Schedule" and held is None and activity == "UPDATE" else ""
        return JournalEntry(recorded, target, activity, f"stored v{version_of(current)}{arrival}")
    return JournalEntry(recorded, target, activity, "skipped")


def parse_target(reference: str) -> tuple[Key, int]:
    """`Type/id/_history/v` → ((Type, id), v)."""
    parts = reference.split("/")
    if len(parts) < 4 or parts[-2] != "_history" or not parts[-1].isdigit():
        raise FeedError(f"Provenance target is not a versioned reference: {reference!r}")
    return (parts[-4], parts[-3]), int(parts[-1])


def activity_of(provenance: dict) -> str:
    for coding in (provenance.get("activity") or {}).get("coding", []):
        if coding.get("system") == DATA_OPERATION and coding.get("code") in ("CREATE", "UPDATE", "DELETE"):
            return coding["code"]
    raise FeedError(f"Provenance {provenance.get('id')} without a CREATE/UPDATE/DELETE activity")
