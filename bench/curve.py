"""Latency against load: a workload at a few concurrency levels, plotted as p50/p99 against throughput.

One figure per workload hides how the server degrades; the curve shows where latency starts to climb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.load import Result

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Levels:
    """Concurrency levels (connections in total) and the windows they are measured over."""

    connections: tuple[int, ...]
    short_s: float  # every level but the last
    long_s: float  # the last level, whose figures go into the table


def levels(quick: bool, steps: tuple[int, ...] = (1, 4, 16, 64)) -> Levels:
    """`steps` connections; the quick run measures the first, the last and one between, over short windows."""
    if quick and len(steps) > 3:
        steps = (steps[0], steps[-2], steps[-1])
    return Levels(steps, 1.5 if quick else 4.0, 2.5 if quick else 12.0)


def measure(lv: Levels, run: Callable[[int, float], Result], show: Callable[[Result], None]) -> list[Result]:
    """`run(connections, seconds)` at every level, the last one over the long window."""
    out = []
    for i, conns in enumerate(lv.connections):
        last = i == len(lv.connections) - 1
        r = run(conns, lv.long_s if last else lv.short_s)
        show(r)
        out.append(r)
    return out


def plot(workload: str, database: str, points: list[Result], unit: str = "req/s") -> Path | None:
    """bench/results/<workload>-<database>.png: p50 and p99 latency against achieved throughput."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plots need the `bench` extra; the figures do not
        return None
    rate = [p.items_per_s if unit != "req/s" else p.rps for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    ax.plot(rate, [p.p50_ms for p in points], "o-", label="p50")
    ax.plot(rate, [p.p99_ms for p in points], "s--", label="p99")
    for x, p in zip(rate, points, strict=True):
        ax.annotate(f"{p.connections}", (x, p.p99_ms), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"throughput ({unit}); labels: connections")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{workload} — {database}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{workload}-{database}.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
