"""Bearer tokens: HS256-signed JWTs, the key they are signed with, and the per-process client cache.

The signing key is shared by every process and host (TERMINHUB_SECRET_KEY or the key `db upgrade` stored),
so a token issued by one process verifies in all. Time comes from an injected clock, so the test clock
(contract 2.4) expires tokens exactly as it expires holds.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import jwt
from sqlalchemy import Connection, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from terminhub.access.clients import Client, get_client
from terminhub.config import Settings
from terminhub.store import schema
from terminhub.store.migrate import SIGNING_KEY

ALGORITHM = "HS256"
# What a token may do is decided by its client's role and practice numbers (re-read at least every
# `client_recheck_s`), not by the scope; the scope says "system-level access, as your role allows".
SCOPE = "system/*.*"
SCOPES_SUPPORTED = (SCOPE,)
MIN_KEY_LENGTH = 32  # RFC 7518 3.2: an HS256 key has at least 256 bits
_REQUIRED_CLAIMS = ["iss", "sub", "iat", "exp", "jti"]
VERIFIED_CACHE_SIZE = 10_000  # tokens whose signature was checked; a client sends its token many times


class InvalidToken(Exception):
    """The bearer token is missing, malformed, expired, tampered with or not ours."""


class SigningKeyError(RuntimeError):
    """No usable token-signing key; the message tells the operator what to do."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise ValueError("the token clock must return an aware datetime")
    return moment.timestamp()


def scope_for(role: str) -> str:
    """The scope granted to a role (all the same today; roles restrict access, see SCOPE)."""
    return SCOPE


class TokenService:
    """Issues and verifies access tokens; one instance per process, shared by all requests."""

    def __init__(
        self, signing_key: str, token_minutes: float, issuer: str, now: Callable[[], datetime] = utc_now
    ) -> None:
        if not signing_key:
            raise SigningKeyError("empty token-signing key")
        if token_minutes <= 0:
            raise ValueError("token lifetime must be positive")
        self._key = signing_key
        self.lifetime_s = max(1, round(token_minutes * 60))
        self.issuer = issuer.rstrip("/")
        self._now = now
        # token -> its claims, once the signature and claims were checked: checking a signature cost a
        # fifth of a Slot read. The expiry is still checked on every use, against the injected clock.
        self._verified: dict[str, dict[str, Any]] = {}

    def issue(self, client: Client) -> dict[str, Any]:
        """A token response body (RFC 6749 5.1) for an authenticated client."""
        issued = int(_timestamp(self._now()))
        scope = scope_for(client.role)
        claims = {
            "iss": self.issuer,
            "sub": client.client_id,
            "iat": issued,
            "exp": issued + self.lifetime_s,
            "jti": secrets.token_urlsafe(16),
            "role": client.role,
            "scope": scope,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime_s, "scope": scope}

    def verify(self, token: str | None) -> str:
        """The client id of a valid token; InvalidToken otherwise. Only HS256 is accepted, never `none`."""
        if not token:
            raise InvalidToken("missing token")
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        exp, sub = claims["exp"], claims["sub"]
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise InvalidToken("exp is not an integer")
        if _timestamp(self._now()) >= exp:
            raise InvalidToken("token expired")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("token has no subject")
        return sub

    def _decode(self, token: str) -> dict[str, Any]:
        # Time claims are checked against the injected clock in `verify`, not PyJWT's wall clock.
        options = {"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": _REQUIRED_CLAIMS}
        try:
            return jwt.decode(token, self._key, algorithms=[ALGORITHM], issuer=self.issuer, options=options)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc) or type(exc).__name__) from exc


def load_signing_key(conn: Connection, settings: Settings) -> str:
    """TERMINHUB_SECRET_KEY if set, else the key `terminhub db upgrade` stored in the database."""
    if settings.secret_key:
        if len(settings.secret_key) < MIN_KEY_LENGTH:
            raise SigningKeyError(f"TERMINHUB_SECRET_KEY must be at least {MIN_KEY_LENGTH} characters long")
        return settings.secret_key
    kv = schema.settings_kv
    try:
        value = conn.execute(select(kv.c.value).where(kv.c.key == SIGNING_KEY)).scalar_one_or_none()
    except (OperationalError, ProgrammingError) as exc:
        raise SigningKeyError(
            "the database has no schema: run `terminhub db upgrade` first (or set TERMINHUB_SECRET_KEY)"
        ) from exc
    if not value:
        raise SigningKeyError("no token-signing key: set TERMINHUB_SECRET_KEY or run `terminhub db upgrade`")
    return value


class _TransactionSource(Protocol):
    def transaction(self, *, write: bool = False) -> AbstractContextManager[Connection]: ...


ConnectionSource = _TransactionSource | Callable[[], AbstractContextManager[Connection]]


class ClientCache:
    """Client records by id, re-read from the database once an entry is `recheck_s` old.

    Tokens live for minutes, but disabling a client must shut it out within `recheck_s` (60 s): every
    authenticated request asks this cache, which costs a database read at most once per client and interval.
    """

    def __init__(self, recheck_s: float = 60.0) -> None:
        self.recheck_s = recheck_s
        self._entries: dict[str, tuple[Client | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, source: ConnectionSource, client_id: str, now_monotonic: float) -> Client | None:
        """The enabled client with this id, or None (unknown or disabled)."""
        with self._lock:
            entry = self._entries.get(client_id)
        if entry is None or now_monotonic - entry[1] >= self.recheck_s or now_monotonic < entry[1]:
            entry = (self._load(source, client_id), now_monotonic)
            with self._lock:
                self._entries[client_id] = entry
        client = entry[0]
        return None if client is None or client.disabled else client

    def fresh(self, client_id: str, now_monotonic: float) -> tuple[bool, Client | None]:
        """(True, what `get` would answer) when the entry needs no database read, else (False, None):
        the event loop answers most requests from the cache without handing them to a thread first."""
        with self._lock:
            entry = self._entries.get(client_id)
        if entry is None or now_monotonic - entry[1] >= self.recheck_s or now_monotonic < entry[1]:
            return False, None
        client = entry[0]
        return True, None if client is None or client.disabled else client

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget one client (or all), e.g. right after this process disabled it."""
        with self._lock:
            if client_id is None:
                self._entries.clear()
            else:
                self._entries.pop(client_id, None)

    @staticmethod
    def _load(source: ConnectionSource, client_id: str) -> Client | None:
        opener = source.transaction if hasattr(source, "transaction") else source
        with opener() as conn:
            return get_client(conn, client_id)
