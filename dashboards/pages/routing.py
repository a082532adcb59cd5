"""Routing, per feature: the policy split against the intended and served splits, the
split and the fallback, escalation and failover rates over time (with the alert
thresholds and the alerts that fired), the routing flow, mean quality per route, the policy
editor and the quality floor."""

from __future__ import annotations

import dash
import plotly.graph_objects as go
from dash import ALL, Input, Output, State, callback, dcc, html
from pydantic import ValidationError

from app.periods import InvalidPeriod, parse_instant, utc_now
from app.schemas import NAME_VALUE, PolicyIn, describe_errors
from app.services import alerts, dashboard_queries, metrics, policies, projects
from dashboards import auth, components, data, filters, flow, quality_floors, shell
from dashboards.formatting import count, pct

dash.register_page(
    __name__, path="/routing", name="Routing", title="Routing · RouteLedger", order=1
)

DATES = "routing-dates"
FEATURE = "routing-feature"
SUMMARY = "routing-summary"
SPLITS = "routing-splits"
SPLIT_OVER_TIME = "routing-split-over-time"
RATES = "routing-rates"
QUALITY = "routing-quality"
POLICY_SHARE = "routing-policy-share"  # pattern-matched: one input per tier
POLICY_FROM = "routing-policy-from"
POLICY_SAVE = "routing-policy-save"
POLICY_MESSAGE = "routing-policy-message"
URL = "routing-url"

RATE_NAMES = {
    "fallback_rate": "fallback",
    "escalation_rate": "escalation",
    "failover_rate": "failover",
}


def layout(**query):
    project = auth.membership()
    within = filters.period_of(query.get("start"), query.get("end"))
    features = list(
        data.read(
            dashboard_queries.filter_values, project_id=project.project_id, within=within
        ).features
    )
    feature = query.get("feature") if query.get("feature") in features else None
    return html.Div(
        [
            html.H1("Routing"),
            filters.toolbar(
                filters.date_range(DATES, query),
                dcc.Dropdown(
                    id=FEATURE,
                    options=features,
                    value=feature or (features[0] if features else None),
                    clearable=False,
                    placeholder="no feature has traffic in this period",
                    className="filter",
                ),
            ),
            html.Div(id=SUMMARY, className="key-figures"),
            html.Div(
                [
                    components.card("Policy, intended and served split", components.graph(SPLITS)),
                    components.card("Served split over time", components.graph(SPLIT_OVER_TIME)),
                ],
                className="grid",
            ),
            components.card(
                "Fallback, escalation and failover rates",
                html.P(
                    "Dashed lines: alert thresholds for this feature; shaded: alerts that fired.",
                    className="muted",
                ),
                components.graph(RATES),
            ),
            flow.card(),
            html.Div(
                [
                    components.card("Mean quality per route", components.graph(QUALITY)),
                    _policy_editor(project),
                ],
                className="grid",
            ),
            quality_floors.section(project),
            filters.url_store(URL),
        ]
    )


def _policy_editor(project) -> html.Section:
    tiers = data.read(projects.project_tiers, project_id=project.project_id)
    admin = project.is_admin
    return components.card(
        "Policy editor",
        html.P(
            "The split this feature should have, from a date on. Shares sum to 1."
            if admin
            else "Only admins of this project can change the policy.",
            className="muted",
        ),
        html.Div(
            [
                html.Label(
                    [
                        tier,
                        dcc.Input(
                            id={"type": POLICY_SHARE, "tier": tier},
                            type="number",
                            min=0,
                            max=1,
                            step=0.01,
                            className="share-input",
                        ),
                    ]
                )
                for tier in sorted(tiers, key=tiers.get)
            ],
            className="form-row",
        ),
        html.Div(
            [
                html.Label(
                    [
                        "effective from (UTC)",
                        dcc.Input(
                            id=POLICY_FROM,
                            type="text",
                            placeholder="now, or 2026-11-01T00:00",
                        ),
                    ]
                ),
                html.Button("Save policy", id=POLICY_SAVE, className="button", disabled=not admin),
            ],
            className="form-row",
        ),
        html.Div(id=POLICY_MESSAGE),
    )


