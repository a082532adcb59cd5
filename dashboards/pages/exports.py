"""Exports: the finance CSVs for a chosen period."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlencode

import dash
from dash import Input, Output, callback, dcc, html

from app.services import metrics
from dashboards import auth, components, data, downloads, filters
from dashboards.formatting import count, usd

dash.register_page(
    __name__, path="/exports", name="Exports", title="Exports · RouteLedger", order=8
)

DATES = "exports-dates"
GRANULARITY = "exports-granularity"
TOTALS = "exports-totals"
CUSTOMERS_LINK = "exports-customers-link"
REQUESTS_LINK = "exports-requests-link"
URL = "exports-url"


def layout(**query):
    granularity = query.get("granularity") if query.get("granularity") == "month" else "day"
    return html.Div(
        [
            html.H1("Exports"),
            filters.toolbar(
                filters.date_range(DATES, query),
                dcc.RadioItems(
                    id=GRANULARITY,
                    options=[
                        {"label": " per day", "value": "day"},
                        {"label": " per month", "value": "month"},
                    ],
                    value=granularity,
                    inline=True,
                    inputStyle={"marginLeft": "1rem"},
                ),
            ),
            html.Div(id=TOTALS, className="key-figures"),
            components.card(
                "Download",
                html.P(
                    "Customers: cost, revenue and margin per customer and period, money to 6 "
                    "places (rounded after summing). Requests: one row per request, at full "
                    "precision. Times are UTC; the last day is included.",
                    className="muted",
                ),
                html.Div(
                    [
                        html.A("Customers CSV", id=CUSTOMERS_LINK, className="button", download=""),
                        html.A("Requests CSV", id=REQUESTS_LINK, className="button", download=""),
                    ],
                    className="form-row",
                ),
            ),
            filters.url_store(URL),
        ]
    )


@callback(
    Output(TOTALS, "children"),
    Output(CUSTOMERS_LINK, "href"),
    Output(REQUESTS_LINK, "href"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(GRANULARITY, "value"),
)
def update(start_date, end_date, granularity):
    project = auth.membership()
    within = filters.period_of(start_date, end_date)
    customers = data.read(metrics.customer_metrics, project_id=project.project_id, within=within)
    cost = sum((c.cost_usd for c in customers), Decimal(0))
    revenue = sum((c.total_revenue_usd for c in customers), Decimal(0))
    lower_bound, at_most = components.bound_notes(sum(c.unpriced_requests for c in customers))
    totals = [
        components.key_figure("Requests", count(sum(c.requests for c in customers))),
        components.key_figure("Cost", usd(cost), lower_bound, figure_id="exports-total-cost"),
        components.key_figure("Revenue", usd(revenue), figure_id="exports-total-revenue"),
        components.key_figure("Margin", usd(revenue - cost), at_most),
    ]
    # The project too: the download is of this page's project, whatever another tab chose since.
    period = {auth.PROJECT_PARAM: project.project_name, "start": start_date, "end": end_date}
    return (
        totals,
        f"{downloads.CUSTOMERS_PATH}?{urlencode({**period, 'granularity': granularity})}",
        f"{downloads.REQUESTS_PATH}?{urlencode(period)}",
        filters.url_search(start=start_date, end=end_date, granularity=granularity),
    )


filters.sync_url(URL)
