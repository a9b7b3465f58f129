"""`terminhub clients …`: register, disable and re-key API clients.

`add` and `rotate-secret` print exactly one JSON line on stdout, so scripts can capture the secret with
`$(terminhub clients add …)`; everything meant for people goes to stderr. Errors exit with status 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn, TypeVar

import typer
from sqlalchemy import Connection, inspect
from sqlalchemy.exc import SQLAlchemyError

from terminhub.access.clients import ROLES, Client, ClientError, add_client, disable_client, rotate_secret
from terminhub.config import Settings
from terminhub.store.database import Database

T = TypeVar("T")

clients_app = typer.Typer(help="Register, disable and re-key API clients.", no_args_is_help=True)

DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", help="Database URL [default: TERMINHUB_DATABASE_URL]", show_default=False),
]
ClientIdOption = Annotated[str, typer.Option("--client-id", help="The client's id (from `clients add`).")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _now_us() -> int:
    return time.time_ns() // 1000


@contextmanager
def _write_transaction(url: str) -> Iterator[Connection]:
    """A write transaction on a database that has the schema; a clear error if it has not."""
    db = Database(url)
    try:
        with db.transaction(write=True) as conn:
            if not inspect(conn).has_table("clients"):
                _fail(f"the database {url!r} has no clients table: run `terminhub db upgrade` first")
            yield conn
    finally:
        db.dispose()


def _run(database: str | None, action: Callable[[Connection], T]) -> T:
    """Run `action` in one write transaction, turning refusals and database errors into exit 2."""
    url = database or Settings().database_url
    try:
        with _write_transaction(url) as conn:
            return action(conn)
    except ClientError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")


def _print_credentials(client: Client, secret: str) -> None:
    typer.echo(json.dumps({"client_id": client.client_id, "client_secret": secret, "role": client.role}))


@clients_app.command("add")
def add(
    name: Annotated[str, typer.Option("--name", help="Who the client is, for people reading logs.")],
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")],
    bsnr: Annotated[
        list[str] | None, typer.Option("--bsnr", help="Practice number (9 digits); practice, referrer only.")
    ] = None,
    database: DatabaseOption = None,
) -> None:
    """Register a client and print its credentials once, as JSON."""
    bsnrs = tuple(bsnr or ())
    client, secret = _run(
        database, lambda conn: add_client(conn, name=name, role=role, bsnrs=bsnrs, now_us=_now_us())
    )
    _print_credentials(client, secret)
    typer.echo(f"registered {client.client_id} ({client.role}); the secret is not shown again", err=True)


@clients_app.command("disable")
def disable(client_id: ClientIdOption, database: DatabaseOption = None) -> None:
    """Shut a client out: no new tokens now, its tokens stop working within 60 s."""
    _run(database, lambda conn: disable_client(conn, client_id, _now_us()))
    typer.echo(f"disabled {client_id}; its tokens stop working within 60 s", err=True)


@clients_app.command("rotate-secret")
def rotate(client_id: ClientIdOption, database: DatabaseOption = None) -> None:
    """Issue a new secret and print it as `add` does; the old secret stops working now."""
    client, secret = _run(database, lambda conn: rotate_secret(conn, client_id, _now_us()))
    _print_credentials(client, secret)
    typer.echo(f"new secret for {client.client_id}; the old one no longer works", err=True)
