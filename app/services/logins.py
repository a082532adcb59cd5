"""Signing in to the dashboard, throttled per account and per address.

Every failed sign-in is a row of login_failures, so every dashboard process counts the same
failures. Within a window an account may fail `per_account` times and an address
`per_address` times; past either, a sign-in is refused without checking its password, right
or wrong (a locked account must not go on judging guesses), until enough of the counted
failures have left the window. The account is the email as typed, whether or not a login
has it, so a refusal tells nothing about which addresses have a login; unknown emails still
cost an argon2 verification (app.services.users.authenticate).

A success forgets only that account's failures from that address: a working login never
clears what the same address failed on other accounts, so an attacker's own login does not
reset the count of their guesses at others. An IPv6 address counts by its /64, which one
client usually holds whole.

Two advisory locks, the account's then the address's, serialise the sign-ins of one account
and of one address across every dashboard process: parallel guesses cannot all pass the count
before the first of them is recorded.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Column, Connection, delete, insert, select, text

from app.models import login_failures
from app.services import sessions, users

MAX_ACCOUNT_LENGTH = 200
MAX_ADDRESS_LENGTH = 100


@dataclass(frozen=True)
class LoginLimits:
    per_account: int = 5
    per_address: int = 20
    window: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class SignIn:
    """A new session's token when the password was right; `retry_after` when the sign-in
    was refused unchecked, with how long to wait."""

    token: str | None = None
    retry_after: timedelta | None = None


def sign_in(
    conn: Connection,
    *,
    email: str,
    password: str,
    address: str | None,
    now: datetime,
    limits: LoginLimits = LoginLimits(),
) -> SignIn:
    account = email.strip().lower()[:MAX_ACCOUNT_LENGTH]
    address = address_key(address)
    for key in (f"account.{account}", f"address.{address}"):
        conn.execute(
            text("select pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"routeledger.login.{key}"},
        )
    _forget_failures_before(conn, now - limits.window)
    waits = [
        _wait(conn, login_failures.c.account, account, limits.per_account, now, limits.window),
        _wait(conn, login_failures.c.address, address, limits.per_address, now, limits.window),
    ]
    if any(waits):
        return SignIn(retry_after=max(wait for wait in waits if wait))
    user_id = users.authenticate(conn, email=email, password=password)
    if user_id is None:
        conn.execute(insert(login_failures).values(account=account, address=address, failed_at=now))
        return SignIn()
    conn.execute(
        delete(login_failures).where(
            login_failures.c.account == account, login_failures.c.address == address
        )
    )
    return SignIn(token=sessions.start_session(conn, user_id=user_id, now=now))


def _forget_failures_before(conn: Connection, cutoff: datetime) -> None:
    """Deletes failures that no longer count; rows another sign-in is deleting are left to
    it (no sign-in waits on another's clean-up)."""
    stale = (
        select(login_failures.c.id)
        .where(login_failures.c.failed_at <= cutoff)
        .with_for_update(skip_locked=True)
    )
    conn.execute(delete(login_failures).where(login_failures.c.id.in_(stale.scalar_subquery())))


def _wait(
    conn: Connection, column: Column, value: str, limit: int, now: datetime, window: timedelta
) -> timedelta | None:
    """How long until fewer than `limit` failures of this account or address are left in the
    window (None: fewer already), in whole seconds."""
    oldest_counted = conn.execute(
        select(login_failures.c.failed_at)
        .where(column == value, login_failures.c.failed_at > now - window)
        .order_by(login_failures.c.failed_at.desc())
        .offset(limit - 1)
        .limit(1)
    ).scalar()
    if oldest_counted is None:
        return None
    return timedelta(seconds=max(1, math.ceil((oldest_counted + window - now).total_seconds())))


def address_key(address: str | None) -> str:
    """What a client's address counts as: the address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return (address or "unknown")[:MAX_ADDRESS_LENGTH]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
