"""Dashboard sessions, kept in PostgreSQL so that every dashboard process agrees on them.

A session is a random token in the signed session cookie and the token's SHA-256 in
dashboard_sessions (a copy of the database gives no usable session). Signing out deletes the
row, a password change deletes every row of the login: a cookie copied before is refused
from then on. A session also ends SESSION_LIFETIME after it began, whatever happens.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select

from app.models import dashboard_sessions, users

SESSION_LIFETIME = timedelta(days=7)


@dataclass(frozen=True)
class SessionUser:
    user_id: int
    email: str


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def start_session(conn: Connection, *, user_id: int, now: datetime) -> str:
    """A new session of this login; its token, for the cookie. Ended sessions of anyone are
    forgotten on the way (so the table holds only live ones)."""
    expired = (
        select(dashboard_sessions.c.token_hash)
        .where(dashboard_sessions.c.expires_at <= now)
        .with_for_update(skip_locked=True)  # another sign-in deleting them: left to it
    )
    conn.execute(
        delete(dashboard_sessions).where(
            dashboard_sessions.c.token_hash.in_(expired.scalar_subquery())
        )
    )
    token = secrets.token_urlsafe(32)
    conn.execute(
        insert(dashboard_sessions).values(
            token_hash=_hash(token),
            user_id=user_id,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    return token


def session_user(conn: Connection, *, token: str, now: datetime) -> SessionUser | None:
    """The login of a live session; None when the token is unknown, ended or expired."""
    row = conn.execute(
        select(users.c.id, users.c.email)
        .join(dashboard_sessions, dashboard_sessions.c.user_id == users.c.id)
        .where(dashboard_sessions.c.token_hash == _hash(token))
        .where(dashboard_sessions.c.expires_at > now)
    ).first()
    return SessionUser(row.id, row.email) if row else None


def end_session(conn: Connection, *, token: str) -> None:
    conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.token_hash == _hash(token)))


def end_sessions_of(conn: Connection, *, user_id: int) -> int:
    """Ends every session of a login (a password change, a lost laptop); how many ended."""
    return conn.execute(
        delete(dashboard_sessions).where(dashboard_sessions.c.user_id == user_id)
    ).rowcount
