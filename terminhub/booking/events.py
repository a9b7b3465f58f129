"""What the booking core tells the edges: an Appointment stopped being active.

Faces with their own bookkeeping (referral codes) listen here, so the core needs no country's words.
Listeners run inside the same transaction as the change.
"""

from __future__ import annotations

from collections.abc import Callable

from terminhub.store.repository import Repository

# listener(repo, appointment_id, cause): cause is the role that ended it, or "hub" for an expiry
Listener = Callable[[Repository, str, str], None]
ENDED: list[Listener] = []


def on_ended(listener: Listener) -> None:
    if listener not in ENDED:
        ENDED.append(listener)


def ended(repo: Repository, appointment_id: str, cause: str) -> None:
    for listener in ENDED:
        listener(repo, appointment_id, cause)
