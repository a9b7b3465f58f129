"""The HTTP side of the protocol: the few requests a practice's sync makes, with the bearer token attached
and every refusal turned into a `HubError` that carries the contract's error code."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from terminhub.sync_client.auth import TokenSource
from terminhub.sync_client.bundle import Page, read_page

FHIR_JSON = "application/fhir+json"
ERROR_SYSTEM = "urn:terminhub:error"
PAGE_SIZE = 1000  # the hub's largest page: fewest requests per sync


class HubError(Exception):
    """A non-2xx answer: HTTP status, the `urn:terminhub:error` code, the text fit for a user, and
    `Retry-After` in seconds where the hub sent one."""

    def __init__(self, status: int, code: str | None, text: str, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {code or ''}: {text}".strip())
        self.status = status
        self.code = code
        self.text = text
        self.retry_after = retry_after


class Hub:
    """A practice client of one hub. Searches return `Page`s; paging is done by the caller."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http or httpx.Client(timeout=120)
        self.fhir = base_url.rstrip("/") + "/fhir"
        self.tokens = TokenSource(self._http, base_url, client_id, client_secret, clock)

    def close(self) -> None:
        self._http.close()

    def search(self, resource_type: str, params: dict[str, str]) -> Page:
        """A first search page, sent as 116117 clients send searches: `POST [type]/_search`, form body."""
        return self._call("POST", f"{self.fhir}/{resource_type}/_search", data=params)

    def follow(self, url: str) -> Page:
        """A further page: the `next` link exactly as served. Its opaque `_cursor` keeps paging stable
        while others write (`page=N` counts over current data and would skip a resource when an earlier
        one is deleted between two pages)."""
        return self._call("GET", url)

    def changes(self, position: str) -> Page:
        """The first page of the change feed after `position` (a `recorded` as served, or the start
        instant). The hub limits these first pages per client; further pages are `follow`ed."""
        params = {
            "recorded": f"gt{position}",
            "_count": str(PAGE_SIZE),
            "_include:iterate": "Appointment:patient",
        }
        return self._call("GET", f"{self.fhir}/Provenance", params=params)

    def server_time(self) -> str:
        """The hub's clock (a searchset's `meta.lastUpdated`), read by a Slot search that no poll limit
        applies to. The feed position is the hub's time, never the client's, whose clock may drift."""
        page = self.search("Slot", {"_count": "1"})
        if not page.server_time:
            raise HubError(200, None, "searchset Bundle without meta.lastUpdated")
        return page.server_time

    def _call(self, method: str, url: str, **kwargs: object) -> Page:
        reply = self._send(method, url, **kwargs)
        if reply.status_code == 401:  # the token died early (hub restarted, key rotated): once more
            self.tokens.invalidate()
            reply = self._send(method, url, **kwargs)
        if reply.status_code != 200:
            raise _error(reply)
        return read_page(reply.json())

    def _send(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        headers = {"Accept": FHIR_JSON, "Authorization": f"Bearer {self.tokens.token()}"}
        return self._http.request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]


def _error(reply: httpx.Response) -> HubError:
    code, text = None, reply.text[:500]
    try:
        outcome = reply.json()
        issue = outcome["issue"][0]
        details = issue.get("details") or {}
        text = details.get("text") or issue.get("diagnostics") or text
        code = next((c["code"] for c in details.get("coding", []) if c.get("system") == ERROR_SYSTEM), None)
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    retry_after = reply.headers.get("Retry-After")
    seconds = int(retry_after) if retry_after and retry_after.strip().isdigit() else None
    return HubError(reply.status_code, code, text, seconds)
