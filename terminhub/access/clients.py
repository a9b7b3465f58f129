"""The client registry: API clients, their roles and practice numbers, and their hashed secrets.

Secrets are shown once (on `add` and `rotate-secret`) and only their scrypt hash is stored, so a leaked
database does not leak working credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, select

from terminhub.store import schema

ROLES = ("admin", "practice", "referrer", "third-party", "scheduling-client")
BSNR_ROLES = frozenset({"practice", "referrer"})
_BSNR = re.compile(r"[0-9]{9}")

# scrypt cost: ~16 MiB and a few tens of milliseconds per check; strong, yet cheap enough per token request.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAX_N = 2**20  # refuse absurd stored parameters instead of exhausting memory

_clients = schema.clients


class ClientError(ValueError):
    """A client command or registration was refused; the message is fit to show the operator."""


@dataclass(frozen=True)
class Client:
    """One registered API client as the access layer sees it (never carries the secret)."""

    client_id: str
    name: str
    role: str
    bsnrs: tuple[str, ...]
    disabled: bool


# --- secrets -------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, dklen: int = _HASH_BYTES) -> bytes:
    data = secret.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * r * n + 2**20)


def hash_secret(secret: str) -> str:
    """Hash a secret as `scrypt$n$r$p$salt_b64$hash_b64` with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """True when `secret` matches the stored hash; a malformed hash never matches."""
    try:
        scheme, n_s, r_s, p_s, salt_b64, hash_b64 = encoded.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt, expected = base64.b64decode(salt_b64, validate=True), base64.b64decode(hash_b64, validate=True)
    except ValueError:
        return False
    if scheme != "scrypt" or not (1 < n <= _MAX_N and 0 < r <= 32 and 0 < p <= 16) or not expected:
        return False
    actual = _scrypt(secret, salt, n, r, p, dklen=len(expected))
    return hmac.compare_digest(actual, expected)


# Checked against unknown client ids so that a miss costs as long as a wrong secret (no id enumeration).
_DUMMY_HASH = hash_secret(secrets.token_urlsafe(32))


def new_client_id() -> str:
    """A readable, unguessable id: `th-` and 16 url-safe characters."""
    return "th-" + secrets.token_urlsafe(12)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


# --- validation ----------------------------------------------------------------------------------------


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ClientError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")


def _check_bsnrs(role: str, bsnrs: tuple[str, ...]) -> tuple[str, ...]:
    """Practices and referrers are bound to their numbers; other roles must not carry any."""
    if role in BSNR_ROLES and not bsnrs:
        raise ClientError(f"role {role!r} needs at least one --bsnr (9 digits)")
    if role not in BSNR_ROLES and bsnrs:
        raise ClientError(f"role {role!r} takes no --bsnr (only {' and '.join(sorted(BSNR_ROLES))} do)")
    for bsnr in bsnrs:
        if not _BSNR.fullmatch(bsnr):
            raise ClientError(f"--bsnr {bsnr!r} is not a BSNR (exactly 9 digits)")
    return tuple(dict.fromkeys(bsnrs))


# --- rows ----------------------------------------------------------------------------------------------


def _to_client(row) -> Client:  # noqa: ANN001 - a SQLAlchemy Row
    return Client(
        client_id=row.client_id,
        name=row.name,
        role=row.role,
        bsnrs=tuple(json.loads(row.bsnrs or "[]")),
        disabled=bool(row.disabled),
    )


def _require(conn: Connection, client_id: str) -> Client:
    client = get_client(conn, client_id)
    if client is None:
        raise ClientError(f"no client with id {client_id!r}")
    return client


# --- commands ------------------------------------------------------------------------------------------


def add_client(
    conn: Connection, *, name: str, role: str, bsnrs: tuple[str, ...] | list[str] = (), now_us: int
) -> tuple[Client, str]:
    """Register a client; returns it and its plain secret, which is not stored and cannot be shown again."""
    name = name.strip()
    if not name:
        raise ClientError("--name must not be empty")
    _check_role(role)
    bsnrs = _check_bsnrs(role, tuple(b.strip() for b in bsnrs))
    client = Client(client_id=new_client_id(), name=name, role=role, bsnrs=bsnrs, disabled=False)
    secret = new_secret()
    conn.execute(
        _clients.insert().values(
            client_id=client.client_id,
            name=name,
            role=role,
            bsnrs=json.dumps(list(bsnrs)),
            secret_hash=hash_secret(secret),
            disabled=False,
            created_at=now_us,
            changed_at=now_us,
        )
    )
    return client, secret


def disable_client(conn: Connection, client_id: str, now_us: int) -> Client:
    """Shut a client out: its secret stops working now, its tokens once caches recheck (<= 60 s)."""
    _require(conn, client_id)
    conn.execute(
        _clients.update().where(_clients.c.client_id == client_id).values(disabled=True, changed_at=now_us)
    )
    return _require(conn, client_id)


def rotate_secret(conn: Connection, client_id: str, now_us: int) -> tuple[Client, str]:
    """Replace the secret; the old one stops working with this transaction's commit."""
    client = _require(conn, client_id)
    secret = new_secret()
    conn.execute(
        _clients.update()
        .where(_clients.c.client_id == client_id)
        .values(secret_hash=hash_secret(secret), changed_at=now_us)
    )
    return client, secret


def _plausible_id(client_id: str) -> bool:
    """Ids we issue fit the column; anything else (too long, NUL bytes) cannot exist and is not queried."""
    return 0 < len(client_id) <= _clients.c.client_id.type.length and "\x00" not in client_id


def get_client(conn: Connection, client_id: str) -> Client | None:
    if not _plausible_id(client_id):
        return None
    row = conn.execute(select(_clients).where(_clients.c.client_id == client_id)).first()
    return None if row is None else _to_client(row)


def authenticate(conn: Connection, client_id: str, secret: str) -> Client | None:
    """The client for a correct id and secret, else None (unknown id, wrong secret, disabled)."""
    row = None
    if _plausible_id(client_id):
        row = conn.execute(select(_clients).where(_clients.c.client_id == client_id)).first()
    if row is None:
        verify_secret(secret, _DUMMY_HASH)
        return None
    if not verify_secret(secret, row.secret_hash) or row.disabled:
        return None
    return _to_client(row)
