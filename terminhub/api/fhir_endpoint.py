"""The `/fhir` endpoint: negotiation, authentication, one transaction per request, audit, rendering.

Every FHIR request passes through `FhirEndpoint.__call__`; handlers in `rest`, `transaction` and the
operation modules only see a `Context` and return a `Reply`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from terminhub import sweep
from terminhub.access.audit import audit_event
from terminhub.access.policy import Caller
from terminhub.access.tokens import ClientCache, InvalidToken, TokenService
from terminhub.api import feed as feed_rules
from terminhub.api import rest, transaction
from terminhub.api.code_search import names_code
from terminhub.api.context import Context, Reply
from terminhub.clock import Clock
from terminhub.config import Settings
from terminhub.fhir import capability, media
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.searchparams import RESOURCE_TYPES
from terminhub.fhir.validation import valid_id
from terminhub.store.database import Database, WriteNeeded
from terminhub.store.repository import Actor, Repository

log = logging.getLogger("terminhub.fhir")

Operation = Callable[[Context, "Call"], Reply]
OPERATIONS: dict[tuple[str | None, str], Operation] = {}
PUBLIC_TYPES = ("OperationDefinition", "SearchParameter")
EXPIRY_JOBS = ("booking-expiries", "referral-windows")


# hook(conn, caller, error, now_us): runs in a refusal's own transaction (e.g. counting failed look-ups)
RefusalHook = Callable[[Any, Caller, FhirError, int], None]
REFUSAL_HOOKS: list[RefusalHook] = []


def on_refusal(hook: RefusalHook) -> None:
    if hook not in REFUSAL_HOOKS:
        REFUSAL_HOOKS.append(hook)


# POSTed operations that mostly only read: they run as reads, and again as writes where they raise
# `WriteNeeded` (a code search writes only as its window opens or is found ended).
READS_FIRST: set[tuple[str | None, str]] = set()


def register_operation(
    resource_type: str | None, name: str, handler: Operation, *, reads_first: bool = False
) -> None:
    """Faces register `$name` handlers (type-level or system-level when resource_type is None)."""
    OPERATIONS[(resource_type, name)] = handler
    if reads_first:
        READS_FIRST.add((resource_type, name))


@dataclass
class Call:
    """The parts of an HTTP request a handler may need."""

    method: str
    segments: list[str]
    params: list[tuple[str, str]]
    body: bytes
    content_type: str | None
    headers: dict[str, str]

    def resource(self) -> dict:
        return media.parse_resource(self.body, self.content_type)


class FhirEndpoint:
    """ASGI-facing callable for everything under /fhir."""

    def __init__(self, settings: Settings, db: Database, tokens: TokenService, clients: ClientCache) -> None:
        self.settings = settings
        self.db = db
        self.tokens = tokens
        self.clients = clients
        self.tz = ZoneInfo(settings.timezone)
        self._capability: bytes | None = None  # the CapabilityStatement, serialised once per process

    async def __call__(self, request: Request) -> Response:
        params = list(parse_qsl(request.url.query, keep_blank_values=True))
        segments = [s for s in request.path_params.get("path", "").split("/") if s]
        try:
            fmt = media.response_format(_first(params, "_format"), request.headers.get("accept"))
        except FhirError as exc:
            caller = await self.identify(request)
            await run_in_threadpool(self.audit_refusal, caller, request.method, segments, exc)
            return self.render(Reply(exc.status, exc.outcome(), exc.headers), "json")
        try:
            public = self.public_reply(request.method, segments, params)
            if public is not None:
                return self.render(public, fmt, pretty=_first(params, "_pretty") == "true")
            caller = await self.authenticate(request)
        except FhirError as exc:
            await run_in_threadpool(self.audit_refusal, None, request.method, segments, exc)
            return self.render(Reply(exc.status, exc.outcome(), exc.headers), fmt)
        content_type = request.headers.get("content-type")
        try:
            body = await _read_body(request)
            if request.method == "POST" and segments and segments[-1] == "_search":
                params = params + _form_params(body, content_type)
        except FhirError as exc:
            await run_in_threadpool(self.audit_refusal, caller, request.method, segments, exc)
            return self.render(Reply(exc.status, exc.outcome(), exc.headers), fmt)
        call = Call(request.method, segments, params, body, content_type, dict(request.headers))
        if _is_read_by_id(call):
            outcome = self.attempt(caller, call, fmt)
            if isinstance(outcome, Refusal):  # its AuditEvent is a write: it may wait, so not in the loop
                outcome = await run_in_threadpool(self.refuse, caller, call, outcome)
            reply = outcome
        else:
            reply = await run_in_threadpool(self.execute, caller, call, fmt)
        return self.render(reply, fmt, pretty=_first(params, "_pretty") == "true")

    # -- stages --------------------------------------------------------------------------------------
    async def authenticate(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        unauthorized = FhirError(
            "unauthorized",
            "A valid bearer token is required.",
            headers={"WWW-Authenticate": 'Bearer realm="terminhub"'},
        )
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized
        try:
            client_id = self.tokens.verify(token.strip())
        except InvalidToken as exc:
            raise FhirError(
                "unauthorized",
                "The bearer token is invalid or expired.",
                headers={"WWW-Authenticate": 'Bearer realm="terminhub", error="invalid_token"'},
            ) from exc
        now = time.monotonic()
        cached, client = self.clients.fresh(client_id, now)
        if not cached:
            client = await run_in_threadpool(self.clients.get, self.db, client_id, now)
        if client is None or client.disabled:
            raise FhirError(
                "unauthorized",
                "The client of this token is disabled or unknown.",
                headers={"WWW-Authenticate": 'Bearer realm="terminhub", error="invalid_token"'},
            )
        return Caller(client.client_id, client.role, client.name, tuple(client.bsnrs))

    async def identify(self, request: Request) -> Caller | None:
        """The caller of a request refused before authentication, for its AuditEvent (None: unknown)."""
        try:
            return await self.authenticate(request)
        except FhirError:
            return None

    def public_reply(self, method: str, segments: list[str], params: list[tuple[str, str]]) -> Reply | None:
        """metadata and the server's own definitions need no token."""
        if segments == ["metadata"] and method == "GET":
            if self._capability is None:
                statement = capability.capability_statement(self.settings, _version(), _published())
                self._capability = orjson.dumps(statement)
            return Reply(200, self._capability)
        if segments and segments[0] in PUBLIC_TYPES and method == "GET" and len(segments) <= 2:
            if len(segments) == 2:
                found = capability.definition_lookup(segments[0], segments[1], self.settings)
                if found is None:
                    raise FhirError("not-found", f"{segments[0]}/{segments[1]} is not known.")
                return Reply(200, found)
            items = capability.definitions(segments[0], self.settings)
            wanted = dict(params)
            items = [
                d for d in items if all(str(d.get(k)) == v for k, v in wanted.items() if k in ("url", "code"))
            ]
            entries = [
                {
                    "fullUrl": f"{self.settings.fhir_base}/{d['resourceType']}/{d['id']}",
                    "resource": d,
                    "search": {"mode": "match"},
                }
                for d in items
            ]
            return Reply(
                200, {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
            )
        return None

    def execute(self, caller: Caller, call: Call, fmt: str) -> Reply:
        """Run one request in one transaction; a refusal rolls back and is audited on its own."""
        outcome = self.attempt(caller, call, fmt)
        return self.refuse(caller, call, outcome) if isinstance(outcome, Refusal) else outcome

    def refuse(self, caller: Caller, call: Call, refusal: Refusal) -> Reply:
        """Audit a refused request in a transaction of its own and answer with its OperationOutcome."""
        exc = refusal.error
        self.audit_refusal(caller, call.method, call.segments, exc, refusal.ctx)
        return Reply(exc.status, exc.outcome(), exc.headers)

    def attempt(self, caller: Caller, call: Call, fmt: str) -> Reply | Refusal:
        """One request in one transaction (rolled back where it is refused)."""
        # Code searches keep paging state; a practice's feed polls are counted in the database.
        write = call.method != "GET" or names_code(call.params) or polls_feed_call(caller, call)
        if caller.role == "practice" and feed_rules.is_feed_search(call.method, call.segments):
            # 2.4: a practice's Provenance search first writes down what has expired meanwhile.
            sweep.run_jobs(self.db, self.settings, EXPIRY_JOBS)
        if write and _reads_first(call):
            try:
                return self._attempt(caller, call, fmt, write=False)
            except WriteNeeded:
                pass  # nothing was written: the read ran outside a transaction or rolled back
        return self._attempt(caller, call, fmt, write=write)

    def _attempt(self, caller: Caller, call: Call, fmt: str, *, write: bool) -> Reply | Refusal:
        ctx: Context | None = None
        try:
            with self.db.transaction(write=write) as conn:
                clock = Clock()
                if self.settings.test_clock:
                    clock.refresh(conn)
                prefer = _prefer(call.headers.get("prefer", ""))
                ctx = Context(
                    self.settings,
                    conn,
                    clock,
                    self.tz,
                    caller,
                    fmt,
                    prefer.get("return", "representation"),
                    prefer.get("handling") == "strict",
                )
                reply = self.route(ctx, call)
                if ctx.repo.changes:
                    self.write_audit(ctx.repo, caller, ctx.interaction, reply.status, ctx.audit_entity)
                return reply
        except FhirError as exc:
            return Refusal(exc, ctx)

    def route(self, ctx: Context, call: Call) -> Reply:
        seg, method = call.segments, call.method
        if not seg:
            if method == "POST":
                ctx.interaction = "transaction"
                return transaction.process(ctx, call.resource(), self.route)
            raise FhirError("method-not-allowed", f"{method} on the base URL is not supported.")
        if seg[0].startswith("$"):
            return self.operation(ctx, None, seg[0][1:], call)
        if seg == ["_history"] and method == "GET":
            return rest.type_history(ctx, None, dict(call.params))
        resource_type = seg[0]
        if resource_type not in RESOURCE_TYPES:
            raise FhirError("not-found", f"Resource type {resource_type} is not served here.")
        if len(seg) == 1:
            if method == "GET":
                return rest.search(ctx, resource_type, call.params)
            if method == "POST":
                return rest.create(ctx, resource_type, call.resource(), call.headers.get("if-none-exist"))
        elif len(seg) == 2:
            second = seg[1]
            if second == "_search" and method == "POST":
                return rest.search(ctx, resource_type, call.params)
            if second == "_history" and method == "GET":
                return rest.type_history(ctx, resource_type, dict(call.params))
            if second.startswith("$"):
                return self.operation(ctx, resource_type, second[1:], call)
            if method == "GET":
                return rest.read(ctx, resource_type, second)
            if method == "PUT":
                return rest.update(ctx, resource_type, second, call.resource(), call.headers.get("if-match"))
            if method == "DELETE":
                return rest.delete(ctx, resource_type, second)
        elif len(seg) == 3 and seg[2] == "_history" and method == "GET":
            return rest.instance_history(ctx, resource_type, seg[1], dict(call.params))
        elif len(seg) == 3 and seg[2].startswith("$"):
            return self.operation(ctx, resource_type, seg[2][1:], call, instance=seg[1])
        elif len(seg) == 4 and seg[2] == "_history" and method == "GET":
            return rest.vread(ctx, resource_type, seg[1], seg[3])
        raise FhirError("method-not-allowed", f"{method} /{'/'.join(seg)} is not supported.")

    def operation(
        self, ctx: Context, resource_type: str | None, name: str, call: Call, instance: str | None = None
    ) -> Reply:
        ctx.interaction = "operation"
        handler = OPERATIONS.get((resource_type, name))
        if handler is None:
            raise FhirError("not-found", f"The operation ${name} is not offered here.")
        if instance is not None:
            call.headers["x-terminhub-instance"] = instance
        return handler(ctx, call)

    # -- audit ---------------------------------------------------------------------------------------
    def write_audit(
        self,
        repo: Repository,
        caller: Caller | None,
        interaction: str,
        status: int,
        entity: str | None,
        description: str | None = None,
    ) -> None:
        event = audit_event(
            interaction=interaction,
            status=status,
            now_us=repo.clock.now_us(),
            client_id=caller.client_id if caller else "anonymous",
            client_name=caller.name if caller else "anonymous",
            entity=entity,
            system_name=self.settings.system_name,
            description=description,
        )
        repo.save("AuditEvent", event)

    def audit_refusal(
        self,
        caller: Caller | None,
        method: str,
        segments: list[str],
        exc: FhirError,
        ctx: Context | None = None,
    ) -> None:
        """A refused call leaves one AuditEvent and nothing else."""
        if exc.status >= 500:
            log.error("server error: %s", exc.text)
        interaction = (
            ctx.interaction
            if ctx
            else {"GET": "read", "POST": "create", "PUT": "update", "DELETE": "delete"}.get(
                method, "operation"
            )
        )
        entity = ctx.audit_entity if ctx else ("/".join(segments[:2]) if segments else None)
        try:
            with self.db.transaction(write=True) as conn:
                clock = Clock()
                if self.settings.test_clock:
                    clock.refresh(conn)
                actor = (
                    Actor(caller.client_id, caller.role, caller.name)
                    if caller
                    else Actor("anonymous", "none", "")
                )
                repo = Repository(conn, clock, self.tz, actor)
                self.write_audit(repo, caller, interaction, exc.status, _safe_entity(entity), exc.text)
                if caller is not None:
                    for hook in REFUSAL_HOOKS:
                        hook(conn, caller, exc, clock.now_us())
        except Exception:  # noqa: BLE001 - auditing must never turn a 4xx into a 500
            log.exception("could not write the AuditEvent of a refused call")

    # -- rendering -----------------------------------------------------------------------------------
    def render(self, reply: Reply, fmt: str, *, pretty: bool = False) -> Response:
        headers = dict(reply.headers)
        if reply.body is None:
            return Response(status_code=reply.status, headers=headers)
        body = reply.body
        if fmt == "xml":
            data = orjson.loads(body) if isinstance(body, bytes) else orjson.loads(orjson.dumps(body))
            content = media.render(data, "xml")
        elif isinstance(body, bytes):
            content = body
        else:
            content = orjson.dumps(body, option=orjson.OPT_INDENT_2 if pretty else 0)
        return Response(content, status_code=reply.status, headers=headers, media_type=media.MEDIA[fmt])


def polls_feed_call(caller: Caller, call: Call) -> bool:
    """A practice's GET that the polling rule counts (it writes its mark, so it runs as a writer)."""
    seg = call.segments
    if call.method != "GET" or not seg or len(seg) > 2:
        return False
    if seg == ["_history"]:
        return feed_rules.polls_feed(caller, None, call.params, history=True)
    if len(seg) == 2:
        return seg[1] == "_history" and feed_rules.polls_feed(caller, seg[0], call.params, history=True)
    return feed_rules.polls_feed(caller, seg[0], call.params, history=False)


def _first(params: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in params if k == name), None)


