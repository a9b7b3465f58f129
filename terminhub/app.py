"""create_app(settings): the one place where the parts are wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

import terminhub.api.kbv  # noqa: F401  (registers the operations)
import terminhub.api.scheduling  # noqa: F401  (registers the operations)
import terminhub.api.sync  # noqa: F401  (registers the operation)
from terminhub import garbage_collection, sweep
from terminhub.access.tokens import ClientCache, TokenService, load_signing_key
from terminhub.api.admin import clock_endpoint
from terminhub.api.auth import smart_configuration, token_endpoint
from terminhub.api.fhir_endpoint import FhirEndpoint, on_refusal
from terminhub.booking import events, expiry
from terminhub.config import Settings
from terminhub.referral import service as referral_service
from terminhub.store import feed
from terminhub.store.database import Database

log = logging.getLogger("terminhub")
FHIR_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    db = Database(settings.database_url, pool_size=settings.request_threads)
    with db.transaction() as conn:
        key = load_signing_key(conn, settings)
    tokens = TokenService(key, settings.token_minutes, settings.base_url)
    clients = ClientCache(settings.client_recheck_s)
    fhir = FhirEndpoint(settings, db, tokens, clients)
    feed.configure(settings.system_name)
    sweep.register("booking-expiries", expiry.sweep_job)
    sweep.register("referral-windows", referral_service.sweep_job)
    events.on_ended(referral_service.release_code)
    on_refusal(count_failed_lookup)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # As many request threads as pooled connections (see CONNECTIONS_PER_PROCESS).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        task = asyncio.create_task(sweep.loop(db, settings))
        try:
            yield
        finally:
            task.cancel()
            db.dispose()

    async def root(_request: Request) -> Response:
        return JSONResponse(
            {
                "name": "terminhub",
                "fhir": settings.fhir_base,
                "token_endpoint": settings.base_url.rstrip("/") + "/auth/token",
            }
        )

    routes = [
        Route("/", root),
        Route("/termin", termin_page, methods=["GET"]),
        Route("/auth/token", token_endpoint, methods=["POST"]),
        Route("/.well-known/smart-configuration", smart_configuration, methods=["GET"]),
        Route("/fhir/.well-known/smart-configuration", smart_configuration, methods=["GET"]),
        Route("/admin/clock", clock_endpoint, methods=["GET", "POST"]),
        Route("/fhir", fhir.__call__, methods=FHIR_METHODS),
        Route("/fhir/{path:path}", fhir.__call__, methods=FHIR_METHODS),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.tokens = tokens
    app.state.clients = clients
    return app


async def termin_page(_request: Request) -> Response:
    """The page a referral form points to (4.2 `url`): how to book with a Vermittlungscode. No token."""
    page = resources.files("terminhub.api").joinpath("termin.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


def count_failed_lookup(conn, caller, error, now_us: int) -> None:  # noqa: ANN001
    """Failed code look-ups count against the client in every process (4.1 secrecy)."""
    if error.code in ("code-malformed", "code-unknown"):
        referral_service.record_failed_lookup(conn, caller.client_id, now_us)


def app_from_environment() -> Starlette:
    """Factory for `uvicorn --factory` workers: settings come from TERMINHUB_* variables. A worker's
    garbage collector is tuned for serving once the app is built (terminhub/garbage_collection.py)."""
    app = create_app(Settings())
    garbage_collection.tune_for_serving()
    return app
