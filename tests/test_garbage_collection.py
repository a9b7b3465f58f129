"""A server worker's garbage collector: what the worker holds once started is frozen, young objects are
collected in large rounds, and cyclic garbage is still freed. Checked in a worker's own process, as
`terminhub serve` starts it (the test process keeps Python's defaults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from terminhub.garbage_collection import YOUNG_OBJECTS

WORKER = """
import gc, json, weakref
from terminhub.app import app_from_environment

app = app_from_environment()
frozen, threshold = gc.get_freeze_count(), gc.get_threshold()

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle: reference counting alone never frees it
gone = weakref.ref(a)
del a, b
kept = [[] for _ in range(YOUNG + 1000)]  # more new objects kept than a round lets gather
print(json.dumps({"frozen": frozen, "threshold": threshold, "enabled": gc.isenabled(),
                  "cycle_freed": gone() is None}))
"""


def _worker(tmp_path: Path) -> dict:
    env = os.environ | {"TERMINHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'gc.db'}"}
    cli = [sys.executable, "-m", "terminhub"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
    script = WORKER.replace("YOUNG", str(YOUNG_OBJECTS))
    done = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_started_worker_freezes_what_it_holds_and_collects_in_large_rounds(tmp_path: Path) -> None:
    seen = _worker(tmp_path)
    assert seen["frozen"] > 10_000  # imports, models, the app: never examined again
    assert seen["threshold"][0] == YOUNG_OBJECTS
    assert seen["enabled"]
    assert seen["cycle_freed"]
