"""Access tokens, the signing key and the client cache, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import threading
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy import Connection, delete, select

from terminhub.access.clients import Client, add_client, disable_client
from terminhub.access.tokens import ClientCache, InvalidToken, SigningKeyError, TokenService, load_signing_key
from terminhub.config import Settings
from terminhub.store import schema
from terminhub.store.database import Database
from terminhub.store.migrate import SIGNING_KEY

KEY = "k" * 64
ISSUER = "https://hub.example"
CLIENT = Client("th-abcdefghijklmnop", "Praxis", "practice", ("123456789",), False)


class FakeClock:
    """An injectable UTC clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def shift(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(clock: FakeClock) -> TokenService:
    return TokenService(KEY, 15, ISSUER, clock)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


# --- issue and verify ----------------------------------------------------------------------------------


def test_issue(tokens: TokenService, clock: FakeClock) -> None:
    body = tokens.issue(CLIENT)
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["scope"] == "system/*.*"
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    claims = _claims(body["access_token"])
    issued = int(clock.now.timestamp())
    assert claims["iss"] == ISSUER and claims["sub"] == CLIENT.client_id and claims["role"] == "practice"
    assert (claims["iat"], claims["exp"]) == (issued, issued + 900)
    assert claims["jti"] != _claims(tokens.issue(CLIENT)["access_token"])["jti"]


def test_verify_returns_client_id(tokens: TokenService, clock: FakeClock) -> None:
    token = tokens.issue(CLIENT)["access_token"]
    assert tokens.verify(token) == CLIENT.client_id
    # another process with the same key and issuer accepts it too
    assert TokenService(KEY, 15, ISSUER + "/", clock).verify(token) == CLIENT.client_id


def test_fractional_minutes() -> None:
    assert TokenService(KEY, 0.5, ISSUER).issue(CLIENT)["expires_in"] == 30


def test_expiry_follows_injected_clock(tokens: TokenService, clock: FakeClock) -> None:
    token = tokens.issue(CLIENT)["access_token"]
    clock.shift(seconds=899)
    assert tokens.verify(token) == CLIENT.client_id
    clock.shift(seconds=1)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token)


