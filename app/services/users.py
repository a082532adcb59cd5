"""Dashboard logins: users with argon2 password hashes, and their role in each project."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.models import memberships, projects, users
from app.periods import utc_now
from app.services import sessions
from app.vocabulary import DASHBOARD_ROLES

MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()


# Verified against when the email is unknown, so a wrong email costs as long as a wrong
# password and response times do not tell which addresses have a login.
@cache
def _dummy_hash() -> str:
    return _hasher.hash("routeledger-no-such-user")


class InvalidUser(ValueError):
    pass


@dataclass(frozen=True)
class Membership:
    project_id: int
    project_name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or not 3 <= len(email) <= 200:
        raise InvalidUser(f"email: {email!r} is not an email address")
    return email


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidUser(f"password: at least {MIN_PASSWORD_LENGTH} characters")


def user_id_by_email(conn: Connection, *, email: str) -> int | None:
    return conn.execute(select(users.c.id).where(users.c.email == normalize_email(email))).scalar()


def create_user(conn: Connection, *, email: str, password: str) -> int:
    _check_password(password)
    return conn.execute(
        pg_insert(users)
        .values(email=normalize_email(email), password_hash=_hasher.hash(password))
        .returning(users.c.id)
    ).scalar_one()


def set_password(conn: Connection, *, user_id: int, password: str) -> None:
    """A new password; every session of the login ends (whoever knew the old one is out)."""
    _check_password(password)
    conn.execute(
        update(users).where(users.c.id == user_id).values(password_hash=_hasher.hash(password))
    )
    sessions.end_sessions_of(conn, user_id=user_id)


def grant(conn: Connection, *, user_id: int, project_id: int, role: str) -> None:
    """Gives the user this role in the project (replacing the role it had there)."""
    if role not in DASHBOARD_ROLES:
        raise InvalidUser(f"role: {role!r} is not one of {', '.join(DASHBOARD_ROLES)}")
    statement = pg_insert(memberships).values(user_id=user_id, project_id=project_id, role=role)
    conn.execute(
        statement.on_conflict_do_update(
            constraint="pk_memberships", set_={"role": statement.excluded.role}
        )
    )


def authenticate(conn: Connection, *, email: str, password: str) -> int | None:
    """The user's id when the password is right, else None (unknown email included)."""
    try:
        email = normalize_email(email)
    except InvalidUser:
        email = ""
    row = conn.execute(
        select(users.c.id, users.c.password_hash).where(users.c.email == email)
    ).first()
    try:
        _hasher.verify(row.password_hash if row else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    changes = {"last_login_at": utc_now()}
    if _hasher.check_needs_rehash(row.password_hash):
        changes["password_hash"] = _hasher.hash(password)
    conn.execute(update(users).where(users.c.id == row.id).values(**changes))
    return row.id


def user_memberships(conn: Connection, *, user_id: int) -> list[Membership]:
    """The projects this user may open, by project name."""
    rows = conn.execute(
        select(memberships.c.project_id, projects.c.name, memberships.c.role)
        .join(projects, projects.c.id == memberships.c.project_id)
        .where(memberships.c.user_id == user_id)
        .order_by(projects.c.name)
    )
    return [Membership(row.project_id, row.name, row.role) for row in rows]


def list_logins(conn: Connection) -> dict[str, list[Membership]]:
    """Every login's email and its memberships, by email."""
    rows = conn.execute(
        select(users.c.email, memberships.c.project_id, projects.c.name, memberships.c.role)
        .select_from(
            users.outerjoin(memberships, memberships.c.user_id == users.c.id).outerjoin(
                projects, projects.c.id == memberships.c.project_id
            )
        )
        .order_by(users.c.email, projects.c.name)
    )
    found: dict[str, list[Membership]] = {}
    for row in rows:
        held = found.setdefault(row.email, [])
        if row.project_id is not None:
            held.append(Membership(row.project_id, row.name, row.role))
    return found
