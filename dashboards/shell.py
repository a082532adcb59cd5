"""The frame around every page: navigation, the project switcher, who is signed in."""

from __future__ import annotations

from urllib.parse import urlencode

import dash
from dash import Input, Output, State, callback, dcc, html

from dashboards import auth

SWITCHER = "project-switcher"
SWITCH_TO = "project-switch-location"
PAGE_PROJECT = "page-project"  # the project the page shows, for assets/page_project.js


def layout():
    chosen = auth.membership() if auth.memberships() else None
    return html.Div(
        [
            html.Header(
                [
                    html.Div("RouteLedger", className="brand"),
                    html.Nav(_nav_links(), className="nav"),
                    _switcher(chosen),
                    html.Div(
                        [
                            html.Span(
                                f"{auth.email()} · {chosen.role if chosen else 'no project'}",
                                id="whoami",
                            ),
                            _logout_form(),
                        ],
                        className="user",
                    ),
                ],
                className="header",
            ),
            dcc.Location(id=SWITCH_TO, refresh=True),
            *(
                [html.Div(id=PAGE_PROJECT, hidden=True, **{"data-project": chosen.project_name})]
                if chosen
                else []
            ),
            html.Main(dash.page_container if chosen else _no_project(), className="content"),
        ]
    )


def _nav_links() -> list:
    pages = sorted(
        (p for p in dash.page_registry.values() if p.get("nav", True)),
        key=lambda p: p["order"] if p.get("order") is not None else 99,
    )
    return [dcc.Link(p["name"], href=p["relative_path"], className="nav-link") for p in pages]


def _switcher(chosen):
    options = [{"label": m.project_name, "value": m.project_name} for m in auth.memberships()]
    return dcc.Dropdown(
        id=SWITCHER,
        options=options,
        value=chosen.project_name if chosen else None,
        clearable=False,
        searchable=len(options) > 8,
        className="switcher",
        disabled=len(options) < 2,
    )


def _logout_form() -> html.Form:
    return html.Form(
        [
            dcc.Input(type="hidden", name="csrf_token", value=auth.csrf_token()),
            html.Button("Sign out", id="sign-out", type="submit", className="link-button"),
        ],
        method="POST",
        action=auth.LOGOUT_PATH,
    )


def _no_project():
    return html.Div(
        [
            html.H2("No project yet"),
            html.P(
                "This login belongs to no project. An administrator adds it with "
                "`routeledger user create EMAIL --project NAME --role viewer`."
            ),
        ]
    )


@callback(
    Output(SWITCH_TO, "href"),
    Input(SWITCHER, "value"),
    State("_pages_location", "pathname"),
    prevent_initial_call=True,
)
def switch_project(name: str | None, pathname: str | None):
    if not name or name == auth.membership().project_name:
        return dash.no_update
    # The page reloads with the project in its URL; auth switches to it if the user may.
    return f"{pathname or '/'}?{urlencode({auth.PROJECT_PARAM: name})}"
