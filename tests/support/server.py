"""A real `terminhub serve` process on a free port, with one registered client per role."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import func, select

from terminhub.access.clients import add_client
from terminhub.store import schema
from terminhub.store.database import Database
from terminhub.store.migrate import upgrade

ROLES = ("admin", "practice", "referrer", "third-party", "scheduling-client")
PRACTICE_BSNR = "721234500"
OTHER_BSNR = "021234500"
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Credentials:
    client_id: str
    secret: str
    role: str


@dataclass
class Server:
    """A running server and what tests need to talk to it."""

    database_url: str
    backend: str
    base_url: str
    credentials: dict[str, Credentials] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def fhir(self) -> str:
        return self.base_url + "/fhir"

    def token(self, role: str) -> str:
        if role not in self._tokens:
            cred = self.credentials[role]
            reply = httpx.post(
                self.base_url + "/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": cred.client_id,
                    "client_secret": cred.secret,
                },
            )
            reply.raise_for_status()
            self._tokens[role] = reply.json()["access_token"]
        return self._tokens[role]

    def client(self, role: str | None = "admin", fmt: str = FHIR_JSON) -> httpx.Client:
        """An HTTP client for one role (None: no token), speaking JSON or XML by default."""
        headers = {"Accept": fmt}
        if role:
            headers["Authorization"] = f"Bearer {self.token(role)}"
        return httpx.Client(base_url=self.fhir, headers=headers, timeout=60)

    def add_client(self, role: str, name: str, bsnrs: tuple[str, ...] = ()) -> Credentials:
        db = Database(self.database_url)
        try:
            with db.transaction(write=True) as conn:
                client, secret = add_client(
                    conn, name=name, role=role, bsnrs=bsnrs, now_us=time.time_ns() // 1000
                )
        finally:
            db.dispose()
        return Credentials(client.client_id, secret, role)

    def token_for(self, cred: Credentials) -> str:
        reply = httpx.post(
            self.base_url + "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": cred.client_id,
                "client_secret": cred.secret,
            },
        )
        reply.raise_for_status()
        return reply.json()["access_token"]

    def counts(self) -> dict[str, int]:
        """Row counts of what a request may change, AuditEvents aside: refusals must change nothing."""
        db = Database(self.database_url)
        r, v, s, o = schema.resources, schema.resource_versions, schema.search_index, schema.outbox
        try:
            with db.transaction() as conn:
                return {
                    "resources": conn.execute(
                        select(func.count()).select_from(r).where(r.c.type != "AuditEvent")
                    ).scalar_one(),
                    "versions": conn.execute(
                        select(func.count()).select_from(v).where(v.c.type != "AuditEvent")
                    ).scalar_one(),
                    "index": conn.execute(
                        select(func.count()).select_from(s).where(s.c.type != "AuditEvent")
                    ).scalar_one(),
                    "outbox": conn.execute(select(func.count()).select_from(o)).scalar_one(),
                    "max_version": conn.execute(
                        select(func.coalesce(func.sum(r.c.version_id), 0)).where(r.c.type != "AuditEvent")
                    ).scalar_one(),
                }
        finally:
            db.dispose()

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_server(
    database_url: str,
    backend: str,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
) -> Server:
    """Upgrade the database, register one client per role, start `terminhub serve` and wait for it."""
    db = Database(database_url)
    try:
        upgrade(db)
        now = time.time_ns() // 1000
        credentials = {}
        with db.transaction(write=True) as conn:
            for role in ROLES:
                bsnrs = (PRACTICE_BSNR,) if role in ("practice", "referrer") else ()
                client, secret = add_client(conn, name=f"test {role}", role=role, bsnrs=bsnrs, now_us=now)
                credentials[role] = Credentials(client.client_id, secret, role)
    finally:
        db.dispose()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    environment = (
        os.environ
        | {
            "TERMINHUB_DATABASE_URL": database_url,
            "TERMINHUB_BASE_URL": base_url,
            "TERMINHUB_TEST_CLOCK": "1",
        }
        | (env or {})
    )
    log = open((log_dir or Path("/tmp")) / f"terminhub-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "terminhub", "serve", "--port", str(port), "--workers", str(workers)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(database_url, backend, base_url, credentials, [proc])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"terminhub serve exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(base_url + "/fhir/metadata", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"terminhub serve did not come up; see {log.name}")
