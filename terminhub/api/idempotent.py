"""`Idempotency-Key` for the operations that hold, book, cancel or issue codes (contract 2.5).

A retry with the same key and the same request gets the stored first response and does nothing more; the
same key with another request is 422. Only successful responses are kept: a refusal rolls its transaction
back and stores nothing (the key row included), so a retry after a refusal is decided afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from terminhub.api.context import Context, Reply
from terminhub.store import idempotency

if TYPE_CHECKING:
    from terminhub.api.fhir_endpoint import Call

HEADER = "idempotency-key"


def replay_or_run(ctx: Context, call: Call, request: dict, run: Callable[[], Reply]) -> Reply:
    """Answer a repeat from the store, else `run` and keep its answer when it succeeded.

    `request` is the parsed body: its canonical JSON is the fingerprint, so the same Parameters sent
    as JSON or as XML count as the same request.
    """
    key = call.headers.get(HEADER)
    if key is None:
        return run()
    idempotency.check_key(key)
    fingerprint = idempotency.request_hash(
        call.method, "/".join(call.segments), orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    )
    now = ctx.clock.now_us()
    client = ctx.caller.client_id
    found = idempotency.lookup(ctx.conn, client, key, fingerprint, now)
    if found is not None:
        return Reply(found.status, found.body or None, found.headers)
    reply = run()
    if not 200 <= reply.status < 300:
        return reply
    content = orjson.dumps(reply.body) if isinstance(reply.body, dict) else (reply.body or b"")
    remembered = idempotency.Remembered(reply.status, dict(reply.headers), content)
    idempotency.remember(ctx.conn, client, key, fingerprint, now, remembered)
    return Reply(reply.status, content or None, reply.headers)
