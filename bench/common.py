"""What the benchmarks share: a scratch database, a project, a real API process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager, nullcontext, suppress
from datetime import datetime
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
    try:
        with existing_database(name) as url:
            yield url
    finally:
        if keep:
            print(f"kept database {name}", file=sys.stderr)
        else:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'drop database if exists "{name}" with (force)')


@contextmanager
def existing_database(name: str):
    """A database, migrated to the current code and left in place (one kept by an earlier
    run, `scratch_database(keep=True)`, measures again without writing the rows again)."""
    from app.db import get_engine
    from app.migrate import migrate
    from app.settings import get_settings

    url = database_url(name)
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    migrate()
    try:
        yield url
    finally:
        get_engine().dispose()


def kept_project(name: str) -> tuple[int, datetime]:
    """The project of this name in a kept database, and the time of its last request."""
    from sqlalchemy import text

    from app.db import get_engine

    with get_engine().connect() as conn:
        project_id = conn.execute(
            text("select id from projects where name = :name"), {"name": name}
        ).scalar_one()
        last = conn.execute(
            text("select max(ts) from requests where project_id = :id"), {"id": project_id}
        ).scalar_one()
    return project_id, last


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
def service(*args: str, env: dict[str, str], log: Path | None = None):
    """`routeledger ARGS` in a process group of its own, its output appended to `log` (or
    shown, without one); the whole group is stopped when the block ends, however it ends."""
    with log.open("ab") if log else nullcontext() as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(30)
        # Whatever of the group outlived the grace (a pool child, say).
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the API at `url` answers /readyz with 200; fails when it exits or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}")
        try:
            ready = httpx.get(f"{url}/readyz", timeout=1)
            if ready.status_code == 200:
                return
            problem = f"/readyz answers {ready.status_code}: {ready.text}"
        except httpx.TransportError as error:
            problem = f"/readyz: {error}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not get ready in {timeout:.0f} s ({problem})")
        time.sleep(0.2)


@contextmanager
def api_server(database_url: str, *, workers: int = 1):
    """A real `routeledger api` on a free port, ready: its URL and process id."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_URL": database_url}
    with service("api", "--port", str(port), "--workers", str(workers), env=env) as process:
        wait_ready(url, process)
        yield url, process.pid


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user and system) the processes have used so far; one gone is left out."""
    ticks = 0
    for pid in pids:
        with suppress(OSError):
            # The fields after the command name, which is in parentheses and may hold spaces.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def process_group(pgid: int) -> list[int]:
    """The processes of a group (`service` starts each in its own: the API and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if int(os.getpgid(int(entry.name))) == pgid:
                    pids.append(int(entry.name))
    return pids


def database_backends(url: str) -> list[int]:
    """The server processes of the connections open to the database of `url`."""
    name = url.rsplit("/", 1)[1].partition("?")[0]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute("select pid from pg_stat_activity where datname = %s", (name,))
        return [row[0] for row in rows]
