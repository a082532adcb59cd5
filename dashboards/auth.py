"""Logins for the dashboard: plain Flask routes on Dash's server, sessions kept in
PostgreSQL (app.services.sessions) behind Flask's signed cookie, sign-ins throttled per
account and per address (app.services.logins), a CSRF token checked on every POST, and the
project a user is looking at.

Every request but the login page needs a live session: the cookie holds the session's
token, the project chosen and a CSRF token, and each request looks the token up, so signing
out (or a password change) ends the session at once in every dashboard process, and a
cookie copied before is refused. Memberships are read from the database on each request
too, so a removed membership takes effect at once. Forms carry the CSRF token in a hidden
field; Dash's own callback POSTs carry it in the X-CSRFToken header, which dash-renderer
copies from the `_csrf_token` cookie (readable by the page's script only: another site can
neither read it nor set the header).
"""

from __future__ import annotations

import hmac
import math
import secrets
from datetime import timedelta
from html import escape
from urllib.parse import quote, unquote, urlsplit

import flask
from flask import Flask, g, redirect, request, session

from app.db import connection, transaction
from app.periods import utc_now
from app.services import logins, sessions, users
from app.services.users import Membership

CSRF_COOKIE = "_csrf_token"
CSRF_HEADER = "X-CSRFToken"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
PROJECT_PARAM = "project"
# The project a tab shows, sent with each of its own requests (assets/page_project.js): that
# request is answered for it, whatever project another tab switched the session to since.
PROJECT_HEADER = "X-RouteLedger-Project"
SESSION_TOKEN = "token"  # the session cookie's key for the server-side session's token


class AccessDenied(PermissionError):
    pass


def install(server: Flask, *, secret_key: str, secure_cookies: bool) -> None:
    server.secret_key = secret_key
    server.config.update(
        SESSION_COOKIE_NAME="routeledger_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
    )
    server.before_request(_before_request)
    server.after_request(_set_csrf_cookie)
    server.add_url_rule(LOGIN_PATH, "login", _login, methods=["GET", "POST"])
    server.add_url_rule(LOGOUT_PATH, "logout", _logout, methods=["POST"])


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _csrf_ok(sent: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and sent) and hmac.compare_digest(expected, sent)


def _before_request():
    if request.method == "POST":
        sent = request.form.get("csrf_token") if request.form else None
        if not _csrf_ok(sent or request.headers.get(CSRF_HEADER)):
            return flask.Response("CSRF token missing or wrong: reload the page", 403)
    if request.path == LOGIN_PATH:
        return None
    found = _signed_in_user(session.get(SESSION_TOKEN))
    if not found:
        session.pop(SESSION_TOKEN, None)
        if request.path.startswith("/_dash-") and request.method == "POST":
            return flask.Response("signed out: reload the page", 401)
        return redirect(f"{LOGIN_PATH}?next={_quote_next(request.full_path)}")
    g.email, g.memberships = found
    shown = request.headers.get(PROJECT_HEADER)
    if shown is not None:
        return _page_project(unquote(shown))
    _choose_project(request.args.get(PROJECT_PARAM))
    return None


def _signed_in_user(token: str | None) -> tuple[str, list[Membership]] | None:
    """The email and memberships of the session's login, while the session lives."""
    if not isinstance(token, str):
        return None
    with connection() as conn:
        user = sessions.session_user(conn, token=token, now=utc_now())
        return (user.email, users.user_memberships(conn, user_id=user.user_id)) if user else None


def _choose_project(wanted_name: str | None) -> None:
    """A project named in the URL becomes the session's project when the user belongs to
    it; otherwise the session keeps its project while the user still belongs to it."""
    by_name = {m.project_name: m for m in g.memberships}
    by_id = {m.project_id: m for m in g.memberships}
    g.membership = (
        by_name.get(wanted_name)
        or by_id.get(session.get("project_id"))
        or (g.memberships[0] if g.memberships else None)
    )
    chosen_id = g.membership.project_id if g.membership else None
    if session.get("project_id") != chosen_id:
        session["project_id"] = chosen_id


def _page_project(name: str) -> flask.Response | None:
    """The project a tab shows, for this request only (the session keeps its own); refused
    when the user no longer belongs to it."""
    g.membership = next((m for m in g.memberships if m.project_name == name), None)
    if g.membership is None:
        return flask.Response(f"you no longer belong to {name}: reload the page", 403)
    return None


