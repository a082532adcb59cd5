"""The Routing page's routing flow: a Sankey diagram of the period's requests from the tier
the router intended, through the first attempt's model, to the model that served them (or
to failed)."""

from __future__ import annotations

from collections import Counter

import plotly.graph_objects as go
from dash import Input, Output, callback

from app.services import dashboard_queries
from dashboards import auth, components, data, filters

FLOW = "routing-flow"
FAILED = "failed"


def card():
    return components.card(
        "Routing flow",
        components.note(
            "Intended tier → the first attempt's model → the model that served the request "
            "(or failed). A band that changes model on the way is a fallback or an escalation."
        ),
        components.graph(FLOW),
    )


def register(*, dates: str, feature: str) -> None:
    """The callback that draws the flow for the page's period and feature."""
    callback(
        Output(FLOW, "figure"),
        Input(dates, "start_date"),
        Input(dates, "end_date"),
        Input(feature, "value"),
    )(update_flow)


def update_flow(start_date, end_date, chosen):
    links = data.read(
        dashboard_queries.routing_flow,
        project_id=auth.membership().project_id,
        within=filters.period_of(start_date, end_date),
        feature=chosen,
    )
    return figure(links)


def figure(links: list[dashboard_queries.FlowLink]) -> go.Figure:
    if not links:
        return components.empty("No traffic in this period")
    first, then = Counter(), Counter()
    for link in links:
        first[(f"intended {link.intended_tier}", f"first: {link.first_model}")] += link.requests
        served = f"served: {link.served_model}" if link.served_model else FAILED
        then[(f"first: {link.first_model}", served)] += link.requests
    labels = list(dict.fromkeys(name for pair in (*first, *then) for name in pair))
    index = {label: i for i, label in enumerate(labels)}
    pairs = [*first.items(), *then.items()]
    fig = go.Figure(
        go.Sankey(
            arrangement="snap",
            node={
                "label": [components.shown(label) for label in labels],
                "pad": 14,
                "thickness": 16,
                "color": [_color(label) for label in labels],
            },
            link={
                "source": [index[a] for (a, _), _n in pairs],
                "target": [index[b] for (_, b), _n in pairs],
                "value": [n for _, n in pairs],
            },
            valueformat=",d",
            valuesuffix=" requests",
        )
    )
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def _color(label: str) -> str:
    if label == FAILED:
        return "#c62828"
    tier = label.removeprefix("intended ")
    return components.TIER_COLORS.get(tier, "#607d8b")
