"""Projects, their tiers and their API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, update

from app.db import driver_cursor
from app.models import api_keys, projects, tiers
from app.periods import utc_now
from app.services.request_facts import BaselineModel
from app.vocabulary import DEFAULT_TIERS, KEY_SCOPES

KEY_PREFIX = "rl_"


class ProjectExists(ValueError):
    pass


class InvalidProject(ValueError):
    pass


class ProjectNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Caller:
    """Who is calling: resolved from an API key, scoped to one project."""

    project_id: int
    key_id: int
    scopes: frozenset[str]
    rate_limit_per_second: float | None


@dataclass(frozen=True)
class NewKey:
    id: int
    name: str
    scopes: tuple[str, ...]
    secret: str

    @property
    def display_prefix(self) -> str:
        return self.secret[: len(KEY_PREFIX) + 6]


def hash_key(secret: str) -> bytes:
    # Keys are 256-bit random strings, so a fast hash is safe here (argon2 is for passwords).
    return hashlib.sha256(secret.encode()).digest()


def create_project(
    conn: Connection,
    *,
    name: str,
    baseline_model: str | None = None,
    baseline_provider: str | None = None,
) -> tuple[int, list[NewKey]]:
    """A project with the default tiers and one key per scope."""
    if not name or len(name) > 200 or any(not ch.isprintable() for ch in name):
        # The name reaches email subjects: printable characters only.
        raise InvalidProject(f"name: {name!r} must be 1 to 200 printable characters")
    if conn.execute(select(projects.c.id).where(projects.c.name == name)).first():
        raise ProjectExists(f"a project named {name!r} already exists")
    project_id = conn.execute(
        insert(projects)
        .values(name=name, baseline_model=baseline_model, baseline_provider=baseline_provider)
        .returning(projects.c.id)
    ).scalar_one()
    conn.execute(
        insert(tiers),
        [{"project_id": project_id, "name": t, "rank": r} for t, r in DEFAULT_TIERS.items()],
    )
    keys = [
        create_key(conn, project_id=project_id, name=f"{scope} key", scopes=[scope])
        for scope in KEY_SCOPES
    ]
    return project_id, keys


def project_id_by_name(conn: Connection, *, name: str) -> int:
    found = conn.execute(select(projects.c.id).where(projects.c.name == name)).scalar()
    if found is None:
        raise ProjectNotFound(f"no project named {name!r}")
    return found


def project_name(conn: Connection, *, project_id: int) -> str:
    return conn.execute(select(projects.c.name).where(projects.c.id == project_id)).scalar_one()


def create_key(
    conn: Connection,
    *,
    project_id: int,
    name: str,
    scopes: list[str],
    rate_limit_per_second: float | None = None,
) -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = conn.execute(
        insert(api_keys)
        .values(
            project_id=project_id,
            name=name,
            display_prefix=secret[: len(KEY_PREFIX) + 6],
            key_hash=hash_key(secret),
            scopes=sorted(set(scopes)),
            rate_limit_per_second=rate_limit_per_second,
        )
        .returning(api_keys.c.id)
    ).scalar_one()
    return NewKey(id=key_id, name=name, scopes=tuple(sorted(set(scopes))), secret=secret)


def list_keys(conn: Connection, *, project_id: int) -> list[dict]:
    rows = conn.execute(
        select(
            api_keys.c.id,
            api_keys.c.name,
            api_keys.c.display_prefix,
            api_keys.c.scopes,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
        )
        .where(api_keys.c.project_id == project_id)
        .order_by(api_keys.c.id)
    )
    return [dict(row._mapping) for row in rows]


def revoke_key(conn: Connection, *, project_id: int, key_id: int) -> bool:
    """Revokes a key of this project; False when the project has no such live key."""
    result = conn.execute(
        update(api_keys)
        .where(
            api_keys.c.project_id == project_id,
            api_keys.c.id == key_id,
            api_keys.c.revoked_at.is_(None),
        )
        .values(revoked_at=utc_now())
    )
    return result.rowcount == 1


def authenticate(conn: Connection, *, secret: str) -> Caller | None:
    """The caller a key belongs to, or None for an unknown or revoked key."""
    # On every call: psycopg's cursor (app.db.driver_cursor).
    with driver_cursor(conn) as cursor:
        cursor.execute(
            "select id, project_id, scopes, rate_limit_per_second from api_keys"
            " where key_hash = %s and revoked_at is null",
            (hash_key(secret),),
        )
        row = cursor.fetchone()
    if row is None:
        return None
    key_id, project_id, scopes, rate_limit = row
    return Caller(
        project_id=project_id,
        key_id=key_id,
        scopes=frozenset(scopes),
        rate_limit_per_second=rate_limit,
    )


def project_tiers(conn: Connection, *, project_id: int) -> dict[str, int]:
    rows = conn.execute(select(tiers.c.name, tiers.c.rank).where(tiers.c.project_id == project_id))
    return {row.name: row.rank for row in rows}


@dataclass(frozen=True)
class ProjectContext:
    """What deriving a project's requests needs: its tiers' ranks and its baseline model."""

    project_id: int
    tier_ranks: dict[str, int]
    baseline: BaselineModel | None


def load_project_context(conn: Connection, *, project_id: int) -> ProjectContext:
    # One statement, through psycopg's cursor: read on every ingest call and OTLP export.
    with driver_cursor(conn) as cursor:
        cursor.execute(
            "select p.baseline_model, p.baseline_provider,"
            " (select coalesce(json_object_agg(t.name, t.rank), '{}') from tiers t"
            "  where t.project_id = %s)"
            " from projects p where p.id = %s",
            (project_id, project_id),
        )
        row = cursor.fetchone()
    if row is None:
        raise LookupError(f"no project with id {project_id}")
    baseline_model, baseline_provider, tier_ranks = row
    return ProjectContext(
        project_id=project_id,
        tier_ranks=tier_ranks,
        baseline=BaselineModel(baseline_model, baseline_provider) if baseline_model else None,
    )
