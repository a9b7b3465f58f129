"""Shared fixtures: every black-box test runs against a real server on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.databases import BACKENDS, fresh_database
from tests.support.server import Server, start_server


@pytest.fixture(scope="session", params=[pytest.param(b, marks=getattr(pytest.mark, b)) for b in BACKENDS])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per database backend for the whole session (tests create their own data)."""
    directory = tmp_path_factory.mktemp(f"server-{request.param}")
    with fresh_database(request.param, directory) as url:
        running = start_server(url, request.param, log_dir=directory)
        try:
            yield running
        finally:
            running.stop()
