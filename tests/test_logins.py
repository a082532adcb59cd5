"""Dashboard sessions and the login throttle as services, on fixed instants (issue 16 C):
sessions end on sign-out, on a password change and after their lifetime; failed sign-ins
are counted per account and per address, and past the limits refused unchecked."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, or_

from app.db import transaction
from app.models import login_failures
from app.services import logins, sessions, users
from app.services.logins import LoginLimits, SignIn
from tests.helpers import LOGIN_PASSWORD, make_login

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
LIMITS = LoginLimits()
MINUTE = timedelta(minutes=1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def addresses():
    """Documentation addresses (RFC 5737) for a test, their failures forgotten after it."""
    made = []

    def make() -> str:
        made.append(f"198.51.100.{len(made) + 1}")
        return made[-1]

    yield make
    with transaction() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.address.in_(made)))


@pytest.fixture
def email(database_url):
    address = f"{unique('throttled')}@example.com"
    make_login(address)
    yield address
    with transaction() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.account == address))


def attempt(email: str, password: str, address: str, at: datetime) -> SignIn:
    with transaction() as conn:
        return logins.sign_in(conn, email=email, password=password, address=address, now=at)


def test_an_account_is_refused_unchecked_once_it_failed_five_times(email, addresses):
    for minute in range(LIMITS.per_account):  # from several addresses: the account counts
        assert attempt(email, "wrong", addresses(), T0 + minute * MINUTE) == SignIn()
    refused = attempt(email, LOGIN_PASSWORD, addresses(), T0 + 5 * MINUTE)
    assert refused == SignIn(retry_after=10 * MINUTE)  # until the first failure is 15 min old
    still = attempt(email, LOGIN_PASSWORD, addresses(), T0 + 15 * MINUTE - timedelta(seconds=1))
    assert still == SignIn(retry_after=timedelta(seconds=1))
    assert attempt(email, LOGIN_PASSWORD, addresses(), T0 + 15 * MINUTE).token


def test_an_unknown_email_is_counted_and_refused_like_a_known_one(email, addresses):
    unknown = f"{unique('nobody')}@example.com"
    address = addresses()
    for account in (email, unknown):
        answers = [attempt(account, "wrong", address, T0) for _ in range(LIMITS.per_account)]
        assert answers == [SignIn()] * LIMITS.per_account
        assert attempt(account, "wrong", address, T0) == SignIn(retry_after=LIMITS.window)


def test_an_address_is_refused_once_it_failed_twenty_times_on_any_accounts(email, addresses):
    address, elsewhere = addresses(), addresses()
    for _ in range(LIMITS.per_address):
        assert attempt(f"{unique('guess')}@example.com", "wrong", address, T0) == SignIn()
    assert attempt(email, LOGIN_PASSWORD, address, T0 + MINUTE) == SignIn(retry_after=14 * MINUTE)
    assert attempt(email, LOGIN_PASSWORD, elsewhere, T0 + MINUTE).token


def test_a_success_forgets_only_its_own_failures_from_its_address(email, addresses):
    """An attacker's own login must not wipe the count of their guesses at other accounts."""
    address = addresses()
    for _ in range(2):
        assert attempt(email, "typo", address, T0) == SignIn()
    for _ in range(LIMITS.per_address - 3):
        assert attempt(f"{unique('victim')}@example.com", "guess", address, T0) == SignIn()
    assert attempt(email, LOGIN_PASSWORD, address, T0).token  # its own 2 failures forgotten
    for _ in range(3):  # 17 + 3: the address's limit
        assert attempt(f"{unique('victim')}@example.com", "guess", address, T0) == SignIn()
    assert attempt(email, LOGIN_PASSWORD, address, T0).retry_after == LIMITS.window


def test_an_ipv6_client_counts_by_its_64_and_mapped_ipv4_as_ipv4():
    assert logins.address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert logins.address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert logins.address_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert logins.address_key("198.51.100.7") == "198.51.100.7"
    assert logins.address_key(None) == "unknown"


def test_a_session_ends_on_sign_out_on_a_new_password_and_after_seven_days(email):
    with transaction() as conn:
        user_id = users.user_id_by_email(conn, email=email)
        kept, signed_out, other = (
            sessions.start_session(conn, user_id=user_id, now=T0) for _ in range(3)
        )
        live = sessions.session_user(conn, token=kept, now=T0 + timedelta(days=6, hours=23))
        assert live == sessions.SessionUser(user_id, email)
        assert sessions.session_user(conn, token=kept, now=T0 + timedelta(days=7)) is None
        sessions.end_session(conn, token=signed_out)
        assert sessions.session_user(conn, token=signed_out, now=T0) is None
        assert sessions.session_user(conn, token=other, now=T0) is not None
        users.set_password(conn, user_id=user_id, password="a brand new password")
        assert sessions.session_user(conn, token=other, now=T0) is None
        assert sessions.session_user(conn, token="made-up", now=T0) is None


def test_failures_older_than_the_window_are_forgotten(email, addresses):
    address = addresses()
    attempt(email, "wrong", address, T0)
    attempt(email, LOGIN_PASSWORD, addresses(), T0 + LIMITS.window)
    with transaction() as conn:
        left = conn.execute(
            login_failures.select().where(
                or_(login_failures.c.account == email, login_failures.c.address == address)
            )
        ).all()
    assert left == []
