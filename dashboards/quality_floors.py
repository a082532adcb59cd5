"""The Routing page's quality floor editor: the score from which a case of the feature (or
of one task type in it) passes, and the target share of the reference tier's pass rate that
routing advice holds cheaper tiers to. Admins only."""

from __future__ import annotations

from dash import Input, Output, State, callback, dcc, html
from pydantic import ValidationError

from app.schemas import NAME_VALUE, QualityFloorIn, describe_errors
from app.services import quality_floors
from dashboards import auth, components, data, shell

TASK_TYPE = "routing-floor-task-type"
PASS_SCORE = "routing-floor-pass-score"
TARGET = "routing-floor-target"
SAVE = "routing-floor-save"
MESSAGE = "routing-floor-message"


def section(project):
    admin = project.is_admin
    defaults = quality_floors.DEFAULTS
    return components.card(
        "Quality floor",
        html.P(
            "Routing advice recommends the cheapest tier whose pass rate, relative to the "
            "reference tier's, has a 95% lower bound at the target. Leave the task type empty "
            "for the whole feature."
            if admin
            else "Only admins of this project can change the quality floor.",
            className="muted",
        ),
        html.Div(
            [
                html.Label(["task type", dcc.Input(id=TASK_TYPE, type="text", debounce=True)]),
                html.Label(
                    [
                        "pass score",
                        dcc.Input(
                            id=PASS_SCORE,
                            type="number",
                            min=0,
                            max=1,
                            step=0.01,
                            value=float(defaults.pass_score),
                            className="share-input",
                        ),
                    ]
                ),
                html.Label(
                    [
                        "target",
                        dcc.Input(
                            id=TARGET,
                            type="number",
                            min=0.01,
                            max=1,
                            step=0.01,
                            value=float(defaults.target),
                            className="share-input",
                        ),
                    ]
                ),
                html.Button("Save floor", id=SAVE, className="button", disabled=not admin),
            ],
            className="form-row",
        ),  # fmt: skip
        html.Div(id=MESSAGE),
    )


def register(*, feature: str) -> None:
    """The callbacks that show the chosen feature's floor and save a new one."""

    @callback(
        Output(PASS_SCORE, "value"),
        Output(TARGET, "value"),
        Input(feature, "value"),
        Input(TASK_TYPE, "value"),
        Input(MESSAGE, "children"),
    )
    def show_floor(chosen, task_type, _saved):
        floors = data.read(quality_floors.load_floors, project_id=auth.membership().project_id)
        floor = floors.floor_of(chosen or "", task_type or None)
        return float(floor.pass_score), float(floor.target)

    @callback(
        Output(MESSAGE, "children"),
        Input(SAVE, "n_clicks"),
        State(shell.SWITCHER, "value"),
        State(feature, "value"),
        State(TASK_TYPE, "value"),
        State(PASS_SCORE, "value"),
        State(TARGET, "value"),
        prevent_initial_call=True,
    )
    def save_floor(_clicks, shown_project, chosen, task_type, pass_score, target):
        try:
            project = auth.require_admin(shown_project)
        except auth.AccessDenied as refused:
            return components.note(f"Not saved: {refused}.", "error")
        if not chosen:
            return components.note("Not saved: choose a feature first.", "error")
        try:
            chosen = components.form_value(NAME_VALUE, chosen, field="feature")
        except components.FormRefusal as refused:
            return components.note(f"Not saved: {refused}", "error")
        try:
            floor = QualityFloorIn(
                task_type=(task_type or "").strip() or None, pass_score=pass_score, target=target
            )
        except ValidationError as error:
            problems = describe_errors(error.errors(), whole="form")
            return components.note(f"Not saved: {problems}", "error")
        saved = data.write(
            quality_floors.set_floor, project_id=project.project_id, feature=chosen, floor=floor
        )
        where = chosen + (f" / {saved.task_type}" if saved.task_type else "")
        return components.note(
            f"Saved: {where} passes from {saved.pass_score}, target {saved.target}.", "ok"
        )
