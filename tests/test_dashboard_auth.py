"""Dashboard sign-in, sessions, CSRF and project isolation, through Flask's test client."""

from __future__ import annotations

import functools
import re
import uuid
from urllib.parse import quote

import pytest

from tests.helpers import LOGIN_PASSWORD, TEST_SECRET_KEY, csrf_in, make_login, make_project


@pytest.fixture(scope="module")
def app(database_url):
    from dashboards.app import create_app

    return create_app()


@pytest.fixture
def client(app):
    return app.server.test_client()


def csrf_of(client) -> str:
    return csrf_in(client.get("/login").text)


def sign_in(client, email: str, next_path: str = "/"):
    return client.post(
        "/login",
        data={
            "email": email,
            "password": LOGIN_PASSWORD,
            "csrf_token": csrf_of(client),
            "next": next_path,
        },
    )


def test_everything_but_the_login_page_needs_a_login(client):
    for path in ("/", "/routing", "/exports/customers.csv", "/_dash-layout"):
        answer = client.get(path)
        assert answer.status_code == 302, path
        assert answer.headers["Location"].startswith("/login?next=")
    assert client.get("/login").status_code == 200


def test_sign_in_sets_a_hardened_session_cookie_and_goes_back(client, database_url):
    project = make_project()
    make_login("cookie@example.com", **{project.name: "viewer"})
    answer = sign_in(client, "Cookie@Example.com", next_path="/customers?start=2026-11-01")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/customers?start=2026-11-01"
    cookie = next(
        c for c in answer.headers.getlist("Set-Cookie") if c.startswith("routeledger_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    assert client.get("/").status_code == 200


def test_secure_cookies_when_served_over_https(database_url, monkeypatch):
    from app.settings import get_settings
    from dashboards.app import create_app

    monkeypatch.setenv("ROUTELEDGER_PUBLIC_URL", "https://routeledger.example.com")
    get_settings.cache_clear()
    try:
        assert create_app().server.config["SESSION_COOKIE_SECURE"] is True
    finally:
        monkeypatch.delenv("ROUTELEDGER_PUBLIC_URL")
        get_settings.cache_clear()


def test_wrong_password_and_missing_csrf_token_are_refused(client, database_url):
    project = make_project()
    make_login("refused@example.com", **{project.name: "admin"})
    token = csrf_of(client)
    wrong = client.post(
        "/login", data={"email": "refused@example.com", "password": "nope", "csrf_token": token}
    )
    assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
    forged = client.post(
        "/login", data={"email": "refused@example.com", "password": LOGIN_PASSWORD}
    )
    assert forged.status_code == 403


def test_no_redirect_to_another_site_after_sign_in(client, database_url):
    project = make_project()
    make_login("redirect@example.com", **{project.name: "viewer"})
    for target in ("//evil.example.com/", "https://evil.example.com/", "javascript:alert(1)"):
        answer = sign_in(client, "redirect@example.com", next_path=target)
        assert answer.headers["Location"] == "/", target
        client.post("/logout", data={"csrf_token": csrf_of(client)})


def test_dash_callbacks_need_the_csrf_header(client, database_url):
    project = make_project()
    make_login("callbacks@example.com", **{project.name: "viewer"})
    sign_in(client, "callbacks@example.com")
    body = {"output": "x.children", "outputs": {"id": "x", "property": "children"},
            "inputs": [], "changedPropIds": []}  # fmt: skip
    assert client.post("/_dash-update-component", json=body).status_code == 403
    cookie = client.get_cookie("_csrf_token")
    assert cookie is not None and not cookie.http_only
    answer = client.post(
        "/_dash-update-component", json=body, headers={"X-CSRFToken": cookie.value}
    )
    assert answer.status_code != 403


def dash_call(
    client, output: str, inputs: list[tuple], state: list[tuple], *, shown: str, headers=None
):
    """POST a Dash callback as a browser would, with values of the caller's own: its
    inputs and states as (id, property, value), in the callback's order, after the project
    the page shows (`shown`, the project switcher's value)."""

    def values(items):
        return [
            [{"id": i, "property": p, "value": v} for i, p, v in value]
            if prop is None
            else {"id": component, "property": prop, "value": value}
            for component, prop, value in items
        ]

    component, prop = output.rsplit(".", 1)
    body = {
        "output": output,
        "outputs": {"id": component, "property": prop},
        "inputs": values(inputs),
        "state": values([("project-switcher", "value", shown), *state]),
        "changedPropIds": [f"{inputs[0][0]}.{inputs[0][1]}"],
    }
    token = client.get_cookie("_csrf_token").value
    return client.post(
        "/_dash-update-component", json=body, headers={"X-CSRFToken": token, **(headers or {})}
    )


def test_admin_forms_refuse_what_the_api_would_by_name_never_with_a_500(client, database_url):
    """The forms are callbacks any signed-in browser can call with values of its own (and a
    double click saves a price twice): each answers with a message naming what is wrong."""
    project = make_project()
    make_login("forms@example.com", **{project.name: "admin"})
    sign_in(client, "forms@example.com")
    client.get("/prices")  # the CSRF cookie
    call = functools.partial(dash_call, client, shown=project.name)

    def price(model):
        fields = ("model", "provider", "input-per-mtok", "output-per-mtok",
                  "cache-read-per-mtok", "cache-write-per-mtok", "effective-from")  # fmt: skip
        given = {"model": model, "input-per-mtok": 1, "output-per-mtok": "2",
                 "effective-from": "2026-11-01"}  # fmt: skip
        return call(
            "prices-message.children", [("prices-save", "n_clicks", 1)],
            [(f"prices-{name}", "value", given.get(name)) for name in fields],
        )  # fmt: skip

    share = '{"tier":["ALL"],"type":"routing-policy-share"}'

    def policy(feature, cheap):
        shares = [({"tier": "cheap", "type": "routing-policy-share"}, "value", cheap)]
        ids = [({"tier": "cheap", "type": "routing-policy-share"}, "id", None)]
        return call(
            "routing-policy-message.children", [("routing-policy-save", "n_clicks", 1)],
            [("routing-feature", "value", feature), (share, None, shares), (share, None, ids),
             ("routing-policy-from", "value", "")],
        )  # fmt: skip

    answers = {
        "price": price("acme-small"),
        "same price again": price("acme-small"),
        "a long feature": policy("f" * 5000, "1"),
        "a share not a number": policy("chat", "abc"),
        "a feature with NUL": call(
            "routing-floor-message.children",
            [("routing-floor-save", "n_clicks", 1)],
            [
                ("routing-feature", "value", "chat\x00"),
                ("routing-floor-task-type", "value", ""),
                ("routing-floor-pass-score", "value", 0.7),
                ("routing-floor-target", "value", 0.9),
            ],
        ),  # fmt: skip
        "a model with NUL": call(
            "models-map-message.children",
            [("models-map-save", "n_clicks", 1)],
            [("models-map-model", "value", "m\x00"), ("models-map-tier", "value", "cheap")],
        ),
        "a rule id too large": call(
            "alerts-rule-message.children",
            [
                ("alerts-rule-delete", "n_clicks", 1),
                ("alerts-rule-create", "n_clicks", None),
                ("alerts-rule-enable", "n_clicks", None),
                ("alerts-rule-disable", "n_clicks", None),
            ],
            [
                *(
                    (f"alerts-rule-{name}", "value", None)
                    for name in (
                        "metric",
                        "feature",
                        "name",
                        "window-minutes",
                        "threshold",
                        "baseline-multiplier",
                        "min-requests",
                        "cooldown-minutes",
                        "recipients",
                    )
                ),
                ("alerts-rule-choice", "value", 10**30),
            ],
        ),  # fmt: skip
    }
    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(
        answers, 200
    )
    assert "Saved" in answers["price"].text
    for name in ("same price again", "a long feature", "a share not a number",
                 "a feature with NUL", "a model with NUL", "a rule id too large"):  # fmt: skip
        assert "Not saved" in answers[name].text, (name, answers[name].text)
    assert "every share must be a number" in answers["a share not a number"].text
    assert "feature: String should have at most 200 characters" in answers["a long feature"].text


def test_a_form_saves_only_into_the_project_its_page_shows(client, database_url):
    """An admin of two projects opens the first in one tab and the second in another (the
    session's project is the second now): a form of the first tab is refused, not saved
    into the second."""
    first, second = make_project(), make_project()
    make_login("tabs@example.com", **{first.name: "admin", second.name: "admin"})
    sign_in(client, "tabs@example.com")
    client.get(f"/_dash-layout?project={first.name}")
    client.get(f"/?project={second.name}")  # the other tab
    answer = dash_call(
        client, "models-map-message.children", [("models-map-save", "n_clicks", 1)],
        [("models-map-model", "value", "acme-small"), ("models-map-tier", "value", "cheap")],
        shown=first.name,
    )  # fmt: skip
    assert answer.status_code == 200
    assert f"this page shows {first.name}, but another tab has switched to {second.name}" in (
        answer.text
    )
    saved = dash_call(
        client, "models-map-message.children", [("models-map-save", "n_clicks", 1)],
        [("models-map-model", "value", "acme-small"), ("models-map-tier", "value", "cheap")],
        shown=second.name,
    )  # fmt: skip
    assert "Mapped acme-small to cheap" in saved.text


def test_a_tab_that_names_its_project_is_answered_for_it(client, database_url):
    """The dashboard's script names the project a tab shows on each of the tab's requests
    (assets/page_project.js): after another tab switched the session, the tab still reads
    and saves its own project, and the session keeps the other tab's."""
    from sqlalchemy import text

    from app.db import transaction
    from dashboards.auth import PROJECT_HEADER

    # Not ASCII: sent percent-encoded, as the script sends it.
    first = make_project(name=f"café-{uuid.uuid4().hex[:6]}")
    second, foreign = make_project(), make_project()
    make_login("named-tabs@example.com", **{first.name: "admin", second.name: "admin"})
    sign_in(client, "named-tabs@example.com")
    client.get(f"/?project={second.name}")  # the other tab
    named = {PROJECT_HEADER: quote(first.name)}
    assert _page_project(client.get("/_dash-layout", headers=named)) == first.name
    saved = dash_call(
        client, "models-map-message.children", [("models-map-save", "n_clicks", 1)],
        [("models-map-model", "value", "acme-small"), ("models-map-tier", "value", "cheap")],
        shown=first.name, headers=named,
    )  # fmt: skip
    assert "Mapped acme-small to cheap" in saved.text
    with transaction() as conn:
        mapped = dict(
            conn.execute(
                text(
                    "select project_id, tier from model_tiers "
                    "where model = 'acme-small' and project_id = any(:ids)"
                ),
                {"ids": [first.id, second.id]},
            ).all()
        )
    assert mapped == {first.id: "cheap"}
    assert _page_project(client.get("/_dash-layout")) == second.name
    refused = client.get("/_dash-layout", headers={PROJECT_HEADER: quote(foreign.name)})
    assert refused.status_code == 403
    assert f"you no longer belong to {foreign.name}" in refused.text


def _page_project(layout) -> str:
    """The project a served layout says its page shows (dashboards.shell.PAGE_PROJECT)."""
    pending = [layout.get_json()]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("props", {}).get("id") == "page-project":
                return node["props"]["data-project"]
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    raise AssertionError("no page-project marker in the layout")


def test_a_viewer_never_sees_another_projects_data(client, database_url):
    mine, theirs = make_project(), make_project()
    make_login("isolated@example.com", **{mine.name: "viewer"})
    sign_in(client, "isolated@example.com")
    layout = client.get(f"/_dash-layout?project={theirs.name}").text
    assert mine.name in layout and theirs.name not in layout
    export = client.get(f"/exports/customers.csv?project={theirs.name}")
    assert export.status_code == 200
    assert mine.name in export.headers["Content-Disposition"]
    assert theirs.name not in export.headers["Content-Disposition"]


def test_the_project_switcher_offers_the_users_projects(client, database_url):
    first, second, other = make_project(), make_project(), make_project()
    make_login("switcher@example.com", **{first.name: "admin", second.name: "viewer"})
    sign_in(client, "switcher@example.com")
    client.get(f"/?project={second.name}")
    layout = client.get("/_dash-layout").text
    assert first.name in layout and second.name in layout and other.name not in layout
    assert "switcher@example.com · viewer" in layout
    client.get(f"/?project={first.name}")
    assert "switcher@example.com · admin" in client.get("/_dash-layout").text


def test_sign_out_needs_the_token_and_ends_the_session(client, database_url):
    project = make_project()
    make_login("signout@example.com", **{project.name: "viewer"})
    sign_in(client, "signout@example.com")
    assert client.post("/logout").status_code == 403
    token = client.get_cookie("_csrf_token").value
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302


def forged_session_cookie(secret_key: str, contents: dict) -> str:
    """A session cookie as Flask signs it, with these contents, for a forger who knows the
    key."""
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    forger = Flask("forger")
    forger.secret_key = secret_key
    return SecureCookieSessionInterface().get_signing_serializer(forger).dumps(contents)


def test_a_forged_session_cookie_downloads_nothing(client, database_url):
    """A signed cookie alone is no session: it must name a session the server started."""
    project = make_project()
    user_id = make_login("forged@example.com", **{project.name: "admin"})
    csv = f"/exports/requests.csv?project={project.name}&start=2026-11-01&end=2026-11-02"
    for key, contents in [
        ("dev-insecure-secret-change-me", {"user_id": user_id}),  # the old default key
        (TEST_SECRET_KEY, {"user_id": user_id}),  # what sessions held before issue 16
        (TEST_SECRET_KEY, {"token": "made-up"}),
    ]:
        client.set_cookie("routeledger_session", forged_session_cookie(key, contents))
        answer = client.get(csv)
        assert answer.status_code == 302, contents
        assert answer.headers["Location"].startswith("/login?next=")


def attempt_from(client, address: str, email: str, password: str):
    return client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf_of(client)},
        environ_base={"REMOTE_ADDR": address},
    )


