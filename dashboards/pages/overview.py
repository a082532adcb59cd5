"""Overview: spend, requests, cost per request, savings against the baseline model."""

from __future__ import annotations

import dash
import plotly.graph_objects as go
from dash import Input, Output, callback, html

from app.services import dashboard_queries, metrics
from dashboards import auth, components, data, filters
from dashboards.formatting import count, pct, usd, usd_small

dash.register_page(__name__, path="/", name="Overview", title="Overview · RouteLedger", order=0)

DATES = "overview-dates"
FEATURE = "overview-feature"
KEY_FIGURES = "overview-key-figures"
SPEND = "overview-spend"
REQUESTS = "overview-requests"
NOTES = "overview-notes"
URL = "overview-url"


def layout(**query):
    project = auth.membership()
    within = filters.period_of(query.get("start"), query.get("end"))
    values = data.read(
        dashboard_queries.filter_values, project_id=project.project_id, within=within
    )
    return html.Div(
        [
            html.H1(f"Overview · {project.project_name}"),
            filters.toolbar(
                filters.date_range(DATES, query),
                filters.dropdown(
                    FEATURE, list(values.features), query.get("feature"), "All features"
                ),
            ),
            html.Div(id=KEY_FIGURES, className="key-figures"),
            html.Div(id=NOTES),
            html.Div(
                [
                    components.card("Spend against the baseline model", components.graph(SPEND)),
                    components.card("Requests and cost per request", components.graph(REQUESTS)),
                ],
                className="grid",
            ),
            filters.url_store(URL),
        ]
    )


@callback(
    Output(KEY_FIGURES, "children"),
    Output(NOTES, "children"),
    Output(SPEND, "figure"),
    Output(REQUESTS, "figure"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(FEATURE, "value"),
)
def update(start_date, end_date, feature):
    project_id = auth.membership().project_id
    within = filters.period_of(start_date, end_date)
    scope = metrics.Filters(feature=feature)
    series = data.routing_over_time(project_id, within, scope)
    totals = dashboard_queries.total_of(series)
    lower_bound, at_most = components.bound_notes(totals.unpriced_requests)
    savings_of = f"{pct(totals.savings_pct)} of the baseline {usd(totals.baseline_cost_usd)}"
    key_figures = [
        components.key_figure("Spend", usd(totals.cost_usd), lower_bound),
        components.key_figure("Requests", count(totals.requests)),
        components.key_figure("Cost per request", usd_small(totals.cost_per_request), lower_bound),
        components.key_figure(
            "Savings",
            usd(totals.savings_usd),
            f"{at_most}; {savings_of}" if at_most else savings_of,
        ),
        components.key_figure("Escalation rate", pct(totals.escalation_rate)),
        components.key_figure("Mean quality", pct(totals.mean_quality, 0)),
    ]
    notes = []
    if totals.unpriced_requests:
        notes.append(
            components.note(
                f"{count(totals.unpriced_requests)} requests used a model without a price: "
                "spend is a lower bound. Add the price on the Prices page.",
                "warning",
            )
        )
    if not totals.baseline_known and totals.requests:
        notes.append(
            components.note(
                "Savings are unknown: the project's baseline model has no price for some requests.",
                "warning",
            )
        )
    search = filters.url_search(start=start_date, end=end_date, feature=feature)
    if not totals.requests:
        message = "No requests in this period"
        return key_figures, notes, components.empty(message), components.empty(message), search
    return key_figures, notes, _spend_figure(series), _requests_figure(series), search


def _spend_figure(series) -> go.Figure:
    x = [point.start for point in series]
    fig = components.figure(y_title="USD")
    fig.add_scatter(x=x, y=[float(p.cost_usd) for p in series], name="spend", fill="tozeroy")
    fig.add_scatter(
        x=x,
        y=[float(p.baseline_cost_usd) for p in series],
        name="baseline model",
        line={"dash": "dot"},
    )
    return fig


def _requests_figure(series) -> go.Figure:
    x = [point.start for point in series]
    fig = components.figure(y_title="requests")
    fig.add_bar(x=x, y=[p.requests for p in series], name="requests", marker_color="#9fb9d6")
    fig.add_scatter(
        x=x,
        y=[float(p.cost_per_request) if p.requests else None for p in series],
        name="cost per request (USD)",
        yaxis="y2",
        line={"color": "#ef6c00"},
    )
    fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "rangemode": "tozero"})
    return fig


filters.sync_url(URL)
