"""An in-memory stand-in for the hub's practice-sync surface, served through httpx.MockTransport: token,
`POST [type]/_search`, `next` links with an opaque cursor, and the Provenance feed with its includes, poll
limit and retention. Written against the contract, so the client's unit tests need no server."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode

import httpx

BASE = "http://hub.test"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
Key = tuple[str, str]


def instant(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def outcome(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "business-rule",
                "details": {"coding": [{"system": "urn:terminhub:error", "code": code}], "text": code},
            }
        ],
    }
    return httpx.Response(status, json=body, headers=headers or {})


@dataclass
class FakeHub:
    """What one practice sees. `write` and `delete` change it and record Provenances; `fail` queues
    answers to send instead of the next matching requests."""

    now: datetime = field(default_factory=lambda: datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    page_size: int = 2
    min_interval_s: float = 300
    token_lifetime_s: int = 900
    retention_start: datetime | None = None
    current: dict[Key, dict] = field(default_factory=dict)
    versions: dict[Key, int] = field(default_factory=dict)
    provenances: list[dict] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    failures: list[tuple[str, httpx.Response | Exception]] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    tokens_issued: int = 0
    last_first_page: datetime | None = None

    # -- changing the hub's data ------------------------------------------------------------------------
    def tick(self, seconds: float = 0.001) -> None:
        self.now += timedelta(seconds=seconds)

    def write(self, resource_type: str, resource_id: str, *, visible: bool = True, **content: object) -> dict:
        """Create or update; `visible=False`: the new version has left the practice's scope."""
        key = (resource_type, resource_id)
        version = self.versions.get(key, 0) + 1
        self.versions[key] = version
        self.tick()
        resource = {
            "resourceType": resource_type,
            "id": resource_id,
            "meta": {"versionId": str(version), "lastUpdated": instant(self.now)},
            **content,
        }
        if visible:
            self.current[key] = resource
        else:
            self.current.pop(key, None)
        self._provenance(key, version, "CREATE" if version == 1 else "UPDATE")
        return resource

    def delete(self, resource_type: str, resource_id: str) -> None:
        key = (resource_type, resource_id)
        self.versions[key] += 1
        self.tick()
        self.current.pop(key, None)
        self._provenance(key, self.versions[key], "DELETE")

    def _provenance(self, key: Key, version: int, activity: str) -> None:
        self.provenances.append(
            {
                "resourceType": "Provenance",
                "id": f"p{len(self.provenances) + 1}",
                "target": [{"reference": f"{key[0]}/{key[1]}/_history/{version}"}],
                "recorded": instant(self.now),
                "activity": {"coding": [{"system": DATA_OPERATION, "code": activity}]},
            }
        )

    def fail(self, path_part: str, answer: httpx.Response | Exception) -> None:
        self.failures.append((path_part, answer))

    # -- serving ---------------------------------------------------------------------------------------
    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for i, (part, answer) in enumerate(self.failures):
            if part in str(request.url):
                del self.failures[i]
                if isinstance(answer, Exception):
                    raise answer
                return answer
        path = request.url.path
        if path == "/auth/token":
            form = dict(parse_qsl(request.content.decode()))
            assert form["grant_type"] == "client_credentials" and form["client_secret"] == "secret"
            self.tokens_issued += 1
            token = f"token-{self.tokens_issued}"
            self.valid_tokens.add(token)
            return httpx.Response(
                200, json={"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime_s}
            )
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.valid_tokens:
            return outcome(401, "unauthorized", {"WWW-Authenticate": "Bearer"})
        params = dict(parse_qsl(request.url.query.decode()))
        if request.method == "POST":
            params |= dict(parse_qsl(request.content.decode()))
        resource_type = path.removeprefix("/fhir/").removesuffix("/_search")
        if resource_type == "Provenance":
            return self._feed(params)
        return self._search(resource_type, params)

    def _search(self, resource_type: str, params: dict[str, str]) -> httpx.Response:
        found = [r for (t, _), r in sorted(self.current.items()) if t == resource_type]
        if resource_type == "Schedule" and "active" in params:
            inactive = params["active"] == "false"
            found = [r for r in found if (r.get("active") is False) == inactive]
        count = min(int(params.get("_count", "50")), self.page_size)
        offset = int(params.get("_cursor", "0"))
        chunk = found[offset : offset + count]
        includes = []
        if params.get("_include") == "Appointment:patient":
            includes = self._patients(chunk)
        nxt = offset + count if offset + count < len(found) else None
        return self._bundle(resource_type, params, chunk, includes, nxt)

    def _feed(self, params: dict[str, str]) -> httpx.Response:
        after = parse(params["recorded"].removeprefix("gt"))
        if "_cursor" not in params:
            if self.retention_start and after < self.retention_start:
                return outcome(422, "feed-expired")
            if self.last_first_page and self.now < self.last_first_page + timedelta(
                seconds=self.min_interval_s
            ):
                wait = self.last_first_page + timedelta(seconds=self.min_interval_s) - self.now
                seconds = max(1, math.ceil(wait.total_seconds()))
                return outcome(429, "poll-too-frequent", {"Retry-After": str(seconds)})
            self.last_first_page = self.now
        found = [p for p in self.provenances if parse(p["recorded"]) > after]
        offset = int(params.get("_cursor", "0"))
        count = min(int(params.get("_count", "50")), self.page_size)
        chunk = found[offset : offset + count]
        targets = {tuple(p["target"][0]["reference"].split("/")[:2]) for p in chunk}
        includes = [self.current[k] for k in sorted(targets) if k in self.current]  # type: ignore[index]
        includes += self._patients([r for r in includes if r["resourceType"] == "Appointment"])
        nxt = offset + count if offset + count < len(found) else None
        return self._bundle("Provenance", params, chunk, includes, nxt)

    def _patients(self, appointments: list[dict]) -> list[dict]:
        keys = {
            tuple(p["actor"]["reference"].split("/"))
            for a in appointments
            for p in a.get("participant", [])
            if p["actor"]["reference"].startswith("Patient/")
        }
        return [self.current[k] for k in sorted(keys) if k in self.current]  # type: ignore[index]

    def _bundle(
        self, resource_type: str, params: dict, matches: list, includes: list, nxt: int | None
    ) -> httpx.Response:
        kept = {k: v for k, v in params.items() if k not in ("page", "_cursor")}
        links = [{"relation": "self", "url": f"{BASE}/fhir/{resource_type}?{urlencode(kept)}"}]
        if nxt is not None:
            query = urlencode(kept | {"_cursor": str(nxt)})
            links.append({"relation": "next", "url": f"{BASE}/fhir/{resource_type}?{query}"})
        entries = [{"resource": r, "search": {"mode": "match"}} for r in matches]
        entries += [{"resource": r, "search": {"mode": "include"}} for r in includes]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "meta": {"lastUpdated": instant(self.now)},
            "link": links,
            "entry": entries,
        }
        return httpx.Response(200, json=bundle)