def _prefer(header: str) -> dict[str, str]:
    prefs = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key:
            prefs[key.strip().lower()] = value.strip().strip('"')
    return prefs


def _form_params(body: bytes, content_type: str | None) -> list[tuple[str, str]]:
    if not body:
        return []
    if (content_type or "").split(";")[0].strip().lower() != media.FORM_TYPE:
        raise FhirError("unsupported-media-type", "POST _search takes application/x-www-form-urlencoded.")
    try:
        return list(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError as exc:
        raise FhirError("invalid", "The form body is not UTF-8.") from exc


@dataclass(frozen=True)
class Refusal:
    """A request refused and rolled back, its AuditEvent still to be written."""

    error: FhirError
    ctx: Context | None


def _reads_first(call: Call) -> bool:
    """A POST of an operation registered `reads_first` (system or type level, not on an instance)."""
    seg = call.segments
    if call.method != "POST" or not seg or not seg[-1].startswith("$") or len(seg) > 2:
        return False
    return (seg[0] if len(seg) == 2 else None, seg[-1][1:]) in READS_FIRST


def _is_read_by_id(call: Call) -> bool:
    """GET [type]/[id] without parameters: one indexed query outside a transaction block, run in the event
    loop itself. Handing it to a worker thread and back cost more than the read (Slot reads over HTTP, two
    runs: 830 → 1,810 and 763 → 1,009 req/s); longer requests keep their thread, so none holds the loop,
    and so does a refused read's AuditEvent (a write, which may wait for a lock)."""
    by_id = len(call.segments) == 2 and call.segments[1][0] not in "_$"
    return call.method == "GET" and by_id and not call.params


async def _read_body(request: Request) -> bytes:
    if request.method in ("GET", "DELETE", "HEAD"):
        return b""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > media.MAX_BODY:
        raise FhirError("too-large", "The request body is larger than 50 MB.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > media.MAX_BODY:
            raise FhirError("too-large", "The request body is larger than 50 MB.")
        chunks.append(chunk)
    return b"".join(chunks)


def _safe_entity(entity: str | None) -> str | None:
    if not entity:
        return None
    parts = entity.split("/")
    if parts[0] not in RESOURCE_TYPES or len(parts) > 2 or not all(valid_id(p) for p in parts[1:]):
        return parts[0] if parts[0] in RESOURCE_TYPES else None
    return "/".join(parts)


def _version() -> str:
    from terminhub import __version__

    return __version__


def _published() -> str:
    return "2026-11-22"
