"""Customers: cost, revenue and margin per customer, the money-losing ones first."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import quote

import dash
from dash import Input, Output, callback, dash_table, html
from dash.dash_table.Format import Format, Scheme

from app.services import metrics
from dashboards import auth, components, data, filters
from dashboards.components import MONEY
from dashboards.formatting import count, usd

dash.register_page(
    __name__, path="/customers", name="Customers", title="Customers · RouteLedger", order=2
)

DATES = "customers-dates"
TOTALS = "customers-totals"
TABLE = "customers-table"
URL = "customers-url"

_PERCENT = Format(precision=1, scheme=Scheme.percentage)
COLUMNS = [
    {"id": "customer", "name": "customer", "presentation": "markdown"},
    {"id": "requests", "name": "requests", "type": "numeric"},
    {"id": "cost_usd", "name": "cost", "type": "numeric", "format": MONEY},
    {"id": "revenue_usd", "name": "revenue", "type": "numeric", "format": MONEY},
    {"id": "margin_usd", "name": "margin", "type": "numeric", "format": MONEY},
    {"id": "margin_pct", "name": "margin %", "type": "numeric", "format": _PERCENT},
    {"id": "unpriced_requests", "name": "unpriced requests", "type": "numeric"},
]


def layout(**query):
    return html.Div(
        [
            html.H1("Customers"),
            filters.toolbar(filters.date_range(DATES, query)),
            html.Div(id=TOTALS, className="key-figures"),
            components.card(
                "Margin per customer",
                html.P(
                    "Sort by any column; filter with the row under the header (e.g. `< 0` "
                    "under margin). Negative margins are red.",
                    className="muted",
                ),
                dash_table.DataTable(
                    id=TABLE,
                    columns=COLUMNS,
                    data=[],
                    sort_action="native",
                    filter_action="native",
                    filter_query=query.get("filter", ""),
                    page_size=50,
                    markdown_options={"link_target": "_self"},
                    style_cell={"fontFamily": "inherit", "fontSize": 13, "padding": "4px 8px"},
                    style_header={"fontWeight": "600", "backgroundColor": "#f4f6f8"},
                    style_data_conditional=[
                        {
                            "if": {"filter_query": "{margin_usd} < 0"},
                            "backgroundColor": "#fdecea",
                            "color": "#b00020",
                        }
                    ],
                ),
            ),
            filters.url_store(URL),
        ]
    )


@callback(
    Output(TOTALS, "children"),
    Output(TABLE, "data"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(TABLE, "filter_query"),
)
def update(start_date, end_date, table_filter):
    project_id = auth.membership().project_id
    within = filters.period_of(start_date, end_date)
    customers = data.read(metrics.customer_metrics, project_id=project_id, within=within)
    rows = [
        {
            "customer": _link(c.customer_id),
            "customer_id": c.customer_id,
            "requests": c.requests,
            "cost_usd": float(c.cost_usd),
            "revenue_usd": float(c.total_revenue_usd),
            "margin_usd": float(c.margin_usd),
            "margin_pct": None if c.margin_pct is None else float(c.margin_pct),
            "unpriced_requests": c.unpriced_requests,
        }
        for c in customers
    ]
    cost = sum((c.cost_usd for c in customers), Decimal(0))
    revenue = sum((c.total_revenue_usd for c in customers), Decimal(0))
    losing = [c.customer_id for c in customers if c.margin_usd < 0]
    lower_bound, at_most = components.bound_notes(sum(c.unpriced_requests for c in customers))
    totals = [
        components.key_figure("Customers", count(len(customers))),
        components.key_figure("Cost", usd(cost), lower_bound, figure_id="customers-total-cost"),
        components.key_figure("Revenue", usd(revenue)),
        components.key_figure("Margin", usd(revenue - cost), at_most),
        components.key_figure(
            "Negative margin", count(len(losing)), ", ".join(losing[:4]) if losing else ""
        ),
    ]
    search = filters.url_search(start=start_date, end=end_date, filter=table_filter)
    return totals, rows, search


def _link(customer_id: str) -> str:
    """A Markdown link to the customer's page; the id is data from the events, so it is
    escaped in the label and quoted in the path (it can never make another kind of link)."""
    label = "".join(f"\\{c}" if c in _MARKDOWN_SPECIAL else c for c in customer_id)
    return f"[{label}](/customers/{quote(customer_id, safe='')})"


_MARKDOWN_SPECIAL = set("\\`*_[]()<>!|~")


filters.sync_url(URL)
