"""Dashboard sessions and sign-ins against a real dashboard process (issue 16 B and C): a
session ends for good on sign-out and on a password change, a copied cookie with it; sign-ins
are throttled, parallel guesses included; the dashboard will not start on a key anyone knows."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from selenium.webdriver.common.by import By
from sqlalchemy import delete

from app.db import transaction
from app.models import login_failures
from app.services.logins import LoginLimits
from tests.helpers import (
    LOGIN_PASSWORD,
    dashboard_login,
    free_port,
    make_login,
    make_project,
    routeledger,
    sign_in,
    wait_for,
)

CSV = "/exports/requests.csv?start=2026-11-01&end=2026-11-02"


@pytest.fixture
def login(database_url):
    """A viewer's email, with the failed sign-ins of it forgotten after the test."""
    project = make_project()
    email = f"session-{uuid.uuid4().hex[:8]}@example.com"
    make_login(email, **{project.name: "viewer"})
    yield email
    with transaction() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.account == email))


def test_a_cookie_copied_before_sign_out_downloads_nothing_after(browser, live_dashboard, login):
    sign_in(browser, live_dashboard.url, (login, LOGIN_PASSWORD))
    copied = {"routeledger_session": browser.get_cookie("routeledger_session")["value"]}
    with httpx.Client(base_url=live_dashboard.url, cookies=copied) as thief:
        before = thief.get(CSV)
        assert before.status_code == 200 and before.text.startswith("request_id,")
        browser.find_element(By.ID, "sign-out").click()
        wait_for(browser, "#sign-in")
        after = thief.get(CSV)
    assert after.status_code == 302
    assert after.headers["Location"].startswith("/login?next=")


def test_signing_a_login_out_by_command_ends_every_session_of_it(live_dashboard, login):
    clients = [dashboard_login(live_dashboard.url, login, LOGIN_PASSWORD) for _ in range(3)]
    try:
        for client, answer in clients:
            assert answer.status_code == 302 and client.get(CSV).status_code == 200
        signed_out = routeledger("user", "sign-out", login)
        assert signed_out.returncode == 0, signed_out.stderr
        assert "3 session(s) ended" in signed_out.stdout
        assert [client.get(CSV).status_code for client, _ in clients] == [302] * 3
    finally:
        for client, _ in clients:
            client.close()


def test_a_new_password_ends_every_session_of_the_login(live_dashboard, login):
    client, answer = dashboard_login(live_dashboard.url, login, LOGIN_PASSWORD)
    try:
        assert answer.status_code == 302 and client.get(CSV).status_code == 200
        changed = routeledger(
            "user", "create", login, "--project", _project_of(login), "--role", "viewer",
            "--password", "another long password",
        )  # fmt: skip
        assert changed.returncode == 0, changed.stderr
        assert client.get(CSV).status_code == 302
    finally:
        client.close()


def _project_of(email: str) -> str:
    from app.db import connection
    from app.services import users

    with connection() as conn:
        user_id = users.user_id_by_email(conn, email=email)
        return users.user_memberships(conn, user_id=user_id)[0].project_name


def test_sign_ins_of_an_account_are_refused_after_five_failures(live_dashboard, login):
    """The right password too, and an unknown email the same way: the answer tells nothing."""
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    try:
        for email in (login, unknown):
            for number in range(LoginLimits().per_account):
                client, answer = dashboard_login(live_dashboard.url, email, "wrong password")
                client.close()
                assert answer.status_code == 401, (email, number)
                assert "Wrong email or password." in answer.text
            client, refused = dashboard_login(live_dashboard.url, email, LOGIN_PASSWORD)
            client.close()
            assert refused.status_code == 429, email
            assert "Too many failed sign-ins. Try again in " in refused.text
            assert 0 < int(refused.headers["Retry-After"]) <= 900
    finally:
        with transaction() as conn:
            conn.execute(delete(login_failures).where(login_failures.c.account == unknown))


def test_parallel_guesses_get_no_more_answers_than_the_limit(live_dashboard, login):
    """Every dashboard thread (and process) counts the same failures, one sign-in at a time
    per account: twelve guesses at once get five answers and seven refusals."""
    limit = LoginLimits().per_account

    def guess(number: int) -> int:
        client, answer = dashboard_login(live_dashboard.url, login, f"guess {number}")
        client.close()
        return answer.status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = sorted(pool.map(guess, range(12)))
    assert statuses == [401] * limit + [429] * (12 - limit)


@pytest.mark.parametrize(
    "secret_key",
    [None, "", "dev-insecure-secret-change-me", "change-me-to-a-long-random-string", "k" * 64],
)
def test_the_dashboard_will_not_start_on_a_key_anyone_knows(database_url, secret_key):
    variables = {} if secret_key is None else {"ROUTELEDGER_SECRET_KEY": secret_key}
    refused = routeledger(
        "dashboard", "--port", str(free_port()),
        env=variables, unset=() if variables else ("ROUTELEDGER_SECRET_KEY",), timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "Error: ROUTELEDGER_SECRET_KEY " in refused.stderr
    assert "Traceback" not in refused.stderr
