"""`/admin/clock` (2.4): the test clock's offset, shared by every process through the database."""

from __future__ import annotations

import math
import time

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from terminhub.access.tokens import InvalidToken
from terminhub.clock import Clock
from terminhub.fhir.outcome import FhirError

MAX_OFFSET_S = 100 * 366 * 24 * 3600


async def clock_endpoint(request: Request) -> Response:
    state = request.app.state
    if not state.settings.test_clock:
        return _error(FhirError("not-found", "The test clock is off (TERMINHUB_TEST_CLOCK)."))
    try:
        await _require_admin(request)
        if request.method == "GET":
            offset = await run_in_threadpool(_read_offset, state.db)
            return JSONResponse({"offset_s": offset})
        offset = _parse_offset(await request.body())
        await run_in_threadpool(_store_offset, state.db, offset)
        return JSONResponse({"offset_s": offset})
    except FhirError as exc:
        return _error(exc)


def _parse_offset(body: bytes) -> float:
    """`{"offset_s": N}` with N a finite JSON number of seconds, at most a century either way."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError("invalid", 'The body must be JSON {"offset_s": N}.') from exc
    offset = data.get("offset_s") if isinstance(data, dict) else None
    if (
        isinstance(offset, bool)
        or not isinstance(offset, int | float)
        or not math.isfinite(offset)
        or abs(offset) > MAX_OFFSET_S
    ):
        raise FhirError("invalid", 'The body must be JSON {"offset_s": N}, N seconds (at most a century).')
    return float(offset)


async def _require_admin(request: Request) -> None:
    state = request.app.state
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise FhirError(
            "unauthorized",
            "A valid bearer token is required.",
            headers={"WWW-Authenticate": 'Bearer realm="terminhub"'},
        )
    try:
        client_id = state.tokens.verify(token.strip())
    except InvalidToken as exc:
        raise FhirError(
            "unauthorized",
            "The bearer token is invalid or expired.",
            headers={"WWW-Authenticate": 'Bearer realm="terminhub"'},
        ) from exc
    client = await run_in_threadpool(state.clients.get, state.db, client_id, time.monotonic())
    if client is None:
        raise FhirError(
            "unauthorized",
            "The client of this token is disabled or unknown.",
            headers={"WWW-Authenticate": 'Bearer realm="terminhub"'},
        )
    if client.role != "admin":
        raise FhirError("forbidden", "Only admin may read or set the test clock.")


def _read_offset(db) -> float:  # noqa: ANN001
    with db.transaction() as conn:
        clock = Clock()
        clock.refresh(conn)
        return clock.offset_s


def _store_offset(db, offset: float) -> None:  # noqa: ANN001
    with db.transaction(write=True) as conn:
        Clock.store_offset(conn, offset)


def _error(exc: FhirError) -> Response:
    return Response(
        orjson.dumps(exc.outcome()),
        status_code=exc.status,
        headers=exc.headers,
        media_type="application/fhir+json; charset=utf-8",
    )
