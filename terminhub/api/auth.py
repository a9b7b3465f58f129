"""`POST /auth/token` (OAuth 2.0 client credentials) and `GET /.well-known/smart-configuration`.

Contract with the app that mounts these endpoints (set at startup, shared by all requests):

- `request.app.state.db`: the `terminhub.store.database.Database`;
- `request.app.state.tokens`: the `terminhub.access.tokens.TokenService`;
- `request.app.state.settings`: the `terminhub.config.Settings` (for the public base URL).

Errors follow RFC 6749 section 5.2 (`{"error", "error_description"}`) and never carry a token. Cheap request
checks come before client authentication, so malformed requests cost no scrypt work.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from terminhub.access.clients import Client, authenticate
from terminhub.access.tokens import SCOPES_SUPPORTED
from terminhub.store.database import Database

FORM_TYPE = "application/x-www-form-urlencoded"
GRANT_TYPE = "client_credentials"
AUTH_METHODS = ("client_secret_post", "client_secret_basic")
MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 50
BASIC_CHALLENGE = 'Basic realm="terminhub"'
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 5.2 error; `challenge`: authentication by the Authorization header failed."""

    def __init__(self, status: int, error: str, description: str, *, challenge: bool = False) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.challenge = challenge


@dataclass(frozen=True)
class Credentials:
    client_id: str
    secret: str
    by_header: bool


def _invalid_request(description: str) -> OAuthError:
    return OAuthError(400, "invalid_request", description)


def _invalid_client(description: str, *, challenge: bool) -> OAuthError:
    return OAuthError(401, "invalid_client", description, challenge=challenge)


# --- request parsing -----------------------------------------------------------------------------------


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request) -> bytes:
    """The body, refusing to buffer more than MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _invalid_request(f"the request body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request) -> dict[str, str]:
    """The form parameters; another body type, bad encoding or a repeated parameter is invalid_request."""
    if _media_type(request) != FORM_TYPE:
        raise _invalid_request(f"the request body must be {FORM_TYPE}")
    body = await _read_body(request)
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid_request("the request body is not valid form encoding") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise _invalid_request(f"parameter {name!r} is repeated")  # RFC 6749 3.2
        params[name] = value
    return params


def check_grant(params: dict[str, str]) -> None:
    grant = params.get("grant_type")
    if not grant:
        raise _invalid_request("grant_type is required")
    if grant != GRANT_TYPE:
        raise OAuthError(400, "unsupported_grant_type", f"only grant_type={GRANT_TYPE} is supported")


def _decode_basic(value: str) -> tuple[str, str]:
    """RFC 7617 credentials whose parts are form-urlencoded first (RFC 6749 2.3.1)."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise _invalid_client("malformed Basic credentials", challenge=True) from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("malformed Basic credentials", challenge=True)
    return unquote_plus(client_id), unquote_plus(secret)


def _basic_credentials(header: str, params: dict[str, str]) -> Credentials:
    if "client_secret" in params:
        raise _invalid_request("use one client authentication method, not Basic and client_secret together")
    client_id, secret = _decode_basic(header.split(" ", 1)[1] if " " in header else "")
    if "client_id" in params and params["client_id"] != client_id:
        raise _invalid_request("client_id in the body differs from the Basic credentials")
    if not client_id or not secret:
        raise _invalid_client("client id and secret are required", challenge=True)
    return Credentials(client_id, secret, by_header=True)


def client_credentials(request: Request, params: dict[str, str]) -> Credentials:
    """Credentials from HTTP Basic (client_secret_basic) or the body (client_secret_post)."""
    header = request.headers.get("authorization", "")
    if header.split(" ", 1)[0].lower() == "basic":
        return _basic_credentials(header, params)
    client_id, secret = params.get("client_id", ""), params.get("client_secret", "")
    if not client_id or not secret:
        raise _invalid_client(
            "client authentication required (client_secret_basic or client_secret_post)",
            challenge=bool(header),
        )
    return Credentials(client_id, secret, by_header=False)


# --- endpoints -----------------------------------------------------------------------------------------


def _authenticate(db: Database, credentials: Credentials) -> Client | None:
    with db.transaction() as conn:
        return authenticate(conn, credentials.client_id, credentials.secret)


def error_response(exc: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if exc.challenge:
        headers["WWW-Authenticate"] = BASIC_CHALLENGE
    return JSONResponse({"error": exc.error, "error_description": exc.description}, exc.status, headers)


async def token_endpoint(request: Request) -> JSONResponse:
    """POST /auth/token: trade client credentials for a bearer token."""
    try:
        params = await read_form(request)
        check_grant(params)
        credentials = client_credentials(request, params)
        client = await run_in_threadpool(_authenticate, request.app.state.db, credentials)
        if client is None:
            raise _invalid_client("client authentication failed", challenge=credentials.by_header)
    except OAuthError as exc:
        return error_response(exc)
    return JSONResponse(request.app.state.tokens.issue(client), headers=NO_STORE)


def smart_document(base_url: str) -> dict[str, Any]:
    """What this server supports for SMART Backend Services, and nothing it does not."""
    return {
        "token_endpoint": base_url.rstrip("/") + "/auth/token",
        "grant_types_supported": [GRANT_TYPE],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "capabilities": ["client-confidential-symmetric"],
    }


async def smart_configuration(request: Request) -> JSONResponse:
    """GET /.well-known/smart-configuration (no token needed)."""
    return JSONResponse(smart_document(request.app.state.settings.base_url))