@pytest.fixture
def forget_failures():
    """Addresses whose failed sign-ins are forgotten after the test."""
    from sqlalchemy import delete

    from app.db import transaction
    from app.models import login_failures

    used = []
    yield used
    with transaction() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.address.in_(used)))


def test_an_address_that_failed_too_often_waits_whatever_the_account(client, forget_failures):
    from app.services.logins import LoginLimits

    project = make_project()
    make_login("probed@example.com", **{project.name: "viewer"})
    prober, neighbour = "203.0.113.7", "203.0.113.8"
    forget_failures += [prober, neighbour]
    for number in range(LoginLimits().per_address):
        answer = attempt_from(client, prober, f"guess-{number}@example.com", "guess")
        assert answer.status_code == 401, number
    refused = attempt_from(client, prober, "probed@example.com", LOGIN_PASSWORD)
    assert refused.status_code == 429
    assert re.search(r"Too many failed sign-ins\. Try again in \d+ minutes?\.", refused.text)
    assert 0 < int(refused.headers["Retry-After"]) <= 900
    assert attempt_from(client, neighbour, "probed@example.com", LOGIN_PASSWORD).status_code == 302


def test_behind_a_proxy_failures_count_by_the_forwarded_address(
    database_url, monkeypatch, forget_failures
):
    from sqlalchemy import select

    from app.db import connection
    from app.models import login_failures
    from app.settings import get_settings
    from dashboards.app import create_app

    forget_failures += ["198.51.100.99", "203.0.113.99"]
    monkeypatch.setenv("ROUTELEDGER_TRUSTED_PROXIES", "1")
    get_settings.cache_clear()
    try:
        behind_proxy = create_app().server.test_client()
    finally:
        monkeypatch.delenv("ROUTELEDGER_TRUSTED_PROXIES")
        get_settings.cache_clear()
    token = csrf_in(behind_proxy.get("/login").text)
    behind_proxy.post(
        "/login",
        data={"email": "proxied@example.com", "password": "x", "csrf_token": token},
        headers={"X-Forwarded-For": "198.51.100.99"},
        environ_base={"REMOTE_ADDR": "203.0.113.99"},  # the proxy
    )
    with connection() as conn:
        counted = conn.execute(
            select(login_failures.c.address).where(
                login_failures.c.account == "proxied@example.com"
            )
        ).scalars()
        assert list(counted) == ["198.51.100.99"]
