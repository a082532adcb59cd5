"""Experiments: the arms of an experiment side by side, each figure with its 95% interval."""

from __future__ import annotations

import dash
from dash import Input, Output, callback, dcc, html
from plotly.subplots import make_subplots

from app.services import dashboard_queries
from dashboards import auth, components, data, filters
from dashboards.formatting import count, number, pct, usd_small

dash.register_page(
    __name__,
    path="/experiments",
    name="Experiments",
    title="Experiments · RouteLedger",
    order=4,
)

DATES = "experiments-dates"
EXPERIMENT = "experiments-experiment"
ARMS = "experiments-arms"
TABLE = "experiments-table"
URL = "experiments-url"

PANELS = (
    ("requests", "requests"),
    ("cost_per_request", "cost per request (USD)"),
    ("escalation_rate", "escalation rate"),
    ("mean_quality", "mean quality"),
)
COLUMNS = [
    {"id": "arm", "name": "arm"},
    {"id": "requests", "name": "requests"},
    {"id": "cost", "name": "cost per request (95% interval)"},
    {"id": "escalation", "name": "escalation rate (95% interval)"},
    {"id": "quality", "name": "mean quality (95% interval)"},
]


def layout(**query):
    project = auth.membership()
    within = filters.period_of(query.get("start"), query.get("end"))
    experiments = list(
        data.read(
            dashboard_queries.filter_values, project_id=project.project_id, within=within
        ).experiments
    )
    chosen = query.get("experiment")
    return html.Div(
        [
            html.H1("Experiments"),
            filters.toolbar(
                filters.date_range(DATES, query),
                dcc.Dropdown(
                    id=EXPERIMENT,
                    options=experiments,
                    value=chosen if chosen in experiments else next(iter(experiments), None),
                    clearable=False,
                    placeholder="no experiment in this period",
                    className="filter",
                ),
            ),
            components.card(
                "Arms side by side",
                html.P(
                    "Bars are the arms' figures, whiskers their 95% intervals (Wilson for the "
                    "escalation rate, normal approximation for the means).",
                    className="muted",
                ),
                components.graph(ARMS),
            ),
            components.card("Figures", components.table(TABLE, COLUMNS, [])),
            filters.url_store(URL),
        ]
    )


@callback(
    Output(ARMS, "figure"),
    Output(TABLE, "data"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(EXPERIMENT, "value"),
)
def update(start_date, end_date, experiment):
    project_id = auth.membership().project_id
    within = filters.period_of(start_date, end_date)
    search = filters.url_search(start=start_date, end=end_date, experiment=experiment)
    arms = (
        data.read(
            dashboard_queries.experiment_arms,
            project_id=project_id,
            within=within,
            experiment=experiment,
        )
        if experiment
        else []
    )
    if not arms:
        return components.empty("No experiment traffic in this period"), [], search
    rows = [
        {
            "arm": a.arm,
            "requests": count(a.requests),
            "cost": _interval(a.cost_per_request, usd_small),
            "escalation": _interval(a.escalation_rate, pct),
            "quality": _interval(a.mean_quality, number) + f" (n={a.quality_count})",
        }
        for a in arms
    ]
    return _arms_figure(arms), rows, search


def _interval(estimate: dashboard_queries.Estimate, shown) -> str:
    if estimate.low is None:
        return shown(estimate.value)
    return f"{shown(estimate.value)} ({shown(estimate.low)} – {shown(estimate.high)})"


def _arms_figure(arms):
    fig = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[t for _, t in PANELS])
    names = [components.shown(a.arm) for a in arms]
    colors = components.PALETTE[: len(arms)]
    for column, (field, _) in enumerate(PANELS, start=1):
        if field == "requests":
            fig.add_bar(
                x=names, y=[a.requests for a in arms], marker_color=colors, row=1, col=column
            )
            continue
        estimates = [getattr(a, field) for a in arms]
        fig.add_bar(
            x=names,
            y=[e.value for e in estimates],
            marker_color=colors,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [(e.high - e.value) if e.low is not None else 0 for e in estimates],
                "arrayminus": [(e.value - e.low) if e.low is not None else 0 for e in estimates],
            },
            row=1,
            col=column,
        )
    fig.update_layout(showlegend=False, height=340, margin={"t": 50, "b": 30})
    return fig


filters.sync_url(URL)
