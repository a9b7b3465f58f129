"""The reference sync client of a practice's appointment system (TVS): how to keep a local copy of what
the hub holds for one practice, as a software vendor would build it.

1. Token: `POST /auth/token` (client credentials); renewed before `expires_in` runs out and on a 401
   (`auth.py`).
2. Initial sync: take the hub's time minus a safety margin as the start position *before* the first
   search, then search Practitioner, PractitionerRole, Schedule, Slot and Appointment (with their Patients)
   page by page into an empty mirror; only when all pages are in is the sync marked complete
   (`initial.py`).
3. Change feed: `GET Provenance?recorded=gt<position>`, then every `next` link as served. Each Provenance
   names a versioned target; the page includes the current version of every changed resource the practice
   still sees. Decisions rest on versions, so changes delivered twice are recognised (`apply.py`). Each
   page is committed with its new position in one SQLite transaction (`mirror.py`).
4. Polling rule: at most one first page per interval; a 429 says how long to wait; 422 `feed-expired`
   means: sync again from scratch (`runner.py`).

`terminhub sync --base-url URL --client-id ID --client-secret SECRET --mirror FILE [--once]` runs it.
"""

from terminhub.sync_client.hub import Hub, HubError
from terminhub.sync_client.mirror import Mirror
from terminhub.sync_client.runner import RoundResult, SyncRunner

__all__ = ["Hub", "HubError", "Mirror", "RoundResult", "SyncRunner"]
