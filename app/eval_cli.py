"""`routeledger eval import FILE`: offline evaluation results into a project, the evidence
that routing advice compares tiers on (DESIGN.md, Routing advice)."""

from __future__ import annotations

from pathlib import Path

import click

SHOWN_ERRORS = 10


@click.group("eval")
def eval_group() -> None:
    """Offline evaluation results."""


@eval_group.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--project", "project_name", required=True)
@click.option("--feature", default=None, help="for results without one; RouteLLM: the file name")
@click.option("--task-type", default=None, help="for results without one")
@click.option(
    "--tier",
    "tiers",
    multiple=True,
    metavar="MODEL=TIER",
    help="a model's tier; repeat. Default: the result's, else the project's model-to-tier map",
)
def eval_import(
    path: Path,
    project_name: str,
    feature: str | None,
    task_type: str | None,
    tiers: tuple[str, ...],
) -> None:
    """Import evaluation results: a RouteLLM result file or folder (CSV of True/False per
    model, MT-Bench judgements), or JSON lines of {"item_id", "model", "score", "feature",
    "task_type", "tier"}. The same item and model again replaces its score; a bad result is
    reported and the others are stored."""
    from app.cli import _project_id
    from app.db import transaction
    from app.services.evals import record_evals
    from tools.eval_import import EvalFileError, results_from_file

    model_tiers = {}
    for pair in tiers:
        model, sep, tier = pair.rpartition("=")
        if not sep or not model or not tier:
            raise click.BadParameter(f"{pair!r} is not MODEL=TIER", param_hint="--tier")
        model_tiers[model] = tier
    try:
        results = results_from_file(path, feature=feature, task_type=task_type, tiers=model_tiers)
    except EvalFileError as error:
        raise click.ClickException(str(error)) from None
    with transaction() as conn:
        project_id = _project_id(conn, project_name)
        outcome = record_evals(conn, project_id=project_id, items=results)
    click.echo(f"{path}: {outcome.accepted} results stored, {len(outcome.errors)} refused")
    for error in outcome.errors[:SHOWN_ERRORS]:
        click.echo(f"  result {error.index} ({error.item_id}): {error.error}", err=True)
    if outcome.errors:
        raise click.ClickException(f"{len(outcome.errors)} results refused; the others stored")
