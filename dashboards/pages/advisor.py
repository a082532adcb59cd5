"""Advisor: per feature and task type, the cheapest tier that meets the quality floor and
what moving there saves, first; a click on a row shows the evidence behind it (each tier's
pass rate relative to the reference, with its 95% interval and cases, and its cost); the
advice as CSV; and the router's calibration (reliability curve, error per week)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dcc, html

from app.periods import utc_now
from app.services import advice, calibration, dashboard_queries, exports
from dashboards import auth, components, data, filters
from dashboards.components import MONEY
from dashboards.formatting import count, pct, usd, usd_small

dash.register_page(
    __name__, path="/advisor", name="Advisor", title="Advisor · RouteLedger", order=1.5
)

DATES = "advisor-dates"
FEATURE = "advisor-feature"
SUMMARY = "advisor-summary"
TABLE = "advisor-table"
EVIDENCE = "advisor-evidence"
DOWNLOAD = "advisor-download"
DOWNLOAD_BUTTON = "advisor-download-button"
RELIABILITY = "advisor-reliability"
WEEKLY = "advisor-weekly-error"
URL = "advisor-url"
# The evidence period shown first: the 30 days the costs come from.
DEFAULT_DAYS = advice.TRAFFIC_WINDOW.days

COLUMNS = [
    {"id": "feature", "name": "feature"},
    {"id": "task_type", "name": "task type"},
    {"id": "recommended", "name": "recommended tier"},
    {"id": "savings", "name": "savings / 30 days", "type": "numeric", "format": MONEY},
    {"id": "expected", "name": "expected pass rate (95% interval)"},
    {"id": "cost", "name": "cost / 30 days", "type": "numeric", "format": MONEY},
    {"id": "requests", "name": "requests / 30 days", "type": "numeric"},
    {"id": "evidence", "name": "evidence"},
]
TIER_COLUMNS = [
    {"id": "tier", "name": "tier"},
    {"id": "model", "name": "model"},
    {"id": "cases", "name": "cases", "type": "numeric"},
    {"id": "relative", "name": "relative pass rate (95% interval)"},
    {"id": "pass_rate", "name": "pass rate"},
    {"id": "cost", "name": "cost per request"},
    {"id": "meets", "name": "meets the floor"},
]


def layout(**query):
    project = auth.membership()
    default_start = (utc_now() - timedelta(days=DEFAULT_DAYS - 1)).date().isoformat()
    query = {"start": default_start, **query}
    within = filters.period_of(query.get("start"), query.get("end"))
    values = data.read(
        dashboard_queries.filter_values, project_id=project.project_id, within=within
    )
    return html.Div(
        [
            html.H1("Advisor"),
            filters.toolbar(
                filters.date_range(DATES, query),
                filters.dropdown(
                    FEATURE, list(values.features), query.get("feature"), "All features"
                ),
            ),
            html.Div(id=SUMMARY, className="key-figures"),
            components.card(
                "Recommendations",
                html.P(
                    "Per feature and task type, the cheapest tier whose pass rate relative to "
                    "the reference tier has a 95% lower bound at the target, on at least "
                    f"{advice.MIN_CASES} cases. Savings: the last 30 days of traffic, priced "
                    "now. Click a row for its evidence.",
                    className="muted",
                ),
                components.table(
                    TABLE,
                    COLUMNS,
                    [],
                    style_data_conditional=[
                        {
                            "if": {"filter_query": "{savings} > 0"},
                            "backgroundColor": "#e8f5e9",
                        }
                    ],
                ),
                html.Div(
                    [
                        html.Button(
                            "Download the advice (CSV)", id=DOWNLOAD_BUTTON, className="button"
                        ),
                        dcc.Download(id=DOWNLOAD),
                    ],
                    className="form-row",
                ),
            ),
            html.Div(id=EVIDENCE),
            components.card(
                "Router calibration",
                html.P(
                    "Of the requests with a router confidence: per tenth of confidence, the "
                    "share whose first attempt was accepted (not rejected, not escalated). On "
                    "the diagonal, the router is as sure as it is right. The expected "
                    "calibration error weighs each bin's gap by its requests.",
                    className="muted",
                ),
                html.Div(
                    [components.graph(RELIABILITY), components.graph(WEEKLY)],
                    className="grid",
                ),
            ),
            filters.url_store(URL),
        ]
    )


def _advice(project_id: int, start_date, end_date, feature) -> advice.Advice:
    within = filters.period_of(start_date, end_date)
    return data.read(advice.routing_advice, project_id=project_id, within=within, feature=feature)


def _segment_id(segment: advice.SegmentAdvice) -> str:
    return f"{segment.feature}\x1f{segment.task_type or ''}"


def _interval(estimate) -> str:
    if estimate.value is None:
        return "–"
    if estimate.low is None:
        return pct(estimate.value)
    return f"{pct(estimate.value)} ({pct(estimate.low)} – {pct(estimate.high)})"


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


@callback(
    Output(SUMMARY, "children"),
    Output(TABLE, "data"),
    Output(TABLE, "active_cell"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(FEATURE, "value"),
)
def update(start_date, end_date, feature):
    project_id = auth.membership().project_id
    found = _advice(project_id, start_date, end_date, feature)
    # Recommendations first: the largest savings at the top, insufficient evidence last.
    segments = sorted(
        found.segments,
        key=lambda s: (
            s.recommended_tier == advice.INSUFFICIENT_EVIDENCE,
            -(s.projected_savings_usd or 0),
            s.feature,
            s.task_type or "",
        ),
    )
    rows = [
        {
            "id": _segment_id(s),
            "feature": s.feature,
            "task_type": s.task_type or "(none)",
            "recommended": s.recommended_tier.replace("_", " "),
            "savings": _money(s.projected_savings_usd),
            "expected": _interval(s.expected_pass_rate),
            "cost": _money(s.cost_usd),
            "requests": s.requests,
            "evidence": s.evidence or "none",
        }
        for s in segments
    ]
    saving = [s.projected_savings_usd for s in segments if (s.projected_savings_usd or 0) > 0]
    summary = [
        components.key_figure(
            "Projected savings",
            usd(sum(saving, Decimal(0))),
            "per 30 days, if every recommendation is followed",
            figure_id="advisor-savings",
        ),
        components.key_figure("Segments", count(len(segments))),
        components.key_figure("Saving money", count(len(saving))),
        components.key_figure(
            "Insufficient evidence",
            count(sum(s.recommended_tier == advice.INSUFFICIENT_EVIDENCE for s in segments)),
        ),
    ]
    search = filters.url_search(start=start_date, end=end_date, feature=feature)
    return summary, rows, None, search


@callback(
    Output(EVIDENCE, "children"),
    Input(TABLE, "active_cell"),
    State(DATES, "start_date"),
    State(DATES, "end_date"),
    State(FEATURE, "value"),
)
def evidence(active_cell, start_date, end_date, feature):
    if not active_cell:
        return components.note("Click a recommendation to see the evidence behind it.")
    project_id = auth.membership().project_id
    found = _advice(project_id, start_date, end_date, feature)
    segment = next((s for s in found.segments if _segment_id(s) == active_cell["row_id"]), None)
    if segment is None:
        return components.note("That segment is not in this period any more.", "warning")
    name = segment.feature + (f" / {segment.task_type}" if segment.task_type else "")
    source = {
        advice.OFFLINE: "offline evaluation results: the tiers scored on the same items",
        advice.ONLINE: "online quality scores of the requests each tier served (the "
        "router chose them, so the tiers answered different requests)",
    }.get(segment.evidence, "no evidence yet: no scored requests and no evaluation results")
    floor = segment.floor
    return components.card(
        f"Evidence: {name}",
        html.P(
            f"From {source}. A case passes from a score of {floor.pass_score}; a tier meets "
            f"the floor when its relative pass rate's lower bound is at least "
            f"{pct(floor.target, 0)} of the reference ({segment.reference_tier or 'none'}).",
            className="muted",
        ),
        dcc.Graph(
            id=f"{EVIDENCE}-graph",
            figure=_evidence_figure(segment),
            config={"displaylogo": False},
            className="graph",
        ),
        components.table(
            f"{EVIDENCE}-tiers",
            TIER_COLUMNS,
            [
                {
                    "tier": t.tier,
                    "model": t.model,
                    "cases": t.cases,
                    "relative": _interval(t.relative),
                    "pass_rate": _interval(t.pass_rate),
                    "cost": usd_small(t.cost_per_request),
                    "meets": "yes" if t.meets_target else "no",
                }
                for t in segment.tiers
            ],
        ),
    )


def _evidence_figure(segment: advice.SegmentAdvice) -> go.Figure:
    tiers = [t for t in segment.tiers if t.relative.value is not None]
    if not tiers:
        return components.empty("No tier has evidence relative to a reference yet")
    fig = components.figure(y_title="pass rate relative to the reference", percent=True)
    fig.add_bar(
        x=[components.shown(f"{t.tier} · {t.model}") for t in tiers],
        y=[t.relative.value for t in tiers],
        marker_color=[components.TIER_COLORS.get(t.tier, "#607d8b") for t in tiers],
        error_y={
            "type": "data",
            "symmetric": False,
            "array": [min(t.relative.high, 2.0) - t.relative.value for t in tiers],
            "arrayminus": [t.relative.value - t.relative.low for t in tiers],
        },
        text=[f"n={t.cases}" for t in tiers],
    )
    fig.add_hline(
        y=float(segment.floor.target),
        line={"dash": "dash", "color": "#c62828", "width": 1},
        annotation_text=f"target {pct(segment.floor.target, 0)}",
        annotation_position="bottom right",
    )
    top = max(1.1, *(min(t.relative.high, 2.0) + 0.05 for t in tiers))
    fig.update_layout(hovermode="closest", showlegend=False, yaxis={"range": [0, top]})
    return fig


@callback(
    Output(RELIABILITY, "figure"),
    Output(WEEKLY, "figure"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(FEATURE, "value"),
)
def router_calibration(start_date, end_date, feature):
    project_id = auth.membership().project_id
    found = data.read(
        calibration.router_calibration,
        project_id=project_id,
        within=filters.period_of(start_date, end_date),
        feature=feature,
    )
    if not found.overall.bins:
        nothing = components.empty("No request carried a router confidence in this period")
        return nothing, nothing
    bins = found.overall.bins
    ece = found.overall.expected_calibration_error
    reliability = components.figure(
        f"Expected calibration error {ece:.3f} over the period",
        y_title="first attempt accepted",
        percent=True,
    )
    reliability.add_scatter(
        x=[0, 1], y=[0, 1], mode="lines", name="calibrated",
        line={"dash": "dot", "color": "#9aa9b8"},
    )  # fmt: skip
    rates = [b.accepted_rate for b in bins]
    reliability.add_scatter(
        x=[b.mean_confidence for b in bins],
        y=[r.value for r in rates],
        mode="lines+markers",
        name="router",
        error_y={
            "type": "data",
            "symmetric": False,
            "array": [r.high - r.value for r in rates],
            "arrayminus": [r.value - r.low for r in rates],
        },
        text=[f"{b.low:.1f}–{b.high:.1f}: {b.requests:,} requests" for b in bins],
    )
    reliability.update_layout(
        xaxis={"title": "mean router confidence", "range": [0, 1]},
        yaxis={"range": [0, 1.05]},
        hovermode="closest",
    )
    weekly = components.figure("Per week", y_title="expected calibration error")
    weekly.add_bar(
        x=[week for week, _ in found.weeks],
        y=[c.expected_calibration_error for _, c in found.weeks],
        text=[f"{c.requests:,} requests" for _, c in found.weeks],
        marker_color=components.PALETTE[0],
    )
    weekly.update_layout(xaxis={"title": "week (from Monday, UTC)"}, hovermode="closest")
    return reliability, weekly


@callback(
    Output(DOWNLOAD, "data"),
    Input(DOWNLOAD_BUTTON, "n_clicks"),
    State(DATES, "start_date"),
    State(DATES, "end_date"),
    State(FEATURE, "value"),
    prevent_initial_call=True,
)
def download(_clicks, start_date, end_date, feature):
    project = auth.membership()
    found = _advice(project.project_id, start_date, end_date, feature)
    period = f"{found.within.start:%Y-%m-%d}-to-{found.within.end:%Y-%m-%d}"
    name = f"{project.project_name}-advice-{period}.csv"
    return {"content": exports.advice_csv(found).decode(), "filename": name}


filters.sync_url(URL)
