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


def database_url(name: str) -> str:
    base, _, query = ADMIN_URL.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")


@contextmanager
def scratch_database(prefix: str, *, keep: bool = False):
    """A new, migrated database for one benchmark run, dropped afterwards unless `keep`
    (then its name is printed, for `existing_database`)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    url = database_url(name)
    from app.cli import _migrate

    _use_database(url)
    _migrate()
    try:
        yield url
    finally:
        from app.db import get_engine

        get_engine().dispose()
        if keep:
            print(f"kept database {name}", file=sys.stderr)
        else:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'drop database if exists "{name}" with (force)')


@contextmanager
def existing_database(name: str):
    """A database kept by an earlier run (`scratch_database(keep=True)`), migrated to the
    current code and left in place: to measure again without writing the rows again."""
    from app.cli import _migrate
    from app.db import get_engine

    url = database_url(name)
    _use_database(url)
    _migrate()
    try:
        yield url
    finally:
        get_engine().dispose()


def _use_database(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    from app.settings import get_settings

    get_settings.cache_clear()


def create_project(name: str, baseline_model: str = "gpt-4o") -> tuple[int, str]:
    """A project and an ingest key without a rate limit worth the name."""
    from app.db import transaction
    from app.services.projects import create_project

    with transaction() as conn:
        project_id, _ = create_project(conn, name=name, baseline_model=baseline_model)
    return project_id, create_key(project_id)


def create_key(project_id: int) -> str:
    """A new ingest and read key of the project, without a rate limit worth the name."""
    from app.db import transaction
    from app.services import projects

    with transaction() as conn:
        key = projects.create_key(
            conn, project_id=project_id, name="bench", scopes=["ingest", "read"],
            rate_limit_per_second=1e9,
        )  # fmt: skip
    return key.secret


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
                ready = httpx.get(f"{url}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
                problem = f"/readyz answers {ready.status_code}: {ready.text}"
            except httpx.TransportError as error:
                problem = f"/readyz: {error}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not get ready in 60 s ({problem})")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(30)
