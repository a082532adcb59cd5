"""Models: attempts, cost, latency and quality per model; unpriced models flagged, with
the way to price them."""

from __future__ import annotations

from urllib.parse import urlencode

import dash
from dash import Input, Output, callback, dcc, html

from app.services import dashboard_queries, metrics
from dashboards import auth, components, data, filters, model_tiers
from dashboards.components import MONEY
from dashboards.formatting import count, ms, number

dash.register_page(__name__, path="/models", name="Models", title="Models · RouteLedger", order=3)

DATES = "models-dates"
FEATURE = "models-feature"
UNPRICED = "models-unpriced"
TABLE = "models-table"
COST = "models-cost"
URL = "models-url"

COLUMNS = [
    {"id": "model", "name": "model"},
    {"id": "tier", "name": "tier"},
    {"id": "attempts", "name": "attempts", "type": "numeric"},
    {"id": "served", "name": "served", "type": "numeric"},
    {"id": "cost", "name": "cost", "type": "numeric", "format": MONEY},
    {"id": "p50", "name": "latency p50", "type": "text"},
    {"id": "p95", "name": "latency p95", "type": "text"},
    {"id": "quality", "name": "mean quality", "type": "text"},
    {"id": "unpriced_attempts", "name": "unpriced attempts", "type": "numeric"},
]


def layout(**query):
    project = auth.membership()
    within = filters.period_of(query.get("start"), query.get("end"))
    values = data.read(
        dashboard_queries.filter_values, project_id=project.project_id, within=within
    )
    return html.Div(
        [
            html.H1("Models"),
            filters.toolbar(
                filters.date_range(DATES, query),
                filters.dropdown(
                    FEATURE, list(values.features), query.get("feature"), "All features"
                ),
            ),
            html.Div(id=UNPRICED),
            components.card(
                "Per model",
                html.P(
                    "Latency is of the requests the model served; cost of all its attempts.",
                    className="muted",
                ),
                components.table(
                    TABLE,
                    COLUMNS,
                    [],
                    style_data_conditional=[
                        {
                            "if": {"filter_query": "{unpriced_attempts} > 0"},
                            "backgroundColor": "#fff4e5",
                        }
                    ],
                ),
            ),
            components.card("Cost per model", components.graph(COST)),
            model_tiers.section(project),
            filters.url_store(URL),
        ]
    )


@callback(
    Output(UNPRICED, "children"),
    Output(TABLE, "data"),
    Output(COST, "figure"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(FEATURE, "value"),
)
def update(start_date, end_date, feature):
    project_id = auth.membership().project_id
    within = filters.period_of(start_date, end_date)
    scope = metrics.Filters(feature=feature)
    totals, latency = data.together(
        lambda: data.routing_totals(project_id, within, scope),
        lambda: data.read(
            dashboard_queries.served_model_latency,
            project_id=project_id,
            within=within,
            filters=scope,
        ),
    )
    rows = []
    for m in totals.by_model:
        p50, p95 = latency.get(m.model, (None, None)) if m.served else (None, None)
        rows.append(
            {
                "model": m.model,
                "tier": m.tier,
                "attempts": m.attempts,
                "served": m.served,
                "cost": _usd(m.known_cost_usd),
                "p50": ms(p50),
                "p95": ms(p95),
                "quality": number(m.mean_quality),
                "unpriced_attempts": m.unpriced_attempts,
            }
        )
    search = filters.url_search(start=start_date, end=end_date, feature=feature)
    return _unpriced_notes(totals.by_model), rows, _cost_figure(totals.by_model), search


def _usd(amount) -> float | None:
    return None if amount is None else float(amount)


def _unpriced_notes(by_model) -> list:
    unpriced = sorted({m.model for m in by_model if m.unpriced_attempts})
    if not unpriced:
        return []
    return [
        html.Div(
            [
                html.Strong("Unpriced: "),
                f"{', '.join(unpriced)} had attempts with no price, so spend is a lower "
                "bound. Add a price (it applies from its effective date; the re-pricing "
                "job fills in the past): ",
                *[
                    dcc.Link(
                        f"price {model}",
                        href=f"/prices?{urlencode({'model': model})}",
                        className="add-price",
                        style={"marginRight": "1rem"},
                    )
                    for model in unpriced
                ],
            ],
            className="note note-warning",
            id="unpriced-models",
        )
    ]


def _cost_figure(by_model):
    if not by_model:
        return components.empty("No attempts in this period")
    fig = components.figure(y_title="USD")
    fig.add_bar(
        x=[components.shown(m.model) for m in by_model],
        y=[_usd(m.known_cost_usd) for m in by_model],  # no bar for an unknown cost
        marker_color=[components.TIER_COLORS.get(m.tier, "#607d8b") for m in by_model],
        text=[
            f"{count(m.attempts)} attempts" + (" · unpriced" if m.unpriced_attempts else "")
            for m in by_model
        ],
    )
    fig.update_layout(hovermode="closest")
    return fig


filters.sync_url(URL)
