"""`/admin/clock` (2.4): the test clock's offset, shared by every process through the database."""

from __future__ import annotations

import time

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from terminhub.access.tokens import InvalidToken
from terminhub.clock import Clock
from terminhub.fhir.outcome import FhirError


async def clock_endpoint(request: Request) -> Response:
    state = request.app.state
    if not state.settings.test_clock:
        return _error(FhirError("not-found", "The test clock is off (TERMINHUB_TEST_CLOCK)."))
    try:
        await _require_admin(request)
        if request.method == "GET":
            offset = await run_in_threadpool(_read_offset, state.db)
            return JSONResponse({"offset_s": offset})
        try:
            data = orjson.loads(await request.body())
            offset = float(data["offset_s"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise FhirError("invalid", 'The body must be JSON {"offset_s": N}.') from exc
        await run_in_threadpool(_store_offset, state.db, offset)
        return JSONResponse({"offset_s": offset})
    except FhirError as exc:
        return _error(exc)


async def _require_admin(request: Request) -> None:
    state = request.app.state
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise FhirError("unauthorized", "A valid bearer token is required.",
                        headers={"WWW-Authenticate": 'Bearer realm="terminhub"'})
    try:
        client_id = state.tokens.verify(token.strip())
    except InvalidToken as exc:
        raise FhirError("unauthorized", "The bearer token is invalid or expired.",
                        headers={"WWW-Authenticate": 'Bearer realm="terminhub"'}) from exc
    client = await run_in_threadpool(state.clients.get, state.db, client_id, time.monotonic())
    if client is None:
        raise FhirError("unauthorized", "The client of this token is disabled or unknown.",
                        headers={"WWW-Authenticate": 'Bearer realm="terminhub"'})
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
    return Response(orjson.dumps(exc.outcome()), status_code=exc.status, headers=exc.headers,
                    media_type="application/fhir+json; charset=utf-8")
