"""Dashboard logins: argon2 hashes, roles per project, the `user create` command."""

from __future__ import annotations

import pytest

from app.db import connection, transaction
from app.services import users
from tests.helpers import make_project, routeledger


def test_a_login_is_stored_as_an_argon2_hash_and_checked(database_url):
    with transaction() as conn:
        user_id = users.create_user(conn, email=" Ada@Example.com ", password="s3cret-pass")
        stored = conn.exec_driver_sql(
            "select email, password_hash from users where id = %(id)s", {"id": user_id}
        ).one()
    assert stored.email == "ada@example.com"
    assert stored.password_hash.startswith("$argon2id$")
    assert "s3cret-pass" not in stored.password_hash
    with transaction() as conn:
        assert users.authenticate(conn, email="ADA@example.com", password="s3cret-pass") == user_id
        assert users.authenticate(conn, email="ada@example.com", password="wrong-pass") is None
        assert users.authenticate(conn, email="nobody@example.com", password="x") is None


def test_roles_are_per_project(database_url):
    first, second = make_project(), make_project()
    with transaction() as conn:
        user_id = users.create_user(conn, email="roles@example.com", password="password-1")
        users.grant(conn, user_id=user_id, project_id=first.id, role="viewer")
        users.grant(conn, user_id=user_id, project_id=second.id, role="admin")
        users.grant(conn, user_id=user_id, project_id=first.id, role="admin")
        with pytest.raises(users.InvalidUser):
            users.grant(conn, user_id=user_id, project_id=first.id, role="owner")
    with connection() as conn:
        found = {m.project_name: m.role for m in users.user_memberships(conn, user_id=user_id)}
    assert found == {first.name: "admin", second.name: "admin"}


def test_short_passwords_and_bad_emails_are_refused(database_url):
    with transaction() as conn:
        with pytest.raises(users.InvalidUser, match="password"):
            users.create_user(conn, email="short@example.com", password="short")
        with pytest.raises(users.InvalidUser, match="email"):
            users.create_user(conn, email="not-an-email", password="long-enough")


def test_user_create_command(database_url):
    project = make_project()
    created = routeledger(
        "user", "create", "cli@example.com", "--project", project.name, "--role", "viewer",
        env={"ROUTELEDGER_USER_PASSWORD": "from-the-env"},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert f"viewer of {project.name}" in created.stdout
    promoted = routeledger(
        "user", "create", "CLI@example.com", "--project", project.name, "--role", "admin"
    )
    assert promoted.returncode == 0, promoted.stderr
    with transaction() as conn:
        assert users.authenticate(conn, email="cli@example.com", password="from-the-env")
        user_id = users.user_id_by_email(conn, email="cli@example.com")
        assert [m.role for m in users.user_memberships(conn, user_id=user_id)] == ["admin"]
    missing = routeledger(
        "user", "create", "cli@example.com", "--project", "no-such", "--role", "admin"
    )
    assert missing.returncode == 1 and "no project named" in missing.stderr
