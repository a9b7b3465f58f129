"""`terminhub serve | db upgrade | demo load | clients …` (Typer)."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from terminhub.access.cli_clients import clients_app
from terminhub.config import Settings

app = typer.Typer(
    help="terminhub: an appointment-booking hub for healthcare, served as FHIR R4.", no_args_is_help=True
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
demo_app = typer.Typer(help="Demo data.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(demo_app, name="demo")
app.add_typer(clients_app, name="clients")

DatabaseOption = Annotated[
    str | None, typer.Option("--database", help="Database URL [TERMINHUB_DATABASE_URL]")
]


def _settings(database: str | None = None) -> Settings:
    settings = Settings()
    if database:
        settings = settings.model_copy(update={"database_url": database})
    return settings


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8080,
    database: DatabaseOption = None,
    workers: Annotated[int, typer.Option(help="Server processes sharing the port")] = 1,
) -> None:
    """Serve the FHIR API (and the auth endpoints) over HTTP."""
    import uvicorn

    if database:
        os.environ["TERMINHUB_DATABASE_URL"] = database
    # Worker processes (--workers 2 and more) start afresh and read this as their C library starts: two
    # malloc arenas instead of one per request thread. A worker's peak resident memory through a load of
    # 100,000 Slots at 5,000 practices fell from 214-287 MB to 181-191 MB.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    uvicorn.run(
        "terminhub.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=os.environ.get("TERMINHUB_LOG_LEVEL", "warning"),
        access_log=False,
        # Longer than clients' idle pools: a connection closed by the server just as a client reuses it
        # loses that request (uvicorn's default is 5 s).
        timeout_keep_alive=75,
    )


@db_app.command("upgrade")
def db_upgrade(database: DatabaseOption = None) -> None:
    """Create or migrate the schema; create the token-signing key if there is none."""
    from terminhub.store.database import Database
    from terminhub.store.migrate import upgrade

    db = Database(_settings(database).database_url)
    upgrade(db)
    db.dispose()
    typer.echo("database is up to date", err=True)


@demo_app.command("load")
def demo_load(
    database: DatabaseOption = None,
    practices: Annotated[int, typer.Option(help="Number of practices")] = 50,
    days: Annotated[int, typer.Option(help="Days of free Slots from today")] = 14,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data)")] = 1,
    if_empty: Annotated[
        bool, typer.Option("--if-empty", help="Do nothing if the database holds data")
    ] = False,
) -> None:
    """Load a deterministic, realistic demo directory with free Slots."""
    from terminhub.demo import DemoSettings
    from terminhub.demo.loader import has_data, load, total
    from terminhub.store.database import Database

    settings = _settings(database)
    db = Database(settings.database_url)
    if if_empty and has_data(db):
        typer.echo("demo data already present", err=True)
        return
    today = datetime.now(ZoneInfo(settings.timezone)).date()
    demo = DemoSettings(practices=practices, days=days, seed=seed, start=today)
    columns = (TextColumn("loading demo data"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("demo", total=total(demo))
        written = load(db, demo, settings.timezone, lambda n: bar.advance(task, n))
    db.dispose()
    typer.echo(f"{written} resources loaded", err=True)


@demo_app.command("clients")
def demo_clients(
    database: DatabaseOption = None,
    credentials_file: Annotated[
        str, typer.Option(help="Where the demo secrets are kept")
    ] = "var/demo-clients.json",
) -> None:
    """Register (or reuse) one demo client per role and print how to use them."""
    from pathlib import Path

    from sqlalchemy import select

    from terminhub.demo.credentials import ensure_demo_clients
    from terminhub.fhir.searchparams import BSNR_SYSTEM
    from terminhub.store import schema
    from terminhub.store.database import Database

    settings = _settings(database)
    db = Database(settings.database_url)
    s = schema.search_index
    with db.transaction() as conn:
        bsnr = conn.execute(
            select(s.c.code)
            .where(s.c.type == "Organization", s.c.param == "identifier", s.c.system == BSNR_SYSTEM)
            .order_by(s.c.id)
            .limit(1)
        ).scalar()
    clients = ensure_demo_clients(db, Path(credentials_file), bsnr)
    db.dispose()
    base = settings.base_url.rstrip("/")
    typer.echo("\nDemo clients (role: client_id / client_secret):")
    for role, c in clients.items():
        extra = f"  (BSNR {c['bsnr'][0]})" if c.get("bsnr") else ""
        typer.echo(f"  {role:18} {c['client_id']} / {c['client_secret']}{extra}")
    admin = clients["scheduling-client"]
    typer.echo("\nTry it (a scheduling client searching free Slots):\n")
    typer.echo(
        f"  TOKEN=$(curl -s -X POST {base}/auth/token -d grant_type=client_credentials "
        f"-d client_id={admin['client_id']} -d client_secret={admin['client_secret']} "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    typer.echo(
        f'  curl -s -H "Authorization: Bearer $TOKEN" "{base}/fhir/Slot?status=free&_count=3'
        '&_include=Slot:schedule"\n'
    )


@app.command()
def sync(
    base_url: Annotated[str, typer.Option("--base-url", help="The hub, e.g. http://127.0.0.1:8080")],
    client_id: Annotated[str, typer.Option("--client-id", help="The practice client's id")],
    client_secret: Annotated[
        str,
        typer.Option("--client-secret", envvar="TERMINHUB_SYNC_CLIENT_SECRET", help="Its secret"),
    ],
    mirror: Annotated[str, typer.Option("--mirror", help="The SQLite file holding the practice's copy")],
    once: Annotated[bool, typer.Option("--once", help="One sync/poll round, then exit")] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between polls (the hub allows one per 300 s)")
    ] = 300,
) -> None:
    """Keep a practice's local mirror in step with the hub (the reference TVS sync client)."""
    import httpx
    from rich.console import Console

    from terminhub.sync_client import Hub, HubError, Mirror, SyncRunner
    from terminhub.sync_client.auth import AuthError

    console = Console(stderr=True)
    hub, store = Hub(base_url, client_id, client_secret), Mirror(mirror)
    runner = SyncRunner(hub, store, interval_s=interval, say=lambda line: console.log(line, markup=False))
    try:
        if once:
            result = runner.round()
            console.log(f"done: {len(result.entries)} changes, position {store.state().position}")
        else:
            runner.run()
    except KeyboardInterrupt:
        console.log("stopped; the mirror keeps its last committed position")
    except (HubError, AuthError, httpx.TransportError) as error:
        console.log(f"sync failed: {error}; the mirror keeps its last committed position", markup=False)
        raise typer.Exit(1) from error
    finally:
        hub.close()
        store.close()


if __name__ == "__main__":
    app()
