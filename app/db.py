"""Engine and connections. One SQLAlchemy engine per process, psycopg 3 underneath."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from psycopg.errors import UndefinedColumn, UndefinedTable, UniqueViolation
from sqlalchemy import Connection, Engine, create_engine, text

from app.embedded import running_url
from app.settings import get_settings


class DatabaseNotConfigured(RuntimeError):
    pass


def sqlalchemy_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise DatabaseNotConfigured(f"DATABASE_URL must be a PostgreSQL URL, got {url!r}")


@lru_cache
def _engine_for(url: str, pid: int) -> Engine:
    # Keyed by pid: a forked process must not reuse the parent's sockets.
    settings = get_settings()
    return create_engine(
        sqlalchemy_url(url),
        pool_size=settings.routeledger_db_pool_size,
        max_overflow=settings.routeledger_db_pool_size,
        pool_pre_ping=True,
    )


def database_url() -> str:
    settings = get_settings()
    url = settings.database_url or running_url(settings.embedded_pgdata_dir)
    if not url:
        raise DatabaseNotConfigured(
            "DATABASE_URL is not set and no embedded database is running: "
            "set DATABASE_URL, or start one with `routeledger up`"
        )
    return url


def get_engine() -> Engine:
    return _engine_for(database_url(), os.getpid())


@contextmanager
def transaction() -> Iterator[Connection]:
    with get_engine().begin() as conn:
        yield conn


@contextmanager
def connection() -> Iterator[Connection]:
    with get_engine().connect() as conn:
        yield conn


@contextmanager
def snapshot(*, export: bool = False) -> Iterator[Connection]:
    """A read-only transaction whose statements all see the database as it was at its first:
    figures read in several statements (rollups, then revenue records, then raw rows, period
    after period) never mix in a write that committed between two of them (REPEATABLE READ;
    under READ COMMITTED, each statement sees what committed before it). Its statements are
    limited to ROUTELEDGER_STATEMENT_TIMEOUT_SECONDS; an `export`'s to
    ROUTELEDGER_EXPORT_TIMEOUT_SECONDS, and so are its waits while the client reads."""
    settings = get_settings()
    with (
        get_engine()
        .connect()
        .execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True) as conn,
        conn.begin(),
    ):
        if export:
            limit_statements(conn, seconds=settings.routeledger_export_timeout_seconds, idle=True)
        else:
            limit_statements(conn, seconds=settings.routeledger_statement_timeout_seconds)
        yield conn


def schema_behind(error: Exception) -> bool:
    """Whether a database error says the schema lacks what this code needs (the database
    was not migrated after the code was upgraded)."""
    return isinstance(getattr(error, "orig", error), UndefinedTable | UndefinedColumn)


def driver_cursor(conn: Connection):
    """A psycopg cursor in `conn`'s transaction, for the hot paths: COPY, arrays in binary,
    and statements run on every call where SQLAlchemy's building of them costs more than
    running them. Its errors are psycopg's own (app.api.errors answers both alike)."""
    return conn.connection.driver_connection.cursor()


def insert_new(cursor, statement: str, params, *, returning: str, savepoint: str, **options):
    """Runs `statement`, an INSERT of rows that are nearly always new, with the driver's
    `cursor`: first as it is, since a plain insert costs PostgreSQL a sixth to two fifths less
    than one that skips conflicts. When a row is taken, a savepoint undoes the insert and the
    rows go in again skipping the taken ones: returns the `returning` column of the rows
    inserted then, or None when every row was new. The savepoint stays until the transaction
    ends (releasing it would cost a round trip)."""
    cursor.execute(f"savepoint {savepoint}")
    try:
        cursor.execute(statement, params, **options)
        return None
    except UniqueViolation:
        cursor.execute(f"rollback to savepoint {savepoint}")
        cursor.execute(
            f"{statement} on conflict do nothing returning {returning}", params, **options
        )
        return {row[0] for row in cursor.fetchall()}


def limit_statements(conn: Connection, *, seconds: float, idle: bool = False) -> None:
    """Cancels any statement of the connection's current transaction that runs longer (a
    read that would otherwise keep a core busy for as long as it likes). With `idle`, also
    ends the session when the transaction waits longer than that between two statements:
    for exports, whose transaction waits while the client reads (one whose client stopped
    reading would hold its snapshot, and hold back vacuum, for good)."""
    ms = str(int(seconds * 1000))
    conn.execute(
        text(
            "select set_config('statement_timeout', :ms, true), "
            "set_config('idle_in_transaction_session_timeout', :idle, true)"
        ),
        {"ms": ms, "idle": ms if idle else "0"},
    )


@contextmanager
def planner_settings(conn: Connection, **settings: str) -> Iterator[None]:
    """PostgreSQL planner settings (`enable_sort="off"`, `work_mem="64MB"`, ...) for the
    statements run inside, in the current transaction, then back to what they were. For
    queries over rows written moments ago, whose statistics would make the planner sort or
    loop over many rows it takes for few."""
    set_config = text("select set_config(:name, :value, true)")
    before = {
        name: conn.execute(text("select current_setting(:name)"), {"name": name}).scalar_one()
        for name in settings
    }
    for name, value in settings.items():
        conn.execute(set_config, {"name": name, "value": value})
    try:
        yield
    finally:
        for name, value in before.items():
            conn.execute(set_config, {"name": name, "value": value})
