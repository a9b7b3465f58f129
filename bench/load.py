"""The load generator: asyncio aiohttp clients in separate processes, run for a fixed duration.

aiohttp rather than httpx: on a 2-core machine the generator shares the cores with the server, and
httpx spent several times aiohttp's CPU per request, so the floors measured the client, not the server.

Three kinds of connection: `random` GETs random paths back to back, `plan` sends its own list of
requests in order (each booking wants its own Slot), `feed` follows a change feed's `next` links.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

# (method, path, JSON body or None): picklable, so it crosses into the spawned processes
Request = tuple[str, str, bytes | None]
JSON = {"Content-Type": "application/fhir+json"}


@dataclass
class Result:
    """Throughput and latency of one workload."""

    name: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    items: int = 0  # what a request carried, where that counts (Provenances of a feed page)
    connections: int = 0
    first_p50_ms: float = 0.0  # a feed's first pages (those the polling rule limits) apart
    first_p99_ms: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


@dataclass
class _Part:
    """What one process measured; merged into a Result."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    items: int = 0
    first: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass(frozen=True, slots=True)
class Response:
    """What a request came back with."""

    status: int
    content: bytes


def outcome(resp: Response) -> str:
    """`200`, or the status with the `urn:terminhub:error` code, e.g. `409 slot-unavailable`."""
    if resp.status < 300:
        return str(resp.status)
    try:
        issue = orjson.loads(resp.content)["issue"][0]
        return f"{resp.status} {issue['details']['coding'][0]['code']}"
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return str(resp.status)


async def _timed(
    client: aiohttp.ClientSession, part: _Part, method: str, path: str, body: bytes | None
) -> Response | None:
    """One request; its latency and outcome go into `part`. The response, or None on a transport error."""
    t0 = time.perf_counter()
    try:
        async with client.request(method, path, data=body, headers=JSON if body else None) as raw:
            resp = Response(raw.status, await raw.read())
        part.statuses[outcome(resp)] += 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        resp = None
        part.statuses[type(exc).__name__] += 1
    part.latencies.append(time.perf_counter() - t0)
    return resp


async def _random(
    client: aiohttp.ClientSession, part: _Part, paths: list[str | Request], deadline: float, seed: int
):
    """Random requests until the deadline: a path is a GET, a Request is sent as it is."""
    rng = random.Random(seed)
    while time.perf_counter() < deadline:
        chosen = rng.choice(paths)
        method, path, body = ("GET", chosen, None) if isinstance(chosen, str) else chosen
        await _timed(client, part, method, path, body)


async def _plan(client: aiohttp.ClientSession, part: _Part, plan: list[Request], deadline: float, _seed: int):
    """Send the planned requests in order until they run out or the deadline passes."""
    for method, path, body in plan:
        if time.perf_counter() >= deadline:
            return
        await _timed(client, part, method, path, body)


async def _feed(client: aiohttp.ClientSession, part: _Part, first: str, deadline: float, _seed: int):
    """Read the feed from `first` through its `next` links, again from the start when it ends."""
    path = first
    while time.perf_counter() < deadline:
        resp = await _timed(client, part, "GET", path, None)
        if path == first:
            part.first.append(part.latencies[-1])
        if resp is None or resp.status != 200:
            path = first
            continue
        page = orjson.loads(resp.content)
        part.items += sum(1 for e in page.get("entry", []) if e.get("search", {}).get("mode") == "match")
        path = next((ln["url"] for ln in page.get("link", []) if ln["relation"] == "next"), first)


KINDS = {"random": _random, "plan": _plan, "feed": _feed}


async def _process_main(kind: str, base_url: str, token: str | None, work: list, seconds: float, seed: int):
    """One process: one connection per item of `work`, all until the same deadline."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    part = _Part()
    connector = aiohttp.TCPConnector(limit=len(work))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        base_url, headers=headers, connector=connector, timeout=timeout
    ) as client:
        async with client.get("/fhir/metadata") as first:  # a first connection before the clock starts
            await first.read()
        part.started = time.perf_counter()
        deadline = part.started + seconds
        connection = KINDS[kind]
        await asyncio.gather(
            *(connection(client, part, w, deadline, seed * 1000 + i) for i, w in enumerate(work))
        )
        part.ended = time.perf_counter()
    return part


def _worker(args: tuple) -> _Part:
    return asyncio.run(_process_main(*args))


def _drive(
    name: str, kind: str, base_url: str, token: str | None, works: list[list], seconds: float
) -> Result:
    """Run one process per item of `works` (each a list of per-connection work) and merge what they saw."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(len(works)) as pool:
        parts = pool.map(_worker, [(kind, base_url, token, w, seconds, i) for i, w in enumerate(works)])
    latencies = sorted(x for p in parts for x in p.latencies)
    first = sorted(x for p in parts for x in p.first)
    statuses = sum((p.statuses for p in parts), Counter())
    # the processes overlap but start a little apart: the longest one's time counts
    elapsed = max(p.ended - p.started for p in parts) or seconds
    ok = sum(n for k, n in statuses.items() if k.startswith("2"))
    return Result(
        name=name,
        requests=ok,
        errors=len(latencies) - ok,
        seconds=elapsed,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        statuses=dict(statuses),
        items=sum(p.items for p in parts),
        connections=sum(len(w) for w in works),
        first_p50_ms=_percentile(first, 0.50) * 1000,
        first_p99_ms=_percentile(first, 0.99) * 1000,
    )


def split(connections: int, processes: int = 2) -> list[int]:
    """Connections per process: `connections` in total over at most `processes` processes."""
    n = max(1, min(processes, connections))
    return [connections // n + (1 if i < connections % n else 0) for i in range(n)]


def run(
    name: str,
    base_url: str,
    paths: list[str],
    *,
    token: str | None = None,
    processes: int = 2,
    connections: int = 32,
    seconds: float = 10.0,
) -> Result:
    """Drive GETs of `paths` (chosen at random) from `processes` × `connections` clients."""
    return run_gets(name, base_url, paths, token=token, total=processes * connections, seconds=seconds)


def run_gets(
    name: str, base_url: str, paths: list[str | Request], *, token: str | None, total: int, seconds: float
) -> Result:
    """Requests chosen at random from `paths` (a path is a GET) by `total` connections over at most two
    processes."""
    works = [[paths] * n for n in split(total)]
    return _drive(name, "random", base_url, token, works, seconds)


def run_plans(
    name: str, base_url: str, plans: list[list[list[Request]]], *, token: str, seconds: float
) -> Result:
    """`plans[process][connection]` is the list of requests that connection sends, in order."""
    return _drive(name, "plan", base_url, token, plans, seconds)


def run_feed(name: str, base_url: str, first: str, *, token: str, connections: int, seconds: float) -> Result:
    """`connections` readers of the change feed from `first`, each through its `next` links."""
    works = [[first] * n for n in split(connections)]
    return _drive(name, "feed", base_url, token, works, seconds)
