"""The client registry and the `terminhub clients` commands, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from terminhub.access.cli_clients import clients_app
from terminhub.access.clients import (
    ROLES,
    Client,
    ClientError,
    add_client,
    authenticate,
    disable_client,
    get_client,
    rotate_secret,
    verify_secret,
)
from terminhub.store import schema
from terminhub.store.database import Database

NOW_US = 1_795_000_000_000_000
BSNR = "123456789"
ROLE_BSNRS = {"practice": (BSNR, "987654321"), "referrer": (BSNR,)}


def _add(db: Database, role: str = "third-party", bsnrs: tuple[str, ...] = (), name: str = "App") -> tuple:
    with db.transaction(write=True) as conn:
        return add_client(conn, name=name, role=role, bsnrs=bsnrs, now_us=NOW_US)


def _auth(db: Database, client_id: str, secret: str) -> Client | None:
    with db.transaction() as conn:
        return authenticate(conn, client_id, secret)


def _row(db: Database, client_id: str):  # noqa: ANN202 - a Row
    with db.transaction() as conn:
        return conn.execute(select(schema.clients).where(schema.clients.c.client_id == client_id)).one()


# --- add and its rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_add_each_role(db: Database, role: str) -> None:
    bsnrs = ROLE_BSNRS.get(role, ())
    client, secret = _add(db, role, bsnrs, name=f"  {role} client ")
    assert client.client_id.startswith("th-") and len(client.client_id) == 19
    assert client == Client(client.client_id, f"{role} client", role, bsnrs, False)
    with db.transaction() as conn:
        assert get_client(conn, client.client_id) == client
    assert len(secret) >= 43
    assert _auth(db, client.client_id, secret) == client


@pytest.mark.parametrize("role", ["practice", "referrer"])
def test_bsnr_required(db: Database, role: str) -> None:
    with pytest.raises(ClientError, match="--bsnr"):
        _add(db, role)


@pytest.mark.parametrize("role", ["admin", "third-party", "scheduling-client"])
def test_bsnr_refused(db: Database, role: str) -> None:
    with pytest.raises(ClientError, match="takes no --bsnr"):
        _add(db, role, (BSNR,))


@pytest.mark.parametrize("bsnr", ["12345678", "1234567890", "12345678a", "", "١٢٣٤٥٦٧٨٩", "12345 789"])
def test_bsnr_must_be_nine_digits(db: Database, bsnr: str) -> None:
    with pytest.raises(ClientError, match="9 digits"):
        _add(db, "practice", (BSNR, bsnr))


def test_duplicate_bsnrs_kept_once(db: Database) -> None:
    client, _ = _add(db, "practice", (BSNR, "111111111", BSNR))
    assert client.bsnrs == (BSNR, "111111111")


@pytest.mark.parametrize(("role", "name"), [("superuser", "x"), ("Admin", "x"), ("admin", "   ")])
def test_unknown_role_or_empty_name(db: Database, role: str, name: str) -> None:
    with pytest.raises(ClientError):
        _add(db, role, name=name)


# --- secrets -------------------------------------------------------------------------------------------


def test_secret_stored_hashed_only(db: Database) -> None:
    client, secret = _add(db)
    other, _ = _add(db)
    row = _row(db, client.client_id)
    assert secret not in " ".join(str(value) for value in row)
    scheme, n, r, p, salt, digest = row.secret_hash.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert salt != _row(db, other.client_id).secret_hash.split("$")[4]
    assert verify_secret(secret, row.secret_hash)
    assert row.created_at == row.changed_at == NOW_US


@pytest.mark.parametrize(
    "encoded", ["", "scrypt$1$1$1$$", "bcrypt$16384$8$1$AAAA$AAAA", "scrypt$x$8$1$AA$AA"]
)
def test_malformed_hash_never_matches(encoded: str) -> None:
    assert verify_secret("anything", encoded) is False


def test_authenticate(db: Database) -> None:
    client, secret = _add(db)
    assert _auth(db, client.client_id, secret) == client
    assert _auth(db, client.client_id, secret + "x") is None
    assert _auth(db, client.client_id, "") is None
    assert _auth(db, "th-unknown", secret) is None
    assert _auth(db, "th-" + "x" * 200, secret) is None
    assert _auth(db, "th-\x00", secret) is None


def test_valid_secret_check_is_fast(db: Database) -> None:
    client, secret = _add(db)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        assert _auth(db, client.client_id, secret) is not None
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.1  # ~30-50 ms here; generous for slow CI


def test_disable(db: Database) -> None:
    client, secret = _add(db)
    with db.transaction(write=True) as conn:
        disabled = disable_client(conn, client.client_id, NOW_US + 1)
    assert disabled.disabled
    assert _auth(db, client.client_id, secret) is None
    assert _row(db, client.client_id).changed_at == NOW_US + 1


def test_rotate_secret(db: Database) -> None:
    client, old = _add(db, "referrer", (BSNR,))
    with db.transaction(write=True) as conn:
        rotated, new = rotate_secret(conn, client.client_id, NOW_US + 5)
    assert rotated == client and new != old
    assert _auth(db, client.client_id, old) is None
    assert _auth(db, client.client_id, new) == client


@pytest.mark.parametrize("command", [disable_client, rotate_secret])
def test_unknown_client_refused(db: Database, command) -> None:  # noqa: ANN001
    with pytest.raises(ClientError, match="no client"), db.transaction(write=True) as conn:
        command(conn, "th-does-not-exist", NOW_US)


# --- the CLI -------------------------------------------------------------------------------------------

runner = CliRunner()


def _invoke(*args: str):  # noqa: ANN202 - a click Result
    return runner.invoke(clients_app, list(args))


def _one_json_line(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def test_cli_add_prints_one_json_object(db: Database) -> None:
    result = _invoke(
        "add",
        "--name",
        "Praxis",
        "--role",
        "practice",
        "--bsnr",
        BSNR,
        "--bsnr",
        "222222222",
        "--database",
        db.url,
    )
    assert result.exit_code == 0, result.stderr
    body = _one_json_line(result.stdout)
    assert set(body) == {"client_id", "client_secret", "role"} and body["role"] == "practice"
    client = _auth(db, body["client_id"], body["client_secret"])
    assert client is not None and client.bsnrs == (BSNR, "222222222")
    assert body["client_id"] in result.stderr


def test_cli_database_defaults_to_setting(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMINHUB_DATABASE_URL", db.url)
    result = _invoke("add", "--name", "Insurer app", "--role", "third-party")
    assert result.exit_code == 0, result.stderr
    body = _one_json_line(result.stdout)
    assert _auth(db, body["client_id"], body["client_secret"]) is not None


@pytest.mark.parametrize(
    "args",
    [
        ("--role", "practice"),
        ("--role", "admin", "--bsnr", BSNR),
        ("--role", "practice", "--bsnr", "12345"),
        ("--role", "root"),
    ],
)
def test_cli_add_refused(db: Database, args: tuple[str, ...]) -> None:
    result = _invoke("add", "--name", "X", *args, "--database", db.url)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "error:" in result.stderr


def test_cli_disable_and_rotate(db: Database) -> None:
    first = _one_json_line(
        _invoke("add", "--name", "S", "--role", "scheduling-client", "--database", db.url).stdout
    )
    result = _invoke("rotate-secret", "--client-id", first["client_id"], "--database", db.url)
    assert result.exit_code == 0, result.stderr
    second = _one_json_line(result.stdout)
    assert second["client_id"] == first["client_id"] and second["role"] == "scheduling-client"
    assert _auth(db, first["client_id"], first["client_secret"]) is None
    assert _auth(db, first["client_id"], second["client_secret"]) is not None

    result = _invoke("disable", "--client-id", first["client_id"], "--database", db.url)
    assert result.exit_code == 0 and result.stdout == ""
    assert _auth(db, first["client_id"], second["client_secret"]) is None


@pytest.mark.parametrize("command", ["disable", "rotate-secret"])
def test_cli_unknown_client(db: Database, command: str) -> None:
    result = _invoke(command, "--client-id", "th-nobody", "--database", db.url)
    assert result.exit_code == 2 and result.stdout == ""
    assert "no client" in result.stderr


def test_cli_without_schema(tmp_path) -> None:  # noqa: ANN001
    result = _invoke(
        "add", "--name", "X", "--role", "admin", "--database", f"sqlite:///{tmp_path / 'empty.db'}"
    )
    assert result.exit_code == 2 and result.stdout == ""
    assert "terminhub db upgrade" in result.stderr