def test_signature_checked_once_per_token(tokens: TokenService, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client sends its token with every request: its signature is checked the first time only."""
    token = tokens.issue(CLIENT)["access_token"]
    decoded = []
    real_decode = tokens._decode
    monkeypatch.setattr(tokens, "_decode", lambda t: decoded.append(t) or real_decode(t))
    for _ in range(3):
        assert tokens.verify(token) == CLIENT.client_id
    assert decoded == [token]
    header, payload, signature = token.split(".")
    with pytest.raises(InvalidToken):  # a tampered copy is a different token, checked afresh
        tokens.verify(f"{header}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}")


def test_clock_in_the_past_still_verifies(clock: FakeClock) -> None:
    """Exp is checked against the injected clock, not the wall clock, in both directions."""
    clock.now = datetime(2001, 1, 1, tzinfo=UTC)
    service = TokenService(KEY, 15, ISSUER, clock)
    assert service.verify(service.issue(CLIENT)["access_token"]) == CLIENT.client_id


def test_tampered_signature(tokens: TokenService) -> None:
    header, payload, signature = tokens.issue(CLIENT)["access_token"].split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(InvalidToken):
        tokens.verify(f"{header}.{payload}.{flipped}")


def test_tampered_payload(tokens: TokenService) -> None:
    header, payload, signature = tokens.issue(CLIENT)["access_token"].split(".")
    forged = _b64({**_claims(f"{header}.{payload}.{signature}"), "sub": "th-someone-else", "role": "admin"})
    with pytest.raises(InvalidToken):
        tokens.verify(f"{header}.{forged}.{signature}")


def _unsigned(tokens: TokenService) -> str:
    claims = _claims(tokens.issue(CLIENT)["access_token"])
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def test_alg_none_rejected(tokens: TokenService) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(_unsigned(tokens))
    with pytest.raises(InvalidToken):
        tokens.verify(jwt.encode(_claims(tokens.issue(CLIENT)["access_token"]), None, algorithm="none"))


@pytest.mark.parametrize(("key", "algorithm"), [(KEY, "HS512"), (KEY, "HS384"), ("x" * 48, "HS256")])
def test_wrong_alg_or_key_rejected(tokens: TokenService, key: str, algorithm: str) -> None:
    claims = _claims(tokens.issue(CLIENT)["access_token"])
    with pytest.raises(InvalidToken):
        tokens.verify(jwt.encode(claims, key, algorithm=algorithm))


@pytest.mark.parametrize(
    "change",
    [{"iss": "https://evil.example"}, {"exp": None}, {"jti": None}, {"sub": None}, {"exp": "99999999999"}],
)
def test_bad_claims_rejected(tokens: TokenService, change: dict) -> None:
    claims = _claims(tokens.issue(CLIENT)["access_token"])
    claims = {k: v for k, v in {**claims, **change}.items() if v is not None}
    with pytest.raises(InvalidToken):
        tokens.verify(jwt.encode(claims, KEY, algorithm="HS256"))


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c", "Bearer x", "ä.ö.ü", "...."])
def test_malformed_rejected(tokens: TokenService, token: str | None) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(token)


def test_naive_clock_refused() -> None:
    service = TokenService(KEY, 15, ISSUER, lambda: datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        service.issue(CLIENT)


# --- the signing key -----------------------------------------------------------------------------------


class _Rollback(Exception):
    pass


def test_signing_key_from_settings(db: Database) -> None:
    with db.transaction() as conn:
        assert load_signing_key(conn, Settings(secret_key="s" * 40)) == "s" * 40
        with pytest.raises(SigningKeyError, match="at least 32"):
            load_signing_key(conn, Settings(secret_key="short"))


def test_signing_key_from_database(db: Database) -> None:
    kv = schema.settings_kv
    with db.transaction() as conn:
        stored = conn.execute(select(kv.c.value).where(kv.c.key == SIGNING_KEY)).scalar_one()
        assert load_signing_key(conn, Settings(secret_key=None)) == stored
    assert len(stored) >= 32


def test_signing_key_missing(db: Database) -> None:
    with pytest.raises(_Rollback), db.transaction(write=True) as conn:
        conn.execute(delete(schema.settings_kv).where(schema.settings_kv.c.key == SIGNING_KEY))
        with pytest.raises(SigningKeyError, match="db upgrade"):
            load_signing_key(conn, Settings(secret_key=None))
        raise _Rollback


def test_signing_key_without_schema(tmp_path) -> None:  # noqa: ANN001
    empty = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SigningKeyError, match="db upgrade"), empty.transaction() as conn:
        load_signing_key(conn, Settings(secret_key=None))
    empty.dispose()


# --- the client cache ----------------------------------------------------------------------------------


class CountingSource:
    """A connection factory that counts database reads."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.reads = 0

    def __call__(self) -> AbstractContextManager[Connection]:
        self.reads += 1
        return self.db.transaction()


def _new_client(db: Database) -> Client:
    with db.transaction(write=True) as conn:
        return add_client(conn, name="App", role="third-party", bsnrs=(), now_us=0)[0]


def _disable(db: Database, client_id: str) -> None:
    with db.transaction(write=True) as conn:
        disable_client(conn, client_id, 1)


def test_cache_reads_at_most_once_per_interval(db: Database) -> None:
    client = _new_client(db)
    cache, source = ClientCache(60), CountingSource(db)
    for now in (100.0, 120.0, 159.9):
        assert cache.get(source, client.client_id, now) == client
    assert source.reads == 1
    assert cache.get(source, client.client_id, 160.0) == client
    assert source.reads == 2


def test_disabled_client_token_shut_out_within_interval(db: Database, tokens: TokenService) -> None:
    client = _new_client(db)
    cache = ClientCache(Settings().client_recheck_s)
    token = tokens.issue(client)["access_token"]
    assert cache.get(db, tokens.verify(token), 1000.0) == client
    _disable(db, client.client_id)
    assert cache.get(db, tokens.verify(token), 1030.0) == client  # still cached, within the 60 s allowed
    assert cache.get(db, tokens.verify(token), 1060.0) is None  # the token is valid, the client is not


def test_cache_unknown_and_invalidate(db: Database) -> None:
    client = _new_client(db)
    cache = ClientCache(60)
    assert cache.get(db, "th-nobody", 0.0) is None
    assert cache.get(db, client.client_id, 0.0) == client
    _disable(db, client.client_id)
    cache.invalidate(client.client_id)
    assert cache.get(db, client.client_id, 1.0) is None


def test_cache_clock_going_backwards_rereads(db: Database) -> None:
    client = _new_client(db)
    cache, source = ClientCache(60), CountingSource(db)
    cache.get(source, client.client_id, 500.0)
    cache.get(source, client.client_id, 10.0)
    assert source.reads == 2


def test_cache_threads(db: Database) -> None:
    clients = [_new_client(db) for _ in range(3)]
    cache, errors = ClientCache(0.0), []

    def worker() -> None:
        try:
            for i in range(20):
                assert cache.get(db, clients[i % 3].client_id, float(i)) == clients[i % 3]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
