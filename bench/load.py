"""The load generator: asyncio httpx clients in separate processes, run for a fixed duration."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
from dataclasses import dataclass

import httpx


@dataclass
class Result:
    """Throughput and latency of one workload."""

    name: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _connection(
    client: httpx.AsyncClient, paths: list[str], deadline: float, seed: int
) -> tuple[list[float], int]:
    """One connection: request random paths back to back until the deadline."""
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    while (now := time.perf_counter()) < deadline:
        try:
            resp = await client.get(rng.choice(paths))
            await resp.aread()
            if resp.status_code != 200:
                errors += 1
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - now)
    return latencies, errors


async def _process_main(
    base_url: str, token: str | None, paths: list[str], connections: int, seconds: float, seed: int
) -> tuple[list[float], int]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:
        await client.get(paths[0])  # warm the connection pool's first connection
        deadline = time.perf_counter() + seconds
        parts = await asyncio.gather(
            *(_connection(client, paths, deadline, seed * 1000 + i) for i in range(connections))
        )
    return [x for lat, _ in parts for x in lat], sum(e for _, e in parts)


def _worker(args: tuple) -> tuple[list[float], int]:
    return asyncio.run(_process_main(*args))


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
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes) as pool:
        jobs = [(base_url, token, paths, connections, seconds, i) for i in range(processes)]
        parts = pool.map(_worker, jobs)
    latencies = sorted(x for lat, _ in parts for x in lat)
    errors = sum(e for _, e in parts)
    return Result(
        name=name,
        requests=len(latencies) - errors,
        errors=errors,
        seconds=seconds,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
    )
