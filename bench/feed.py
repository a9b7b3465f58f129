"""The practice change feed (contract 5): `Provenance?recorded=gt…` read page by page through `next` links.

The practice client holds several BSNRs of the loaded data, so its feed carries the Slot load's
Provenances and those of the bookings made on its Slots. The server runs with
TERMINHUB_PROVENANCE_MIN_INTERVAL_S=0, so first pages are not refused as polls too frequent.
"""

from __future__ import annotations

import datetime
from collections import Counter
from urllib.parse import urlencode

from bench import curve, load

PAGE = 1000
READERS = {False: (1, 4, 16), True: (1, 4)}  # by --quick: a 1,000-entry page is heavy, readers are few
MAX_BSNRS = 50  # enough for a feed of many changes; the practice's scope stays a realistic size


def first_page(since: datetime.datetime) -> str:
    """The feed's first page: every change recorded after `since`, oldest first."""
    return "/fhir/Provenance?" + urlencode({"recorded": f"gt{since.isoformat()}", "_count": PAGE})


def run(base_url: str, token: str, since: datetime.datetime, lv: curve.Levels, show) -> list[load.Result]:  # noqa: ANN001
    """Readers of the whole feed at every level; each reader starts over when it reaches the end."""
    first = first_page(since)

    def one(connections: int, seconds: float) -> load.Result:
        return load.run_feed("feed", base_url, first, token=token, connections=connections, seconds=seconds)

    return curve.measure(lv, one, show)


def figures(points: list[load.Result]) -> dict:
    """`feed_changes_per_s` at the highest level, with one reader's rate beside it."""
    top, single = points[-1], points[0]
    seen = sum((Counter(p.statuses) for p in points), Counter())
    return {
        "feed_changes_per_s": round(top.items_per_s, 1),
        "feed_page_p50_ms": round(top.p50_ms, 2),
        "feed_page_p99_ms": round(top.p99_ms, 2),
        "feed_first_page_p50_ms": round(top.first_p50_ms, 2),
        "feed_first_page_p99_ms": round(top.first_p99_ms, 2),
        "feed_readers": top.connections,
        "feed_one_reader_changes_per_s": round(single.items_per_s, 1),
        "feed_errors": {k: n for k, n in seen.items() if k != "200"},
    }
