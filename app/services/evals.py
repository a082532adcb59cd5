"""Offline evaluation results (DESIGN.md, Routing advice): one model's score on one item of a
feature (and task type), the evidence that compares tiers on the same items.

A result's tier is the one it names, else its model's in the project's model-to-tier map.
A bad result (invalid, an unknown tier, an unmapped model) is an error for that result only;
the others are stored. The same item and model sent again replaces the score.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert

from app.models import eval_results
from app.periods import utc_now
from app.schemas import EvalError, EvalResultIn, EvalsResult, describe_errors
from app.services.model_tiers import load_tier_map
from app.services.projects import project_tiers


def record_evals(conn: Connection, *, project_id: int, items: Iterable[Any]) -> EvalsResult:
    """Validates and stores raw results (JSON objects, as EvalResultIn); returns how many
    were stored and an error per refused one, by index."""
    valid: list[tuple[int, EvalResultIn]] = []
    errors: list[EvalError] = []
    for index, raw in enumerate(items):
        try:
            valid.append((index, EvalResultIn.model_validate(raw)))
        except ValidationError as error:
            item_id = raw.get("item_id") if isinstance(raw, dict) else None
            errors.append(
                EvalError(
                    index=index,
                    item_id=item_id if isinstance(item_id, str) else None,
                    error=describe_errors(error.errors(include_url=False), whole="result"),
                )
            )
    tiers = project_tiers(conn, project_id=project_id)
    mapped = load_tier_map(
        conn, project_id=project_id, models={r.model for _, r in valid if r.tier is None}
    )
    rows: dict[tuple, dict] = {}
    now = utc_now()
    for index, result in valid:
        tier = result.tier or mapped.tier_of(result.model)
        problem = None
        if tier is None:
            problem = (
                f"tier: model {result.model!r} has no tier in the project's model-to-tier map; "
                f'map it (PUT /v1/model-tiers/{result.model}) or send "tier"'
            )
        elif tier not in tiers:
            problem = f"tier: unknown tier {tier!r} (known: {', '.join(sorted(tiers))})"
        if problem:
            errors.append(EvalError(index=index, item_id=result.item_id, error=problem))
            continue
        key = (result.feature, result.task_type, result.item_id, result.model)
        rows[key] = {  # a later result for the same item and model wins
            "project_id": project_id,
            "feature": result.feature,
            "task_type": result.task_type,
            "item_id": result.item_id,
            "model": result.model,
            "tier": tier,
            "score": float(result.score),
            "recorded_at": now,
        }
    if rows:
        statement = insert(eval_results)
        conn.execute(
            statement.on_conflict_do_update(
                constraint="uq_eval_results_project_id_feature_task_type_item_id_model",
                set_={
                    column: statement.excluded[column]
                    for column in ("tier", "score", "recorded_at")
                },
            ),
            list(rows.values()),
        )
    return EvalsResult(accepted=len(rows), errors=sorted(errors, key=lambda e: e.index))
