"""`POST /auth/token` and the SMART configuration over real HTTP (uvicorn), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote_plus

import httpx
import psycopg
import pytest
import uvicorn
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.routing import Route

from terminhub.access.clients import Client, add_client, disable_client, rotate_secret
from terminhub.access.tokens import TokenService, load_signing_key
from terminhub.api.auth import smart_configuration, token_endpoint
from terminhub.config import Settings
from terminhub.store.database import Database
from terminhub.store.migrate import upgrade

PG_ADMIN_URL = os.environ.get("TERMINHUB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BASE_URL = "https://hub.example/"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# --- databases -----------------------------------------------------------------------------------------


@contextmanager
def _sqlite(tmp_dir: str) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_dir}/terminhub.db")
    try:
        upgrade(db)
        yield db
    finally:
        db.dispose()


@contextmanager
def _postgresql() -> Iterator[Database]:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    name = f"terminhub_test_access_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db = Database(make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    try:
        upgrade(db)
        yield db
    finally:
        db.dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the server ----------------------------------------------------------------------------------------


def make_app(db: Database, now=lambda: datetime.now(UTC)) -> Starlette:  # noqa: ANN001
    """The two endpoints, mounted as the real app mounts them, with the app.state they rely on."""
    settings = Settings(base_url=BASE_URL, database_url=db.url, secret_key=None)
    with db.transaction() as conn:
        key = load_signing_key(conn, settings)
    app = Starlette(
        routes=[
            Route("/auth/token", token_endpoint, methods=["POST"]),
            Route("/.well-known/smart-configuration", smart_configuration, methods=["GET"]),
        ]
    )
    app.state.db = db
    app.state.settings = settings
    app.state.tokens = TokenService(key, settings.token_minutes, settings.base_url, now)
    return app


@dataclass
class Hub:
    db: Database
    tokens: TokenService
    http: httpx.Client

    def add(self, role: str = "third-party", bsnrs: tuple[str, ...] = ()) -> tuple[Client, str]:
        with self.db.transaction(write=True) as conn:
            return add_client(conn, name="Test app", role=role, bsnrs=bsnrs, now_us=0)

    def token(self, data: dict[str, str] | str, **kwargs: object) -> httpx.Response:
        return self.http.post("/auth/token", data=data, **kwargs)  # type: ignore[arg-type]


@contextmanager
def _serve(app: Starlette) -> Iterator[str]:
    """Run uvicorn on a free port in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    databases = _sqlite(str(tmp_path_factory.mktemp("auth"))) if request.param == "sqlite" else _postgresql()
    with databases as db:
        app = make_app(db)
        with _serve(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            yield Hub(db, app.state.tokens, http)


# --- helpers -------------------------------------------------------------------------------------------


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def _grant(**extra: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", **extra}


def _assert_error(response: httpx.Response, status: int, error: str, *, challenge: bool = False) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["error_description"]
    assert "access_token" not in response.text
    assert response.headers["cache-control"] == "no-store"
    if challenge:
        assert response.headers["www-authenticate"] == 'Basic realm="terminhub"'
    else:
        assert "www-authenticate" not in response.headers


def _assert_token(hub: Hub, response: httpx.Response, client: Client) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["scope"] == "system/*.*"
    assert hub.tokens.verify(body["access_token"]) == client.client_id


# --- success -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "practice", "scheduling-client"])
def test_client_secret_post(hub: Hub, role: str) -> None:
    client, secret = hub.add(role, ("123456789",) if role == "practice" else ())
    _assert_token(hub, hub.token(_grant(client_id=client.client_id, client_secret=secret)), client)


def test_client_secret_basic(hub: Hub) -> None:
    client, secret = hub.add("referrer", ("123456789",))
    _assert_token(hub, hub.token(_grant(), headers=_basic(client.client_id, secret)), client)
    _assert_token(hub, hub.token(_grant(), auth=(client.client_id, secret)), client)


def test_basic_credentials_are_url_decoded(hub: Hub) -> None:
    client, secret = hub.add()
    encoded_secret = f"%{ord(secret[0]):02X}" + secret[1:]  # RFC 6749 2.3.1: form-urlencoded, then Basic
    raw = f"{client.client_id}:{encoded_secret}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    _assert_token(hub, hub.token(_grant(), headers=headers), client)


def test_basic_with_matching_client_id_in_body(hub: Hub) -> None:
    client, secret = hub.add()
    response = hub.token(_grant(client_id=client.client_id), headers=_basic(client.client_id, secret))
    _assert_token(hub, response, client)


def test_form_with_charset_and_scope(hub: Hub) -> None:
    client, secret = hub.add()
    body = f"grant_type=client_credentials&client_id={client.client_id}&client_secret={secret}"
    body += "&scope=system%2F*.read"
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
    _assert_token(hub, hub.http.post("/auth/token", content=body, headers=headers), client)


# --- invalid_client ------------------------------------------------------------------------------------


def test_no_credentials(hub: Hub) -> None:
    _assert_error(hub.token(_grant()), 401, "invalid_client")


def test_unknown_client(hub: Hub) -> None:
    _assert_error(hub.token(_grant(client_id="th-nobody", client_secret="x" * 43)), 401, "invalid_client")
    _assert_error(
        hub.token(_grant(), headers=_basic("th-nobody", "x")), 401, "invalid_client", challenge=True
    )


def test_wrong_secret(hub: Hub) -> None:
    client, secret = hub.add()
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    _assert_error(hub.token(_grant(client_id=client.client_id, client_secret=wrong)), 401, "invalid_client")
    response = hub.token(_grant(), headers=_basic(client.client_id, wrong))
    _assert_error(response, 401, "invalid_client", challenge=True)


@pytest.mark.parametrize("missing", ["client_id", "client_secret", "both"])
def test_incomplete_post_credentials(hub: Hub, missing: str) -> None:
    client, secret = hub.add()
    fields = {"client_id": client.client_id, "client_secret": secret}
    fields = {k: ("" if missing in (k, "both") else v) for k, v in fields.items()}
    _assert_error(hub.token(_grant(**fields)), 401, "invalid_client")
    _assert_error(hub.token(_grant(**{k: v for k, v in fields.items() if v})), 401, "invalid_client")


def test_disabled_client(hub: Hub) -> None:
    client, secret = hub.add()
    with hub.db.transaction(write=True) as conn:
        disable_client(conn, client.client_id, 1)
    _assert_error(hub.token(_grant(client_id=client.client_id, client_secret=secret)), 401, "invalid_client")
    response = hub.token(_grant(), headers=_basic(client.client_id, secret))
    _assert_error(response, 401, "invalid_client", challenge=True)


def test_rotated_secret(hub: Hub) -> None:
    client, old = hub.add()
    with hub.db.transaction(write=True) as conn:
        _, new = rotate_secret(conn, client.client_id, 1)
    _assert_error(hub.token(_grant(client_id=client.client_id, client_secret=old)), 401, "invalid_client")
    _assert_token(hub, hub.token(_grant(client_id=client.client_id, client_secret=new)), client)


@pytest.mark.parametrize(
    "authorization",
    ["Basic", "Basic !!!not-base64", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic Og=="],
)
def test_malformed_basic(hub: Hub, authorization: str) -> None:
    _assert_error(
        hub.token(_grant(), headers={"Authorization": authorization}), 401, "invalid_client", challenge=True
    )


def test_other_authorization_scheme(hub: Hub) -> None:
    response = hub.token(_grant(), headers={"Authorization": "Bearer abc"})
    _assert_error(response, 401, "invalid_client", challenge=True)


# --- invalid_request and unsupported_grant_type --------------------------------------------------------


def test_missing_grant_type(hub: Hub) -> None:
    client, secret = hub.add()
    _assert_error(hub.token({"client_id": client.client_id, "client_secret": secret}), 400, "invalid_request")
    _assert_error(hub.token({"grant_type": "", "client_id": client.client_id}), 400, "invalid_request")
    _assert_error(hub.token({}, headers=_basic(client.client_id, secret)), 400, "invalid_request")


@pytest.mark.parametrize("grant", ["authorization_code", "password", "refresh_token", "CLIENT_CREDENTIALS"])
def test_other_grant(hub: Hub, grant: str) -> None:
    client, secret = hub.add()
    response = hub.token({"grant_type": grant, "client_id": client.client_id, "client_secret": secret})
    _assert_error(response, 400, "unsupported_grant_type")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ('{"grant_type": "client_credentials"}', "application/json"),
        ("grant_type=client_credentials", None),
        ("grant_type=client_credentials", "text/plain"),
        (b"grant_type=client_credentials&client_id=\xff", "application/x-www-form-urlencoded"),
    ],
)
def test_body_not_form_encoded(hub: Hub, content: str | bytes, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    _assert_error(hub.http.post("/auth/token", content=content, headers=headers), 400, "invalid_request")


def test_multipart_refused(hub: Hub) -> None:
    client, secret = hub.add()
    fields = {"grant_type": "client_credentials", "client_id": client.client_id, "client_secret": secret}
    response = hub.http.post("/auth/token", files={"x": b"1"}, data=fields)
    _assert_error(response, 400, "invalid_request")


def test_repeated_parameter(hub: Hub) -> None:
    client, secret = hub.add()
    body = (
        f"grant_type=client_credentials&client_id={client.client_id}&client_secret={secret}&client_secret=x"
    )
    _assert_error(hub.http.post("/auth/token", content=body, headers=FORM), 400, "invalid_request")


def test_two_authentication_methods(hub: Hub) -> None:
    client, secret = hub.add()
    response = hub.token(_grant(client_secret=secret), headers=_basic(client.client_id, secret))
    _assert_error(response, 400, "invalid_request")


def test_client_id_differs_from_basic(hub: Hub) -> None:
    client, secret = hub.add()
    response = hub.token(_grant(client_id="th-other"), headers=_basic(client.client_id, secret))
    _assert_error(response, 400, "invalid_request")


def test_oversized_body(hub: Hub) -> None:
    body = "grant_type=client_credentials&pad=" + "x" * 70_000
    _assert_error(hub.http.post("/auth/token", content=body, headers=FORM), 400, "invalid_request")


# --- discovery -----------------------------------------------------------------------------------------


def test_smart_configuration(hub: Hub) -> None:
    response = hub.http.get("/.well-known/smart-configuration")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "token_endpoint": "https://hub.example/auth/token",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "scopes_supported": ["system/*.*"],
        "capabilities": ["client-confidential-symmetric"],
    }
