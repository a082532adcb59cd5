"""Small building blocks shared by the pages: figure cards, key figures, tables, notes."""

from __future__ import annotations

import html as html_text
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from dash import dash_table, dcc, html
from dash.dash_table.Format import Format, Scheme, Symbol
from pydantic import TypeAdapter, ValidationError

from app.schemas import describe_errors

# Money in tables: numbers (so columns sort), shown in dollars and cents.
MONEY = Format(precision=2, scheme=Scheme.fixed, group=True, symbol=Symbol.yes, symbol_prefix="$")
TIER_COLORS = {"cheap": "#2e7d32", "standard": "#1565c0", "premium": "#6a1b9a"}
PALETTE = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f", "#5d4037"]
# Every figure's template, once: named in a figure's layout, the template was copied and
# validated whole for each figure (about 11 ms each, and a page draws up to five).
pio.templates.default = "plotly_white"


def card(title: str, *children, class_name: str = "") -> html.Section:
    return html.Section([html.H3(title), *children], className=f"card {class_name}".strip())


def graph(component_id: str) -> dcc.Loading:
    return dcc.Loading(
        dcc.Graph(id=component_id, config={"displaylogo": False}, className="graph"),
        type="dot",
    )


def bound_notes(unpriced_requests: int) -> tuple[str, str]:
    """The notes of a cost, and of a figure less that cost (savings, a margin), while some
    requests are unpriced: their cost is unknown, so the one is a lower bound, the other an
    upper one (DESIGN.md: the cost "is a lower bound and says so")."""
    return ("lower bound", "at most") if unpriced_requests else ("", "")


def key_figure(label: str, value: str, note: str = "", figure_id: str | None = None):
    return html.Div(
        [
            html.Div(label, className="kf-label"),
            html.Div(value, className="kf-value", id=figure_id or f"kf-{_slug(label)}"),
            html.Div(note, className="kf-note"),
        ],
        className="key-figure",
    )


def _slug(label: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def figure(title: str = "", *, y_title: str = "", percent: bool = False) -> go.Figure:
    # The layout given to the constructor: update_layout() on a new figure took 4 ms more.
    return go.Figure(
        layout={
            "title": {"text": title, "x": 0, "font": {"size": 14}},
            "margin": {"l": 50, "r": 20, "t": 40 if title else 10, "b": 40},
            "height": 320,
            "legend": {"orientation": "h", "y": -0.2},
            "yaxis": {
                "title": y_title,
                "tickformat": ".0%" if percent else None,
                "rangemode": "tozero",
            },
            "hovermode": "x unified",
        }
    )


class FormRefusal(ValueError):
    """A form's value the API would refuse; the message names the field."""


def form_value(adapter: TypeAdapter, value: Any, *, field: str) -> Any:
    """`value` as the API takes it (app.schemas.NAME_VALUE, ID_VALUE), else FormRefusal: the
    forms are callbacks any signed-in browser can call with values of its own."""
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        raise FormRefusal(describe_errors(error.errors(), whole=field)) from None


def shown(text: str) -> str:
    """Text from the events (a model, a tier, an arm, a feature) as a figure shows it: Plotly
    draws `<a href>`, `<b>` and the like in labels, so a model named with a link would be a
    link in every chart; escaped, it is shown as written (Plotly turns &lt; back into <)."""
    return html_text.escape(text, quote=False)


def empty(message: str) -> go.Figure:
    fig = figure()
    fig.update_layout(
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[{"text": message, "showarrow": False, "font": {"size": 14, "color": "#666"}}],
    )
    return fig


def table(
    component_id: str, columns: list[dict], rows: list[dict], **options
) -> dash_table.DataTable:
    return dash_table.DataTable(
        id=component_id,
        columns=columns,
        data=rows,
        sort_action="native",
        page_size=options.pop("page_size", 25),
        style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "inherit", "fontSize": 13, "padding": "4px 8px"},
        style_header={"fontWeight": "600", "backgroundColor": "#f4f6f8"},
        **options,
    )


def note(text: str, kind: str = "info") -> html.Div:
    return html.Div(text, className=f"note note-{kind}", role="status")


def tier_order(*splits: dict) -> list[str]:
    """The tiers named in any of these splits or counts, cheapest first."""
    seen = {tier for split in splits for tier in split}
    return [t for t in TIER_COLORS if t in seen] + sorted(seen - set(TIER_COLORS))