def _set_csrf_cookie(response: flask.Response) -> flask.Response:
    if "csrf" in session and request.cookies.get(CSRF_COOKIE) != session["csrf"]:
        response.set_cookie(
            CSRF_COOKIE,
            session["csrf"],
            httponly=False,  # dash-renderer reads it to send it back as a header
            samesite="Strict",
            secure=flask.current_app.config["SESSION_COOKIE_SECURE"],
        )
    return response


def _quote_next(path: str) -> str:
    return quote(path.rstrip("?"), safe="")


def _safe_next(target: str | None) -> str:
    """Only a path on this site, never another host (no open redirect)."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _login():
    error, status, headers = "", 200, {}
    if request.method == "POST":
        with transaction() as conn:
            attempt = logins.sign_in(
                conn,
                email=request.form.get("email", ""),
                password=request.form.get("password", ""),
                address=request.remote_addr,
                now=utc_now(),
            )
            if attempt.token and session.get(SESSION_TOKEN):
                sessions.end_session(conn, token=session[SESSION_TOKEN])
        if attempt.token:
            session.clear()  # a fresh session on login: no fixation of an older one
            session[SESSION_TOKEN] = attempt.token
            csrf_token()
            return redirect(_safe_next(request.form.get("next")))
        if attempt.retry_after:
            error = f"Too many failed sign-ins. Try again in {_duration(attempt.retry_after)}."
            status, headers = 429, {"Retry-After": str(int(attempt.retry_after.total_seconds()))}
        else:
            error, status = "Wrong email or password.", 401
    return flask.Response(
        _LOGIN_PAGE.format(
            csrf=escape(csrf_token()),
            next=escape(_safe_next(request.values.get("next"))),
            error=f'<p class="error" role="alert">{escape(error)}</p>' if error else "",
        ),
        status=status,
        headers=headers,
        mimetype="text/html",
    )


def _duration(wait: timedelta) -> str:
    count, unit = math.ceil(wait.total_seconds()), "second"
    if count >= 60:
        count, unit = math.ceil(count / 60), "minute"
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def _logout():
    if session.get(SESSION_TOKEN):
        with transaction() as conn:
            sessions.end_session(conn, token=session[SESSION_TOKEN])
    session.clear()
    return redirect(LOGIN_PATH)


def membership() -> Membership:
    """The project this request looks at, and the user's role in it."""
    chosen = g.get("membership")
    if chosen is None:
        raise AccessDenied("this login belongs to no project")
    return chosen


def memberships() -> list[Membership]:
    return g.get("memberships", [])


def email() -> str:
    return g.get("email", "")


def require_admin(shown_project: str | None) -> Membership:
    """The session's project, when its user is an admin of it and it is the project the page
    shows (`shown_project`, the switcher's value, sent with the form): another tab may have
    switched the session to another project since the page was drawn."""
    chosen = membership()
    if shown_project is not None and shown_project != chosen.project_name:
        raise AccessDenied(
            f"this page shows {shown_project}, but another tab has switched to "
            f"{chosen.project_name} since: reload the page"
        )
    if not chosen.is_admin:
        raise AccessDenied(f"only admins of {chosen.project_name} can do this")
    return chosen


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · RouteLedger</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f6f8; margin: 0; }}
form {{ max-width: 340px; margin: 12vh auto; background: #fff; padding: 2rem;
        border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.12); }}
h1 {{ font-size: 1.3rem; margin-top: 0; }}
label {{ display: block; margin: .8rem 0 .3rem; font-size: .9rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }}
button {{ margin-top: 1.2rem; width: 100%; padding: .6rem; font-size: 1rem;
          background: #1f4e79; color: #fff; border: 0; border-radius: 4px; }}
.error {{ color: #b00020; }}
</style></head>
<body><form method="post" action="/login">
<h1>RouteLedger</h1>{error}
<input type="hidden" name="csrf_token" value="{csrf}">
<input type="hidden" name="next" value="{next}">
<label for="email">Email</label><input id="email" name="email" type="email" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" required>
<button id="sign-in" type="submit">Sign in</button>
</form></body></html>
"""
