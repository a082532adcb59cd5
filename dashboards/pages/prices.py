"""Prices: the shared catalog and the project's own prices, each with its effective date;
admins add a price here (for an unpriced model, or a negotiated one)."""

from __future__ import annotations

from datetime import UTC, datetime

import dash
from dash import Input, Output, State, callback, dcc, html
from pydantic import ValidationError

from app.periods import utc_now
from app.schemas import PriceIn, describe_errors
from app.services import pricing
from dashboards import auth, components, data, shell

dash.register_page(__name__, path="/prices", name="Prices", title="Prices · RouteLedger", order=7)

OWN = "prices-own"
CATALOG = "prices-catalog"
FIELDS = {
    "model": "model",
    "provider": "provider (optional)",
    "input_per_mtok": "input $/Mtok",
    "output_per_mtok": "output $/Mtok",
    "cache_read_per_mtok": "cache read $/Mtok",
    "cache_write_per_mtok": "cache write $/Mtok",
    "effective_from": "effective from (UTC)",
}
SAVE = "prices-save"
MESSAGE = "prices-message"

COLUMNS = [
    {"id": name, "name": name.replace("_", " ")}
    for name in (
        "model",
        "provider",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "effective_from",
        "source",
    )
]


def field_id(name: str) -> str:
    return f"prices-{name.replace('_', '-')}"


def layout(model: str = "", **_query):
    project = auth.membership()
    return html.Div(
        [
            html.H1("Prices"),
            html.P(
                "USD per million tokens. A price applies to requests from its effective date "
                "on; a project's own price overrides the catalog's. A missing cache price "
                "falls back to the input price.",
                className="muted",
            ),
            _add_form(project, model),
            components.card(
                f"Prices of {project.project_name}",
                components.table(OWN, COLUMNS, [], page_size=15),
            ),
            components.card(
                "Catalog",
                html.Div(id="catalog-version", className="muted"),
                components.table(CATALOG, COLUMNS, [], page_size=15, filter_action="native"),
            ),
        ]
    )


def _add_form(project, model: str) -> html.Section:
    defaults = {"model": model, "effective_from": "2000-01-01T00:00" if model else ""}
    return components.card(
        "Add a price",
        html.P(
            "Leave the effective date empty for now. For a model that was unpriced, a date "
            "in the past prices its earlier requests too (through the re-pricing job)."
            if project.is_admin
            else "Only admins of this project can add prices.",
            className="muted",
        ),
        html.Div(
            [
                html.Label(
                    [
                        label,
                        dcc.Input(
                            id=field_id(name),
                            type="text",
                            value=defaults.get(name, ""),
                            debounce=True,
                        ),
                    ]
                )
                for name, label in FIELDS.items()
            ],
            className="form-row",
        ),
        html.Button("Add price", id=SAVE, className="button", disabled=not project.is_admin),
        html.Div(id=MESSAGE),
    )


@callback(
    Output(OWN, "data"),
    Output(CATALOG, "data"),
    Output("catalog-version", "children"),
    Input(MESSAGE, "children"),
)
def update(_saved):
    project_id = auth.membership().project_id
    rows = data.read(pricing.list_prices, project_id=project_id)
    version = data.read(pricing.catalog_version)
    own = [_row(r) for r in rows if r["project_id"] is not None]
    catalog = [_row(r) for r in rows if r["project_id"] is None]
    return own, catalog, f"genai-prices {version}, {len(catalog):,} prices"


def _row(row: dict) -> dict:
    shown = {c["id"]: row[c["id"]] for c in COLUMNS}
    for name, value in shown.items():
        if value is None:
            shown[name] = ""
        elif name == "effective_from":
            shown[name] = f"{value:%Y-%m-%d %H:%M}"
        else:
            shown[name] = str(value)
    return shown


@callback(
    Output(MESSAGE, "children"),
    Input(SAVE, "n_clicks"),
    State(shell.SWITCHER, "value"),
    *[State(field_id(name), "value") for name in FIELDS],
    prevent_initial_call=True,
)
def save(_clicks, shown_project, *values):
    try:
        project = auth.require_admin(shown_project)
    except auth.AccessDenied as refused:
        return components.note(f"Not saved: {refused}.", "error")
    given = {
        name: "" if value is None else str(value).strip()
        for name, value in zip(FIELDS, values, strict=True)
    }
    body = {name: value for name, value in given.items() if value}
    body["effective_from"] = _instant(body.get("effective_from"))
    try:
        price = PriceIn.model_validate(body)
    except ValidationError as error:
        problems = describe_errors(error.errors(), whole="form")
        return components.note(f"Not saved: {problems}", "error")
    try:
        data.write(pricing.add_prices, project_id=project.project_id, prices=(price,))
    except pricing.DuplicatePrice as error:  # saved twice (a double click, say)
        return components.note(f"Not saved: {error}", "error")
    return components.note(
        f"Saved: {price.model} from {price.effective_from:%Y-%m-%d %H:%M} UTC.", "ok"
    )


def _instant(value: str | None) -> str:
    """An ISO date or date-time, naive taken as UTC, as the RFC 3339 string the API takes."""
    if not value:
        return utc_now().isoformat()
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value  # the validation error names the field
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at).isoformat()
