"""The sync loop: initial sync when the mirror has none, then the change feed, round after round, within
the hub's polling rule. Time is injected (`sleep`, `clock`), so tests run the rules without waiting."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

from terminhub.sync_client.apply import PageResult, apply_page
from terminhub.sync_client.bundle import Page
from terminhub.sync_client.hub import Hub, HubError
from terminhub.sync_client.initial import SAFETY_MARGIN_S, InitialResult, initial_sync
from terminhub.sync_client.mirror import JournalEntry, Mirror, Writer

DEFAULT_INTERVAL_S = 300.0  # the hub's TERMINHUB_PROVENANCE_MIN_INTERVAL_S default (116117: 5 minutes)


@dataclass
class RoundResult:
    """One round: the initial sync if one ran, and the Provenances processed."""

    initial: InitialResult | None = None
    entries: list[JournalEntry] = field(default_factory=list)
    position: str | None = None

    def count(self, effect: str) -> int:
        return sum(1 for e in self.entries if e.effect.startswith(effect))


class SyncRunner:
    """Keeps one mirror in step with one hub for one practice client."""

    def __init__(
        self,
        hub: Hub,
        mirror: Mirror,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        margin_s: float = SAFETY_MARGIN_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.hub, self.mirror = hub, mirror
        self.interval_s, self.margin_s = interval_s, margin_s
        self.sleep, self.clock, self.say = sleep, clock, say
        self._last_poll: float | None = None

    def round(self) -> RoundResult:
        """Initial sync if the mirror holds no complete one, then the feed until its last page."""
        result = RoundResult()
        if not self.mirror.state().initial_complete:
            result.initial = self._initial()
        resynced = False
        while True:
            try:
                self._poll(result)
                return result
            except HubError as error:
                if error.status == 429:  # poll-too-frequent: the hub says when
                    wait = max(1, error.retry_after or self.interval_s)
                    self.say(f"hub asks to wait {wait} s ({error.code})")
                    self.sleep(wait)
                elif error.status == 422 and error.code == "feed-expired" and not resynced:
                    # Once per round: a position expired right after a fresh initial sync means the
                    # hub keeps less than the safety margin, and syncing again would loop.
                    self.say("feed position expired: syncing again from scratch")
                    result.initial, resynced = self._initial(), True
                else:
                    raise

    def run(self, rounds: int | None = None) -> None:
        """Rounds forever (or `rounds` of them), one per interval. A failed round (hub unreachable,
        5xx) is reported and retried next interval; the mirror keeps its last committed position."""
        done = 0
        while rounds is None or done < rounds:
            try:
                self.round()
            except (HubError, httpx.TransportError) as error:
                self.say(f"round failed, retrying in {self.interval_s:g} s: {error}")
                self._last_poll = self.clock()
            done += 1

    def _initial(self) -> InitialResult:
        result = initial_sync(self.hub, self.mirror, margin_s=self.margin_s)
        counts = ", ".join(f"{n} {t}" for t, n in result.counts.items()) or "nothing"
        self.say(f"initial sync: {counts}; feed starts after {result.start}")
        return result

    def _poll(self, result: RoundResult) -> None:
        """One Provenance search: a first page (paced by `interval_s`), then every `next` link; each
        page is committed with its position."""
        self._pace()
        position = self.mirror.state().position
        assert position is not None, "a complete initial sync always leaves a position"
        asked = self.clock()
        page = self.hub.changes(position)
        self._last_poll = asked  # only a first page answered 200 counts against the limit
        while True:
            with self.mirror.transaction() as writer:
                applied: PageResult = apply_page(writer, page)
                for schedule in applied.arrived:
                    self._fetch_arrived(writer, schedule)
            result.entries += applied.entries
            result.position = applied.position or result.position
            if applied.entries:
                self.say(
                    f"{len(applied.entries)} changes: {applied.count('stored')} stored, "
                    f"{applied.count('removed')} removed, {applied.count('skipped')} already known; "
                    f"position {applied.position}"
                )
            if not page.next_url:
                return
            page = self.hub.follow(page.next_url)

    def _fetch_arrived(self, writer: Writer, schedule: str) -> None:
        """A Schedule that entered the scope brings its Slots and their Appointments (and Patients):
        read them with plain searches, which the polling rule does not limit."""
        slots: list[str] = []
        for page in self._pages("Slot", {"schedule": f"Schedule/{schedule}", "_count": "1000"}):
            for slot in page.matches:
                writer.store_if_newer(slot)
                slots.append(slot["id"])
        for start in range(0, len(slots), 100):
            wanted = ",".join(f"Slot/{s}" for s in slots[start : start + 100])
            query = {"slot": wanted, "_include": "Appointment:patient", "_count": "1000"}
            for page in self._pages("Appointment", query):
                for resource in [*page.matches, *page.includes.values()]:
                    writer.store_if_newer(resource)
        self.say(f"Schedule/{schedule} came into scope with {len(slots)} Slots")

    def _pages(self, resource_type: str, params: dict[str, str]) -> Iterator[Page]:
        page = self.hub.search(resource_type, params)
        yield page
        while page.next_url:
            page = self.hub.follow(page.next_url)
            yield page

    def _pace(self) -> None:
        if self._last_poll is not None:
            wait = self._last_poll + self.interval_s - self.clock()
            if wait > 0:
                self.sleep(wait)
