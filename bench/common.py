"""What the benchmarks share: a scratch database, a project, a real API process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent


@contextmanager
def scratch_database(prefix: str):
    """A new, migrated database for one benchmark run, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    base, _, query = ADMIN_URL.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    os.environ["DATABASE_URL"] = url
    from app.cli import _migrate
    from app.db import get_engine
    from app.settings import get_settings

    get_settings.cache_clear()
    _migrate()
    try:
        yield url
    finally:
        get_engine().dispose()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def create_project(name: str, baseline_model: str = "gpt-4o") -> tuple[int, str]:
    """A project and an ingest key without a rate limit worth the name."""
    from app.db import transaction
    from app.services.projects import create_key, create_project

    with transaction() as conn:
        project_id, _ = create_project(conn, name=name, baseline_model=baseline_model)
        key = create_key(
            conn, project_id=project_id, name="bench", scopes=["ingest", "read"],
            rate_limit_per_second=1e9,
        )  # fmt: skip
    return project_id, key.secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def api_server(database_url: str, *, workers: int = 1):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--port", str(port), "--workers", str(workers)],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": database_url},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(30)
