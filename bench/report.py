"""The report: a Rich table on stdout and bench/results/latest.json."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"

KEYS = (
    "machine", "database", "slots", "load_slots_per_s", "read_rps", "read_p99_ms", "search_rps",
    "search_p99_ms", "book_rps", "book_p99_ms", "double_bookings", "spurious_failures",
    "feed_changes_per_s", "http_floor_rps", "db_floor_tps", "server_rss_mb",
)  # fmt: skip

# (key, label, unit, target text, floor key or None)
ROWS = (
    ("load_slots_per_s", "load", "slots/s", "≥ 20,000", None),
    ("http_floor_rps", "HTTP floor (GET /fhir/metadata)", "req/s", "", None),
    ("read_rps", "read Slot by id", "req/s", "≥ 8,000", "http_floor_rps"),
    ("read_p99_ms", "read p99", "ms", "", None),
    ("search_rps", "slot search ($termine_suchen)", "req/s", "≥ 2,000", "http_floor_rps"),
    ("search_p99_ms", "search p99", "ms", "≤ 25", None),
    ("search_p99_growth", "search p99 ÷ its p99 at a tenth", "×", "≤ 1.5", None),
    ("db_floor_tps", "DB floor (conditional UPDATE)", "tx/s", "", None),
    ("book_rps", "booking, distinct Slots", "req/s", "≥ 2,000", "db_floor_tps"),
    ("book_p99_ms", "booking p99", "ms", "", None),
    ("contention_rps", "race for 20 Slots, all", "req/s", "", "db_floor_tps"),
    ("contention_409s", "race: 409 slot-unavailable", "", "", None),
    ("contention_errors", "race: other answers", "", "0", None),
    ("hot_slots_booked_once", "race: Slots booked once", "", "all 20", None),
    ("double_bookings", "double bookings (in DB)", "", "0", None),
    ("spurious_failures", "spurious failures", "", "0", None),
    ("feed_changes_per_s", "change feed", "changes/s", "", None),
    ("feed_first_page_p99_ms", "feed first page p99", "ms", "", None),
    ("feed_page_p99_ms", "feed page p99", "ms", "", None),
    ("server_rss_mb", "server RSS, peak per worker", "MB", "≤ 300", None),
)


def machine() -> str:
    """A short description of the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores, {cpu}, {system}, Python {platform.python_version()}"


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}"


def table(results: list[dict]) -> Table:
    """One column per database run; each figure beside its target and its ratio to its floor."""
    t = Table(title="terminhub bench")
    t.add_column("workload")
    t.add_column("unit")
    t.add_column("target", justify="right")
    for r in results:
        scale = f"{_fmt(r.get('practices'))} practices, {_fmt(r['slots'])} slots"
        t.add_column(f"{r['database']} ({scale})", justify="right")
        t.add_column("of floor", justify="right")
    for key, label, unit, target, floor in ROWS:
        cells = [label, unit, target]
        for r in results:
            value = r.get(key)
            cells.append(_fmt(value))
            ratio = ""
            if floor and value is not None and r.get(floor):
                ratio = f"{value / r[floor]:.0%}"
            cells.append(ratio)
        t.add_row(*cells)
    return t


def write(results: list[dict], console: Console) -> Path:
    """Print the table and write latest.json: the first run's keys at the top, every run under `runs`."""
    console.print(table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = [{k: r.get(k) for k in KEYS} | {k: v for k, v in r.items() if k not in KEYS} for r in results]
    doc = dict(runs[0]) | {"runs": runs}
    path = RESULTS / "latest.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"written {path}")
    return path
