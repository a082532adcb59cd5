"""The Models page's section on the model-to-tier map: requests from OpenTelemetry traces held
because their model has no tier, by model, and the form where an admin maps a model (the
held requests are then assembled at once)."""

from __future__ import annotations

from dash import Input, Output, State, callback, dcc, html

from app.db import get_engine
from app.schemas import NAME_VALUE
from app.services import model_tiers, projects, traces
from dashboards import auth, components, data, shell

HELD = "models-held"
MODEL = "models-map-model"
MODELS = "models-map-models"
TIER = "models-map-tier"
SAVE = "models-map-save"
MESSAGE = "models-map-message"


def section(project) -> html.Section:
    tiers = data.read(projects.project_tiers, project_id=project.project_id)
    return components.card(
        "Models to map to a tier",
        html.P(
            "Requests that arrive as OpenTelemetry traces take each model's tier from this "
            "map (unless a span says routeledger.tier). A request whose model has no tier is "
            "held here, never dropped, and assembled as soon as its model is mapped."
            if project.is_admin
            else "Only admins of this project can map models.",
            className="muted",
        ),
        html.Div(id=HELD),
        html.Div(
            [
                html.Label(
                    [
                        "model",
                        dcc.Input(
                            id=MODEL,
                            type="text",
                            list=MODELS,
                            debounce=True,
                            style={"minWidth": "18rem"},
                        ),
                    ]
                ),
                html.Datalist(id=MODELS),
                html.Label(
                    [
                        "tier",
                        dcc.Dropdown(
                            id=TIER,
                            options=sorted(tiers, key=tiers.get),
                            clearable=False,
                            style={"minWidth": "10rem"},
                        ),
                    ]
                ),
            ],
            className="form-row",
        ),
        html.Button("Map model", id=SAVE, className="button", disabled=not project.is_admin),
        html.Div(id=MESSAGE),
    )


@callback(Output(HELD, "children"), Output(MODELS, "children"), Input(MESSAGE, "children"))
def show_held(_saved):
    project_id = auth.membership().project_id
    held, unmapped = data.read(traces.held_models, project_id=project_id)
    options = [html.Option(value=m["model"]) for m in unmapped]
    if not held:
        return components.note("No request is waiting for a model's tier."), options
    listing = html.Ul(
        [html.Li(f"{m['model']}: {m['requests']:,} held requests") for m in unmapped],
        id="held-models",
    )
    summary = f"{held:,} requests held until their models are mapped:"
    return html.Div([components.note(summary, "warning"), listing]), options


@callback(
    Output(MESSAGE, "children"),
    Input(SAVE, "n_clicks"),
    State(shell.SWITCHER, "value"),
    State(MODEL, "value"),
    State(TIER, "value"),
    prevent_initial_call=True,
)
def map_model(_clicks, shown_project, model, tier):
    try:
        project = auth.require_admin(shown_project)
    except auth.AccessDenied as refused:
        return components.note(f"Not saved: {refused}.", "error")
    if not tier:
        return components.note("Not saved: choose a tier.", "error")
    try:
        model = components.form_value(
            NAME_VALUE, model.strip() if isinstance(model, str) else model, field="model"
        )
    except components.FormRefusal as refused:
        return components.note(f"Not saved: {refused}", "error")
    try:
        mapped = traces.map_model(
            get_engine(), project_id=project.project_id, model=model, tier=tier
        )
    except model_tiers.UnknownTier as error:
        return components.note(f"Not saved: {error}", "error")
    data.clear()
    return components.note(
        f"Mapped {mapped.model} to {mapped.tier}: "
        f"{mapped.released_requests:,} held requests assembled.",
        "ok",
    )