@callback(
    Output(SUMMARY, "children"),
    Output(SPLITS, "figure"),
    Output(SPLIT_OVER_TIME, "figure"),
    Output(RATES, "figure"),
    Output(QUALITY, "figure"),
    Output({"type": POLICY_SHARE, "tier": ALL}, "value"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(FEATURE, "value"),
    Input(POLICY_MESSAGE, "children"),
    State({"type": POLICY_SHARE, "tier": ALL}, "id"),
)
def update(start_date, end_date, feature, _saved, share_ids):
    project_id = auth.membership().project_id
    within = filters.period_of(start_date, end_date)
    search = filters.url_search(start=start_date, end=end_date, feature=feature)
    current = _policy_now(project_id, feature) if feature else None
    shares = [(current.get(i["tier"], 0.0) if current else None) for i in share_ids]
    if not feature:
        nothing = components.empty("No traffic in this period")
        return [], nothing, nothing, nothing, nothing, shares, search
    scope = metrics.Filters(feature=feature)
    totals, series, marks = data.together(
        lambda: data.routing_totals(project_id, within, scope),
        lambda: data.routing_over_time(project_id, within, scope),
        lambda: _alert_marks(project_id, feature, within),
    )
    summary = [
        components.key_figure("Requests", count(totals.requests)),
        components.key_figure("Policy deviation", pct(totals.policy_deviation)),
        components.key_figure("Fallback rate", pct(totals.fallback_rate)),
        components.key_figure("Escalation rate", pct(totals.escalation_rate)),
        components.key_figure("Failover rate", pct(totals.failover_rate)),
        components.key_figure("Mean quality", pct(totals.mean_quality, 0)),
    ]
    return (
        summary,
        _splits_figure(totals),
        _split_over_time_figure(series),
        _rates_figure(series, marks),
        _quality_figure(totals),
        shares,
        search,
    )


def _policy_now(project_id: int, feature: str) -> dict[str, float] | None:
    policy = data.read(policies.policy_at, project_id=project_id, feature=feature, at=utc_now())
    return policy["split"] if policy else None


def _splits_figure(totals: metrics.RoutingMetrics) -> go.Figure:
    splits = {
        "policy": totals.policy_split or {},
        "intended": totals.intended_split,
        "served": totals.served_split,
    }
    fig = components.figure(percent=True)
    for tier in components.tier_order(*splits.values()):
        fig.add_bar(
            x=list(splits),
            y=[split.get(tier, 0.0) for split in splits.values()],
            name=components.shown(tier),
            marker_color=components.TIER_COLORS.get(tier),
            text=[pct(split.get(tier, 0.0), 0) for split in splits.values()],
        )
    fig.update_layout(barmode="stack", hovermode="closest")
    return fig


def _split_over_time_figure(series) -> go.Figure:
    fig = components.figure(percent=True)
    served = [p for p in series if p.served_counts]  # an empty bucket has no split
    for tier in components.tier_order(*(p.served_counts for p in served)):
        fig.add_scatter(
            x=[p.start for p in served],
            y=[p.served_split.get(tier, 0.0) for p in served],
            name=components.shown(tier),
            stackgroup="served",
            line={"color": components.TIER_COLORS.get(tier)},
        )
    fig.update_layout(yaxis={"range": [0, 1]})
    return fig


def _alert_marks(project_id: int, feature: str, within) -> tuple[dict[str, list[float]], list]:
    """What the rates chart draws: the thresholds of the feature's (and the project's)
    rules, metric by metric, and their alerts in the period."""
    # Read one after the other: this already runs on the read pool (see update).
    rules = data.read(alerts.list_rules, project_id=project_id)
    fired = data.alerts_in(project_id, within)
    ours = {r["id"]: r for r in rules if r["scope"] in ({}, {"feature": feature})}
    thresholds: dict[str, list[float]] = {}
    for rule in ours.values():
        if rule["enabled"] and rule["threshold"] is not None:
            thresholds.setdefault(rule["metric"], []).append(float(rule["threshold"]))
    return thresholds, [a for a in fired if a["rule_id"] in ours]


def _rates_figure(series, marks: tuple[dict[str, list[float]], list]) -> go.Figure:
    thresholds, fired_alerts = marks
    fig = components.figure(percent=True)
    x = [p.start for p in series]
    for (metric, label), color in zip(RATE_NAMES.items(), components.PALETTE, strict=False):
        fig.add_scatter(
            x=x, y=[getattr(p, metric) for p in series], name=label, line={"color": color}
        )
        for threshold in thresholds.get(metric, []):
            fig.add_hline(
                y=threshold,
                line={"dash": "dash", "color": color, "width": 1},
                annotation_text=f"{label} alert at {pct(threshold, 0)}",
                annotation_position="top left",
            )
    for fired in fired_alerts:
        fig.add_vrect(
            x0=fired["fired_at"],
            x1=fired["resolved_at"] or series[-1].end,
            fillcolor="#c62828",
            opacity=0.12,
            line_width=0,
            annotation_text="alert",
            annotation_position="top left",
            annotation_hovertext=components.shown(fired["rule_name"]),
        )
    return fig


def _quality_figure(totals: metrics.RoutingMetrics) -> go.Figure:
    routes = [m for m in totals.by_model if m.mean_quality is not None]
    if not routes:
        return components.empty("No quality scores in this period")
    fig = components.figure(y_title="mean quality")
    fig.add_bar(
        x=[components.shown(f"{m.tier} · {m.model}") for m in routes],
        y=[m.mean_quality for m in routes],
        marker_color=[components.TIER_COLORS.get(m.tier, "#607d8b") for m in routes],
        text=[f"{m.mean_quality:.2f} (n={m.quality_count})" for m in routes],
    )
    fig.update_layout(yaxis={"range": [0, 1]}, hovermode="closest")
    return fig


@callback(
    Output(POLICY_MESSAGE, "children"),
    Input(POLICY_SAVE, "n_clicks"),
    State(shell.SWITCHER, "value"),
    State(FEATURE, "value"),
    State({"type": POLICY_SHARE, "tier": ALL}, "value"),
    State({"type": POLICY_SHARE, "tier": ALL}, "id"),
    State(POLICY_FROM, "value"),
    prevent_initial_call=True,
)
def save_policy(_clicks, shown_project, feature, values, ids, effective_from):
    try:
        project = auth.require_admin(shown_project)
    except auth.AccessDenied as refused:
        return components.note(f"Not saved: {refused}.", "error")
    if not feature:
        return components.note("Not saved: choose a feature first.", "error")
    try:
        feature = components.form_value(NAME_VALUE, feature, field="feature")
        split = {i["tier"]: float(v) for i, v in zip(ids, values, strict=True) if v}
    except components.FormRefusal as refused:
        return components.note(f"Not saved: {refused}", "error")
    except (TypeError, ValueError):
        return components.note("Not saved: every share must be a number.", "error")
    try:
        since = (effective_from or "").strip()
        if since:
            since = parse_instant(since, name="effective from").isoformat()
        policy = PolicyIn(split=split, effective_from=since or None)
        saved_from = data.write(
            policies.set_policy, project_id=project.project_id, feature=feature, policy=policy
        )
    except ValidationError as error:
        problems = describe_errors(error.errors(), whole="form")
        return components.note(f"Not saved: {problems}", "error")
    except (InvalidPeriod, policies.InvalidPolicy) as error:
        return components.note(f"Not saved: {error}", "error")
    return components.note(f"Saved: {feature} from {saved_from:%Y-%m-%d %H:%M} UTC.", "ok")


filters.sync_url(URL)
flow.register(dates=DATES, feature=FEATURE)
quality_floors.register(feature=FEATURE)
