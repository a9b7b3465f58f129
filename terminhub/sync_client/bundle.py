"""Reading searchset Bundles: the few facts a sync client needs from a page, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

Key = tuple[str, str]  # (resource type, id)


@dataclass
class Page:
    """One searchset page: its matches in served order, its includes by key, its `next` link, and
    `meta.lastUpdated` (the server's time when it answered)."""

    matches: list[dict] = field(default_factory=list)
    includes: dict[Key, dict] = field(default_factory=dict)
    next_url: str | None = None
    server_time: str | None = None


def read_page(bundle: dict) -> Page:
    """Split a searchset Bundle by search.mode; `outcome` entries (warnings) are not data."""
    page = Page(server_time=(bundle.get("meta") or {}).get("lastUpdated"))
    for entry in bundle.get("entry", []):
        mode = (entry.get("search") or {}).get("mode", "match")
        resource = entry.get("resource")
        if resource is None or mode == "outcome":
            continue
        if mode == "include":
            page.includes[key_of(resource)] = resource
        else:
            page.matches.append(resource)
    page.next_url = next(
        (link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None
    )
    return page


def key_of(resource: dict) -> Key:
    return resource["resourceType"], resource["id"]


def version_of(resource: dict) -> int:
    """`meta.versionId` as a number: versions are compared, never just tested for equality."""
    return int(resource["meta"]["versionId"])


def parse_instant(value: str) -> datetime:
    """A FHIR instant (with offset or `Z`) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_instant(moment: datetime) -> str:
    """An instant with microseconds in UTC, as the hub serves `recorded`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def before(value: str, margin_s: float) -> str:
    """The instant `margin_s` seconds before `value`."""
    return format_instant(parse_instant(value) - timedelta(seconds=margin_s))
