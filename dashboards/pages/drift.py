"""Drift: PSI per feature over time, and the current distribution against the reference."""

from __future__ import annotations

import dash
from dash import Input, Output, callback, dcc, html

from app.services import dashboard_queries
from dashboards import auth, components, data, filters

dash.register_page(__name__, path="/drift", name="Drift", title="Drift · RouteLedger", order=5)

DATES = "drift-dates"
DIMENSION = "drift-dimension"
FEATURE = "drift-feature"
PSI = "drift-psi"
DISTRIBUTIONS = "drift-distributions"
URL = "drift-url"

DIMENSIONS = {
    "tier": "tier split",
    "confidence": "router confidence",
    "input_tokens": "input tokens (log2 buckets)",
}
MODERATE, SIGNIFICANT = 0.1, 0.25


def layout(**query):
    project = auth.membership()
    within = filters.period_of(query.get("start"), query.get("end"))
    features = list(
        data.read(
            dashboard_queries.filter_values, project_id=project.project_id, within=within
        ).features
    )
    dimension = query.get("dimension") if query.get("dimension") in DIMENSIONS else "tier"
    return html.Div(
        [
            html.H1("Drift"),
            filters.toolbar(
                filters.date_range(DATES, query),
                dcc.Dropdown(
                    id=DIMENSION,
                    options=[{"label": v, "value": k} for k, v in DIMENSIONS.items()],
                    value=dimension,
                    clearable=False,
                    className="filter",
                ),
                filters.dropdown(FEATURE, features, query.get("feature"), "Feature to inspect"),
            ),
            components.card(
                "PSI per feature",
                html.P(
                    "The last 24 hours against the 7 days before, computed hourly. Below 0.1 "
                    "stable, 0.1–0.25 moderate, above 0.25 significant.",
                    className="muted",
                ),
                components.graph(PSI),
            ),
            components.card(
                "Current against reference distribution (latest window)",
                components.graph(DISTRIBUTIONS),
            ),
            filters.url_store(URL),
        ]
    )


@callback(
    Output(PSI, "figure"),
    Output(DISTRIBUTIONS, "figure"),
    Output(FEATURE, "value"),
    Output(URL, "data"),
    Input(DATES, "start_date"),
    Input(DATES, "end_date"),
    Input(DIMENSION, "value"),
    Input(FEATURE, "value"),
)
def update(start_date, end_date, dimension, feature):
    project_id = auth.membership().project_id
    within = filters.period_of(start_date, end_date)
    results = [
        r
        for r in data.read(dashboard_queries.drift_history, project_id=project_id, within=within)
        if r["dimension"] == dimension
    ]
    if not results:
        nothing = components.empty(
            "No drift results in this period yet (the drift job runs hourly)"
        )
        search = filters.url_search(start=start_date, end=end_date, dimension=dimension)
        return nothing, nothing, feature, search
    by_feature: dict[str, list[dict]] = {}
    for result in results:
        by_feature.setdefault(result["feature"], []).append(result)
    if feature not in by_feature:  # the most drifted feature now
        feature = max(by_feature, key=lambda f: by_feature[f][-1]["psi"])
    search = filters.url_search(
        start=start_date, end=end_date, dimension=dimension, feature=feature
    )
    return _psi_figure(by_feature), _distribution_figure(by_feature[feature][-1]), feature, search


def _psi_figure(by_feature):
    fig = components.figure(y_title="PSI")
    for (name, points), color in zip(
        sorted(by_feature.items()), components.PALETTE * 4, strict=False
    ):
        fig.add_scatter(
            x=[p["window_end"] for p in points],
            y=[p["psi"] for p in points],
            name=components.shown(name),
            line={"color": color},
        )
    for level, label in ((MODERATE, "moderate"), (SIGNIFICANT, "significant")):
        fig.add_hline(
            y=level,
            line={"dash": "dash", "color": "#c62828" if level == SIGNIFICANT else "#ef6c00"},
            annotation_text=label,
            annotation_position="top left",
        )
    return fig


def _distribution_figure(latest):
    current, reference = latest["current_distribution"], latest["reference_distribution"]
    bins = sorted(set(current) | set(reference), key=_bin_order)
    fig = components.figure(
        f"{components.shown(latest['feature'])} · window ending "
        f"{latest['window_end']:%Y-%m-%d %H:%M} UTC · PSI {latest['psi']:.3f}",
        y_title="share",
        percent=True,
    )
    labels = [components.shown(b) for b in bins]
    fig.add_bar(
        x=labels,
        y=[reference.get(b, 0.0) for b in bins],
        name="reference (7 days)",
        marker_color="#9fb9d6",
    )
    fig.add_bar(
        x=labels,
        y=[current.get(b, 0.0) for b in bins],
        name="current (24 hours)",
        marker_color="#1565c0",
    )
    fig.update_layout(barmode="group", hovermode="closest", xaxis={"type": "category"})
    return fig


def _bin_order(name: str):
    """Tiers cheapest first; numeric bins by their number."""
    if name in components.TIER_COLORS:
        return (0, list(components.TIER_COLORS).index(name), name)
    digits = "".join(c for c in name.split("-")[0] if c.isdigit() or c == ".")
    try:
        return (1, float(digits), name)
    except ValueError:
        return (2, 0.0, name)
