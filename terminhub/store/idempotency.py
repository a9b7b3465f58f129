"""Idempotency-Key storage (2.5): the first response to a key is kept 24 h and replayed on repeats."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson
from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from terminhub.fhir.outcome import FhirError
from terminhub.store import schema

KEEP_US = 24 * 3600 * 1_000_000
_KEY = re.compile(r"[\x21-\x7e]{1,64}")


@dataclass(frozen=True)
class Remembered:
    status: int
    headers: dict[str, str]
    body: bytes


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise FhirError("invalid", "Idempotency-Key must be 1–64 visible ASCII characters.")
    return key


def request_hash(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x00")
    return digest.hexdigest()


def lookup(conn: Connection, client_id: str, key: str, fingerprint: str, now_us: int) -> Remembered | None:
    """The stored first response for this key, None if new; 422 if the key came with another request."""
    t = schema.idempotency
    row = conn.execute(
        select(t.c.request_hash, t.c.status, t.c.headers, t.c.body, t.c.created).where(
            t.c.client_id == client_id, t.c.key == key
        )
    ).first()
    if row is None or row.created < now_us - KEEP_US:
        return None
    if row.request_hash != fingerprint:
        raise FhirError("business-rule", "This Idempotency-Key was used before with a different request.")
    return Remembered(row.status, orjson.loads(row.headers), row.body)


def remember(
    conn: Connection, client_id: str, key: str, fingerprint: str, now_us: int, response: Remembered
) -> None:
    """Keep the first response; a concurrent first use of the same key loses with a conflict."""
    t = schema.idempotency
    conn.execute(delete(t).where(t.c.client_id == client_id, t.c.key == key, t.c.created < now_us - KEEP_US))
    try:
        with conn.begin_nested():
            conn.execute(
                insert(t).values(
                    client_id=client_id,
                    key=key,
                    request_hash=fingerprint,
                    status=response.status,
                    body=response.body,
                    created=now_us,
                    headers=orjson.dumps(response.headers).decode(),
                )
            )
    except IntegrityError as exc:
        raise FhirError("conflict", "A request with this Idempotency-Key is being processed.") from exc


def sweep(conn: Connection, now_us: int) -> int:
    """Forget keys older than 24 h."""
    t = schema.idempotency
    return conn.execute(delete(t).where(t.c.created < now_us - KEEP_US)).rowcount
