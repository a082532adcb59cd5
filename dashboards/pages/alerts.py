"""Alerts: the ones firing and the resolved ones, and the rules that fire them."""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, ctx, dcc, html
from pydantic import ValidationError

from app.schemas import ID_VALUE, AlertRuleChanges, AlertRuleIn, describe_errors
from app.services import alerts, dashboard_queries
from app.vocabulary import ALERT_METRICS
from dashboards import auth, components, data, filters, shell
from dashboards.formatting import count, number

dash.register_page(__name__, path="/alerts", name="Alerts", title="Alerts · RouteLedger", order=6)

DATES = "alerts-dates"
SUMMARY = "alerts-summary"
TABLE = "alerts-table"
RULES = "alerts-rules"
URL = "alerts-url"
RULE_FIELDS = {
    "name": ("name", "text", "escalation spike"),
    "window_minutes": ("window (minutes)", "number", 60),
    "threshold": ("threshold", "text", "0.15"),
    "baseline_multiplier": ("or × reference rate", "text", "2"),
    "min_requests": ("min requests", "number", 20),
    "cooldown_minutes": ("cooldown (minutes)", "number", 60),
    "recipients": ("recipients (comma separated)", "text", "pm@example.com"),
}
RULE_METRIC = "alerts-rule-metric"
RULE_FEATURE = "alerts-rule-feature"
RULE_CREATE = "alerts-rule-create"
RULE_CHOICE = "alerts-rule-choice"
RULE_ENABLE = "alerts-rule-enable"
RULE_DISABLE = "alerts-rule-disable"
RULE_DELETE = "alerts-rule-delete"
RULE_MESSAGE = "alerts-rule-message"

ALERT_COLUMNS = [
    {"id": name, "name": name.replace("_", " ")}
    for name in ("state", "rule", "metric", "fired_at", "resolved_at", "value", "limit",
                 "requests")
]  # fmt: skip
RULE_COLUMNS = [
    {"id": name, "name": name.replace("_", " ")}
    for name in ("id", "name", "metric", "scope", "window_minutes", "threshold",
                 "baseline_multiplier", "min_requests", "cooldown_minutes", "recipients",
                 "enabled")
]  # fmt: skip


def rule_field_id(name: str) -> str:
    return f"alerts-rule-{name.replace('_', '-')}"


def layout(**query):
    project = auth.membership()
    linked = _rule_id(query.get("rule"))
    within = filters.period_of(query.get("start"), query.get("end"))
    features = data.read(
        dashboard_queries.filter_values, project_id=project.project_id, within=within
    ).features
    return html.Div(
        [
            html.H1("Alerts"),
            filters.toolbar(filters.date_range(DATES, query)),
            html.Div(id=SUMMARY, className="key-figures"),
            components.card(
                "Fired alerts",
                components.table(
                    TABLE,
                    ALERT_COLUMNS,
                    [],
                    style_data_conditional=[
                        {
                            "if": {"filter_query": '{state} = "firing"'},
                            "backgroundColor": "#fdecea",
                        }
                    ],
                ),
            ),
            components.card(
                "Rules",
                components.table(
                    RULES,
                    RULE_COLUMNS,
                    [],
                    # The rule an alert email links to (?rule=ID), picked out.
                    style_data_conditional=[
                        {
                            "if": {"filter_query": f"{{id}} = {linked}"},
                            "fontWeight": "600",
                            "backgroundColor": "#fff4d6",
                        }
                    ]
                    if linked
                    else [],
                ),  # fmt: skip
            ),
            _rule_editor(project, list(features)),
            filters.url_store(URL),
        ]
    )


def _rule_id(value: str | None) -> int | None:
    try:
        return components.form_value(ID_VALUE, int(value or ""), field="rule")
    except ValueError:  # not a number, or not an id (FormRefusal)
        return None


def _rule_editor(project, features: list[str]) -> html.Section:
    admin = project.is_admin
    inputs = [
        html.Label(
            [
                label,
                dcc.Input(
                    id=rule_field_id(name),
                    type=kind,
                    value=default,
                    style={"width": "190px"} if kind == "text" else None,
                ),
            ]
        )
        for name, (label, kind, default) in RULE_FIELDS.items()
    ]
    return components.card(
        "Rule editor",
        html.P(
            "A rule fires when, over its window, at least `min requests` requests show the "
            "metric above the threshold, or above the multiplier times the reference rate."
            if admin
            else "Only admins of this project can change rules.",
            className="muted",
        ),
        html.Div(
            [
                html.Label(
                    [
                        "metric",
                        dcc.Dropdown(
                            id=RULE_METRIC,
                            options=list(ALERT_METRICS),
                            value="escalation_rate",
                            clearable=False,
                            style={"width": "200px"},
                        ),
                    ]
                ),
                html.Label(
                    [
                        "feature (empty: the project)",
                        dcc.Dropdown(id=RULE_FEATURE, options=features, style={"width": "200px"}),
                    ]
                ),
                *inputs,
            ],
            className="form-row",
        ),
        html.Button("Create rule", id=RULE_CREATE, className="button", disabled=not admin),
        html.Div(
            [
                html.Label(
                    [
                        "rule",
                        dcc.Dropdown(id=RULE_CHOICE, style={"width": "260px"}),
                    ]
                ),
                html.Button("Enable", id=RULE_ENABLE, className="button", disabled=not admin),
                html.Button("Disable", id=RULE_DISABLE, className="button", disabled=not admin),
                html.Button("Delete", id=RULE_DELETE, className="button", disabled=not admin),
            ],
            className="form-row",
        ),
        html.Div(id=RULE_MESSAGE),
    )


