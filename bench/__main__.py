"""`make bench`: set up a fresh database and server, load data through the API, measure the hot paths.

`python -m bench [--quick] [--databases postgresql,sqlite]`; PostgreSQL is skipped when unreachable.

The targets are PostgreSQL's, at the full scale. SQLite, the embedded database of a single practice
network or a demo, runs at a tenth of it (a tenth of the practices and of the Slots) unless
`--sqlite-full`: so the whole benchmark stays within 20 minutes on two cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from sqlalchemy import create_engine, text

from bench import booking, curve, data, feed, load, report, search
from terminhub.store.database import normalise_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_SERVER = os.environ.get("TERMINHUB_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
console = Console(width=None if sys.stdout.isatty() else 132)  # a log file gets the whole table


def _terminhub(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "terminhub"), *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"terminhub {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _client(name: str, role: str, env: dict[str, str], bsnrs: list[str] | None = None) -> dict:
    args = ["clients", "add", "--name", name, "--role", role] + [
        a for b in bsnrs or [] for a in ("--bsnr", b)
    ]
    out = _terminhub(*args, env=env)
    return json.loads(out[out.index("{") : out.rindex("}") + 1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_reachable() -> bool:
    try:
        with create_engine(normalise_url(PG_SERVER + "/postgres")).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means: no PostgreSQL here
        return False


@contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """A new, empty database of `kind`; a PostgreSQL one is dropped afterwards."""
    name = f"terminhub_bench_{secrets.token_hex(4)}"
    if kind == "sqlite":
        path = ROOT / "var" / "bench" / f"{name}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    admin = create_engine(normalise_url(PG_SERVER + "/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def server(url: str, port: int, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`terminhub serve --workers 2` on `port`, until it answers /fhir/metadata."""
    (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
    log = open(ROOT / "var" / "bench" / "server.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "terminhub"), "serve", "--workers", "2", "--port", str(port), "--database", url],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start; see var/bench/server.log")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def peak_rss_mb(pid: int) -> float | None:
    """The highest peak resident set (VmHWM) of the server's worker processes."""
    peaks = []
    for child in _descendants(pid):
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return max(peaks) if peaks else None


def db_floor(url: str, seconds: float) -> float:
    """Transactions/s of the booking's conditional UPDATE on slot_claims, one per transaction, then undone."""
    engine = create_engine(normalise_url(url))
    with engine.connect() as conn:
        free = conn.execute(text("SELECT slot_id FROM slot_claims WHERE appointment_id IS NULL"))
        ids = [r[0] for r in free]
    update = text("UPDATE slot_claims SET appointment_id = :a WHERE slot_id = :s AND appointment_id IS NULL")
    done: list[str] = []
    with engine.connect() as conn:
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        for slot_id in ids:
            if time.perf_counter() >= deadline:
                break
            with conn.begin():
                conn.execute(update, {"a": f"bench-{uuid.uuid4().hex[:16]}", "s": slot_id})
            done.append(slot_id)
        elapsed = time.perf_counter() - t0
        with conn.begin():
            conn.execute(
                text("UPDATE slot_claims SET appointment_id = NULL WHERE appointment_id LIKE 'bench-%'")
            )
    engine.dispose()
    return len(done) / elapsed


def _show(r: load.Result) -> None:
    extra = f", {r.items_per_s:,.0f} items/s" if r.items else ""
    extra += f", first pages p50 {r.first_p50_ms:.1f} ms" if r.first_p50_ms else ""
    others = {k: n for k, n in r.statuses.items() if not k.startswith("2")}
    console.print(
        f"  {r.name} ×{r.connections}: {r.rps:,.0f} req/s{extra}, p50 {r.p50_ms:.1f} ms, "
        f"p99 {r.p99_ms:.1f} ms" + (f", non-2xx {others}" if others else "")
    )


def _curve(name: str, kind: str, lv: curve.Levels, run) -> load.Result:  # noqa: ANN001
    """The workload at every level, plotted where there are several; the last level's Result is the
    table's figure."""
    points = curve.measure(lv, run, _show)
    if len(points) > 1:
        curve.plot(name, kind, points)
    return points[-1]


def _reads(
    base: str,
    loaded: data.Loaded,
    logins: dict[str, data.Login],
    searches: list[load.Request],
    kind: str,
    lv: curve.Levels,
) -> dict:
    """Slot reads by id and third parties' slot searches (`$termine_suchen`), each as a curve."""
    reads = [f"/fhir/Slot/{i}" for i in loaded.slot_ids]

    def runner(name: str, paths: list, login: data.Login):  # noqa: ANN202
        """Each level asks for its token as it starts: a run at the default scale outlasts a token."""
        return lambda conns, secs: load.run_gets(
            name, base, paths, token=login.bearer(), total=conns, seconds=secs
        )

    read = _curve("read", kind, lv, runner("read", reads, logins["admin"]))
    search = _curve("search", kind, lv, runner("search", searches, logins["third"]))
    return {
        "read_rps": round(read.rps, 1), "read_p99_ms": round(read.p99_ms, 2),
        "read_p50_ms": round(read.p50_ms, 2),
        "search_rps": round(search.rps, 1), "search_p99_ms": round(search.p99_ms, 2),
        "search_p50_ms": round(search.p50_ms, 2),
    }  # fmt: skip


def analyze(url: str, *, vacuum: bool = False) -> None:
    """Refresh the planner's statistics, as autovacuum would (some servers run without); with `vacuum`, after
    a bulk load, on PostgreSQL also mark the new rows visible to all, as autovacuum would: an index-only
    scan (a search's page of offers) visits the table for every row of a page not so marked."""
    engine = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        postgresql = conn.dialect.name == "postgresql"
        conn.exec_driver_sql("VACUUM (ANALYZE)" if vacuum and postgresql else "ANALYZE")
    engine.dispose()


ANALYZE_EVERY_S = 15.0


def _autovacuum_off(url: str) -> bool:
    if not url.startswith("postgresql"):
        return False
    engine = create_engine(normalise_url(url))
    with engine.connect() as conn:
        setting = conn.exec_driver_sql("SHOW autovacuum").scalar()
    engine.dispose()
    return setting != "on"


@contextmanager
def analyzing(url: str) -> Iterator[None]:
    """While loading, ANALYZE every `ANALYZE_EVERY_S` seconds where PostgreSQL runs without autovacuum.

    Autovacuum analyzes a table once a tenth of it is new; without it the planner has no statistics,
    costs (type, id, param) and (type, param, lo, hi) alike and may read every Schedule's row of a
    parameter to find one: a directory of 5,000 practices then loads in minutes instead of seconds."""
    if not _autovacuum_off(url):
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(ANALYZE_EVERY_S):
            analyze(url)

    worker = threading.Thread(target=run, name="analyze", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


def _load(
    loaded: data.Loaded | None, base: str, admin: data.Login, practices: int, slots: int, url: str, kind: str
) -> data.Loaded:
    """Load the directory and a tenth of `slots` Slots, or (given `loaded`) the rest; then analyze."""
    what = f"{practices:,} practices and a tenth of {slots:,} slots" if loaded is None else "the other slots"
    console.print(f"loading {what} …")
    in_flight = data.IN_FLIGHT[kind]
    with analyzing(url):
        if loaded is None:
            loaded = data.load(base, admin, practices, slots, in_flight)
            console.print(f"  directory of {practices:,} practices in {loaded.directory_seconds:,.0f} s")
        else:
            data.load_more(loaded, base, admin, in_flight=in_flight)
    console.print(f"  {loaded.slots:,} slots in all, {loaded.slots_per_s:,.0f} slots/s")
    started = time.monotonic()
    analyze(url, vacuum=True)
    console.print(f"  vacuumed and analyzed in {time.monotonic() - started:,.0f} s")
    return loaded


SQLITE_SHARE = 10  # SQLite runs at a tenth of the practices and Slots, unless --sqlite-full


def default_scale(quick: bool) -> int:
    return 5_000 if quick else 1_000_000


def run_one(kind: str, quick: bool, scale: int | None, share: int = 1) -> dict:
    """The whole benchmark against one fresh database, at 1/`share` of the scale."""
    practices = (20 if quick else 5_000) // share
    slots = (scale or default_scale(quick)) // share
    lv = curve.levels(quick)
    result: dict = dict.fromkeys(report.KEYS) | {"machine": report.machine(), "database": kind}
    result["practices"] = practices
    with fresh_database(kind) as url:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = os.environ | {
            "TERMINHUB_DATABASE_URL": url, "TERMINHUB_BASE_URL": base,
            "TERMINHUB_PROVENANCE_MIN_INTERVAL_S": "0",  # the feed workload polls back to back
            "TERMINHUB_REFERRAL_FREE": search.REFERRAL_FREE,  # third parties search every Fachgebiet
        }  # fmt: skip
        console.print(f"[bold]{kind}[/]: {url}")
        _terminhub("db", "upgrade", "--database", url, env=env)
        admin = _client("bench-admin", "admin", env)
        bsnrs = [p.bsnr for p in data.practice_plans(practices)[: feed.MAX_BSNRS]]
        practice = _client("bench-practice", "practice", env, bsnrs=bsnrs)
        booker = _client("bench-booker", "scheduling-client", env)
        third = _client("bench-third-party", "third-party", env)
        with server(url, port, env) as proc:
            clients = {"admin": admin, "third": third, "booker": booker, "practice": practice}
            logins = {n: data.Login(base, c["client_id"], c["client_secret"]) for n, c in clients.items()}
            since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
            loaded = _load(None, base, logins["admin"], practices, slots, url, kind)
            codes = search.request_codes(base, logins["third"].bearer(), loaded.specialties)
            searches = search.requests(codes, loaded.places)
            top_only = curve.Levels(lv.connections[-1:], lv.short_s, lv.long_s)
            smaller = {"slots": loaded.slots} | _reads(
                base, loaded, logins, searches, f"{kind}-{loaded.slots}", top_only
            )
            loaded = _load(loaded, base, logins["admin"], practices, slots, url, kind)
            result["slots"] = loaded.slots
            result["load_slots_per_s"] = round(loaded.slots_per_s, 1)
            floor = load.run("http floor", base, ["/fhir/metadata"], token=None, seconds=lv.long_s)
            _show(floor)
            result["http_floor_rps"] = round(floor.rps, 1)
            result["http_floor_p99_ms"] = round(floor.p99_ms, 2)
            result |= _reads(base, loaded, logins, searches, kind, lv)
            result["smaller_scale"] = smaller
            if smaller["search_p99_ms"]:
                result["search_p99_growth"] = round(result["search_p99_ms"] / smaller["search_p99_ms"], 2)
            booked = booking.run(base, url, logins["booker"].bearer(), loaded.all_slot_ids, lv, _show)
            curve.plot("booking", kind, booked.points)
            result |= booking.figures(booked)
            feed_levels = curve.levels(quick, feed.READERS[quick])
            feed_points = feed.run(base, logins["practice"].bearer(), since, feed_levels, _show)
            curve.plot("feed", kind, feed_points, unit="changes/s")
            result |= feed.figures(feed_points)
            result["server_rss_mb"] = round(rss, 1) if (rss := peak_rss_mb(proc.pid)) else None
        tps = db_floor(url, lv.long_s)
        result["db_floor_tps"] = round(tps, 1)
        console.print(f"  db floor: {tps:,.0f} tx/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="20 practices, 5,000 slots, fewer levels, 1.5-2.5 s windows"
    )
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument(
        "--scale", type=int, help="Slots at the larger scale (default 1,000,000; quick 5,000); also a tenth"
    )
    parser.add_argument(
        "--sqlite-full", action="store_true", help="SQLite at the full scale too (not a tenth of it)"
    )
    args = parser.parse_args()
    results = []
    started = time.monotonic()
    for kind in args.databases.split(","):
        if kind == "postgresql" and not _pg_reachable():
            console.print(f"PostgreSQL at {PG_SERVER} is not reachable: skipped")
            continue
        share = SQLITE_SHARE if kind == "sqlite" and not (args.quick or args.sqlite_full) else 1
        if share > 1:
            console.print(f"sqlite runs at 1/{share} of the scale (--sqlite-full for all of it)")
        results.append(run_one(kind, args.quick, args.scale, share))
    console.print(f"benchmark took {(time.monotonic() - started) / 60:.1f} min")
    report.write(results, console)


if __name__ == "__main__":
    main()
