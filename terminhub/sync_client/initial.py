"""The initial sync: every resource of the practice's scope, type by type, into an empty mirror, and the
feed position to resume from afterwards, taken before the first search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from terminhub.sync_client.apply import COMPANIONS
from terminhub.sync_client.bundle import before
from terminhub.sync_client.hub import PAGE_SIZE, Hub
from terminhub.sync_client.mirror import Mirror

# What the initial sync asks for, in this order. A practice's search without a filter returns its whole
# scope (deactivated Schedules included).
SEARCHES: tuple[tuple[str, dict[str, str]], ...] = (
    ("Practitioner", {}),
    ("PractitionerRole", {}),
    ("Schedule", {}),
    ("Slot", {}),
    ("Appointment", {"_include": "Appointment:patient"}),
)

# A transaction stamped just before the start instant may commit a moment later; starting the feed this
# much earlier picks it up (and what is delivered twice is recognised by its version).
SAFETY_MARGIN_S = 60.0


@dataclass
class InitialResult:
    start: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def initial_sync(
    hub: Hub,
    mirror: Mirror,
    *,
    margin_s: float = SAFETY_MARGIN_S,
    progress: Callable[[str, int], None] | None = None,
) -> InitialResult:
    """Empty the mirror, fetch everything page by page (one transaction per page), and only then mark
    the sync complete with its start position: interrupted half-way, the next run begins again."""
    result = InitialResult(start=before(hub.server_time(), margin_s))
    with mirror.transaction() as writer:
        writer.start_initial()
    for resource_type, extra in SEARCHES:
        page = hub.search(resource_type, {"page": "1", "_count": str(PAGE_SIZE), **extra})
        while True:
            with mirror.transaction() as writer:
                for resource in page.matches:
                    if resource.get("resourceType") == resource_type:
                        writer.store_if_newer(resource)
                        result.counts[resource_type] = result.counts.get(resource_type, 0) + 1
                for (included_type, _), resource in page.includes.items():
                    if included_type in COMPANIONS:
                        writer.store_if_newer(resource)
            if progress:
                progress(resource_type, result.counts.get(resource_type, 0))
            if not page.next_url:
                break
            page = hub.follow(page.next_url)
    with mirror.transaction() as writer:
        writer.finish_initial(result.start)
    return result
