"""One customer: cost, revenue and margin over time, and how its requests were served."""

from __future__ import annotations

from decimal import Decimal

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dcc, html

from app.periods import Period
from app.services import dashboard_queries, metrics
from dashboards import auth, components, data, filters
from dashboards.formatting import count, pct, usd

dash.register_page(
    __name__,
    path_template="/customers/<customer_id>",
    name="Customer",
    title="Customer · RouteLedger",
    nav=False,
)

DATES = "customer-dates"
CUSTOMER = "customer-id"
SUMMARY = "customer-summary"
MONEY = "customer-money"
MIX = "customer-mix"
URL = "customer-url"


def layout(customer_id: str = "", **query):
    return html.Div(
        [
            dcc.Link("← all customers", href="/customers", className="muted"),
            html.H1(f"Customer {customer_id}"),
            dcc.Store(id=CUSTOMER, data=customer_id),
            filters.toolbar(filters.date_range(DATES, query)),
            html.Div(id=SUMMARY, className="key-figures"),
            html.Div(
                [
                    components.card("Cost and revenue over time", components.graph(MONEY)),
                    components.card("Served tiers over time", components.graph(MIX)),
                ],
                className="grid",
            ),
            filters.url_store(URL),
        ]
    )


@callback(
    Output(SUMMARY, "children"),
    Output(MONEY, "figure"),
    Output(MIX, "figure"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    State(CUSTOMER, "data"),
)
def update(start_date, end_date, customer_id):
    project_id = auth.membership().project_id
    within = filters.period_of(start_date, end_date)
    search = filters.url_search(start=start_date, end=end_date)
    found, series, records = data.together(
        lambda: data.read(
            metrics.customer_metrics, project_id=project_id, within=within, customer_id=customer_id
        ),
        lambda: data.over_time(
            dashboard_queries.customer_series, project_id, within, customer_id=customer_id
        ),
        lambda: data.read(
            metrics.revenue_records, project_id=project_id, within=within, customer_id=customer_id
        ),
    )
    if not found:
        nothing = components.empty(f"No requests or revenue of {customer_id} in this period")
        return [], nothing, nothing, search
    customer = found[0]
    summary = [
        components.key_figure("Requests", count(customer.requests)),
        components.key_figure("Cost", usd(customer.cost_usd)),
        components.key_figure("Revenue", usd(customer.total_revenue_usd)),
        components.key_figure(
            "Margin",
            usd(customer.margin_usd),
            f"{pct(customer.margin_pct)} of revenue" if customer.margin_pct is not None else "",
        ),
        components.key_figure("Unpriced requests", count(customer.unpriced_requests)),
    ]
    return summary, _money_figure(series, _revenue(series, records)), _mix_figure(series), search


def _revenue(series, records) -> list[Decimal]:
    """Each point's revenue: its per-request revenue and its share of the revenue records
    (prorated as the customer metrics do)."""
    return [
        sum(
            (
                metrics.prorated(
                    r.amount_usd,
                    record=Period(r.period_start, r.period_end),
                    within=Period(p.start, p.end),
                )
                for r in records
            ),
            p.revenue_usd,
        )
        for p in series
    ]


def _money_figure(series, revenue: list[Decimal]) -> go.Figure:
    x = [p.start for p in series]
    fig = components.figure(y_title="USD")
    fig.add_bar(x=x, y=[float(p.cost_usd) for p in series], name="cost", marker_color="#ef6c00")
    fig.add_scatter(x=x, y=[float(r) for r in revenue], name="revenue", line={"color": "#2e7d32"})
    margin, running = [], Decimal(0)
    for point, earned in zip(series, revenue, strict=True):
        running += earned - point.cost_usd
        margin.append(float(running))
    fig.add_scatter(x=x, y=margin, name="margin so far", line={"dash": "dot", "color": "#1d2733"})
    fig.update_layout(yaxis={"rangemode": "normal"})
    return fig


def _mix_figure(series) -> go.Figure:
    fig = components.figure(y_title="requests")
    x = [p.start for p in series]
    for tier in components.tier_order(*(p.served_counts for p in series)):
        fig.add_bar(
            x=x,
            y=[p.served_counts.get(tier, 0) for p in series],
            name=components.shown(tier),
            marker_color=components.TIER_COLORS.get(tier),
        )
    fig.update_layout(barmode="stack")
    return fig


filters.sync_url(URL)
