"""Demo clients, one per role, whose secrets `make run` prints (kept in a file beside the demo database)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from terminhub.access.clients import add_client, get_client
from terminhub.store.database import Database

DEMO_BSNR = "721234500"  # not used by generated practices; see ensure_demo_clients


def ensure_demo_clients(db: Database, path: Path, practice_bsnr: str | None) -> dict[str, dict]:
    """Reuse the stored demo clients if they still exist, else register new ones and store them."""
    if path.exists():
        stored = json.loads(path.read_text())
        with db.transaction() as conn:
            if all(get_client(conn, c["client_id"]) is not None for c in stored.values()):
                return stored
    bsnr = practice_bsnr or DEMO_BSNR
    created: dict[str, dict] = {}
    now = time.time_ns() // 1000
    with db.transaction(write=True) as conn:
        for role in ("admin", "practice", "referrer", "third-party", "scheduling-client"):
            bsnrs = (bsnr,) if role in ("practice", "referrer") else ()
            client, secret = add_client(conn, name=f"demo {role}", role=role, bsnrs=bsnrs, now_us=now)
            created[role] = {
                "client_id": client.client_id,
                "client_secret": secret,
                "role": role,
                "bsnr": list(bsnrs),
            }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(created, indent=2))
    path.chmod(0o600)
    return created