@callback(
    Output(SUMMARY, "children"),
    Output(TABLE, "data"),
    Output(RULES, "data"),
    Output(RULE_CHOICE, "options"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(RULE_MESSAGE, "children"),
)
def update(start_date, end_date, _changed):
    project_id = auth.membership().project_id
    within = filters.period_of(start_date, end_date)
    fired, rules = data.together(
        lambda: data.alerts_in(project_id, within),
        lambda: data.read(alerts.list_rules, project_id=project_id),
    )
    summary = [
        components.key_figure(
            "Firing now", count(sum(a["state"] == "firing" for a in fired)), figure_id="firing"
        ),
        components.key_figure("Fired in the period", count(len(fired))),
        components.key_figure("Rules", count(len(rules))),
    ]
    alert_rows = [
        {
            "state": a["state"],
            "rule": a["rule_name"],
            "metric": a["metric"],
            "fired_at": f"{a['fired_at']:%Y-%m-%d %H:%M}",
            "resolved_at": f"{a['resolved_at']:%Y-%m-%d %H:%M}" if a["resolved_at"] else "",
            "value": ("≥ " if a["value_is_lower_bound"] else "") + number(a["value"], 3),
            "limit": number(a["limit_value"], 3),
            "requests": a["requests"],
        }
        for a in fired
    ]
    rule_rows = [
        {
            **{c["id"]: r[c["id"]] for c in RULE_COLUMNS},
            "scope": alerts.scope_text(r["scope"]),
            "threshold": "" if r["threshold"] is None else str(r["threshold"]),
            "baseline_multiplier": ""
            if r["baseline_multiplier"] is None
            else str(r["baseline_multiplier"]),
            "recipients": ", ".join(r["recipients"]),
            "enabled": "yes" if r["enabled"] else "no",
        }
        for r in rules
    ]
    choices = [{"label": f"{r['id']}: {r['name']}", "value": r["id"]} for r in rules]
    search = filters.url_search(start=start_date, end=end_date)
    return summary, alert_rows, rule_rows, choices, search


@callback(
    Output(RULE_MESSAGE, "children"),
    Input(RULE_CREATE, "n_clicks"),
    Input(RULE_ENABLE, "n_clicks"),
    Input(RULE_DISABLE, "n_clicks"),
    Input(RULE_DELETE, "n_clicks"),
    State(shell.SWITCHER, "value"),
    State(RULE_METRIC, "value"),
    State(RULE_FEATURE, "value"),
    *[State(rule_field_id(name), "value") for name in RULE_FIELDS],
    State(RULE_CHOICE, "value"),
    prevent_initial_call=True,
)
def change_rules(_create, _enable, _disable, _delete, shown_project, metric, feature, *values):
    *fields, rule_id = values
    try:
        project = auth.require_admin(shown_project)
    except auth.AccessDenied as refused:
        return components.note(f"Not saved: {refused}.", "error")
    if ctx.triggered_id in (RULE_ENABLE, RULE_DISABLE, RULE_DELETE):
        if rule_id is None:
            return components.note("Choose a rule first.", "error")
        try:
            rule_id = components.form_value(ID_VALUE, rule_id, field="rule")
        except components.FormRefusal as refused:
            return components.note(f"Not saved: {refused}", "error")
    try:
        if ctx.triggered_id == RULE_DELETE:
            data.write(alerts.delete_rule, project_id=project.project_id, rule_id=rule_id)
            return components.note(f"Rule {rule_id} and its alerts deleted.", "ok")
        if ctx.triggered_id in (RULE_ENABLE, RULE_DISABLE):
            enabled = ctx.triggered_id == RULE_ENABLE
            data.write(
                alerts.update_rule,
                project_id=project.project_id,
                rule_id=rule_id,
                changes=AlertRuleChanges(enabled=enabled),
            )
            state = "enabled" if enabled else "disabled"
            return components.note(f"Rule {rule_id} {state}.", "ok")
    except alerts.RuleNotFound as error:
        return components.note(f"Not saved: {error}.", "error")
    given = dict(zip(RULE_FIELDS, fields, strict=True))
    body = {
        "name": given["name"],
        "metric": metric,
        "scope": {"feature": feature} if feature else {},
        "window_minutes": given["window_minutes"],
        "threshold": _number(given["threshold"]),
        "baseline_multiplier": _number(given["baseline_multiplier"]),
        "min_requests": given["min_requests"],
        "cooldown_minutes": given["cooldown_minutes"],
        "recipients": [r.strip() for r in str(given["recipients"] or "").split(",") if r.strip()],
    }
    try:
        rule = AlertRuleIn.model_validate(body)
        created = data.write(alerts.create_rule, project_id=project.project_id, rule=rule)
    except ValidationError as error:
        problems = describe_errors(error.errors(), whole="form")
        return components.note(f"Not saved: {problems}", "error")
    except alerts.InvalidRule as error:
        return components.note(f"Not saved: {error}", "error")
    return components.note(f"Rule {created['id']} created.", "ok")


def _number(value) -> float | str | None:
    """A number typed in a text field; the text itself when it is not one (the validation
    message then names the field)."""
    if value in (None, ""):
        return None
    try:
        return float(str(value).strip())
    except ValueError:
        return str(value)


filters.sync_url(URL)
