"""Offline evaluation results (DESIGN.md, Routing advice): one model's score on one item of a
feature (and task type), the evidence that compares tiers on the same items.

A result's tier is the one it names, else its model's in the project's model-to-tier map.
A bad result (invalid, an unknown tier, an unmapped model) is an error for that result only;
the others are stored. The same item and model sent again replaces the score. Each segment
written is counted again into eval_pairs, what the advice reads (app.models.eval_pairs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql import insert

from app.db import planner_settings
from app.models import eval_results
from app.periods import utc_now
from app.schemas import EvalError, EvalResultIn, EvalsResult
from app.services.batches import text_of, validate_item
from app.services.model_tiers import load_tier_map
from app.services.projects import project_tiers


def record_evals(conn: Connection, *, project_id: int, items: Iterable[Any]) -> EvalsResult:
    """Validates and stores raw results (JSON objects, as EvalResultIn); returns how many
    were stored and an error per refused one, by index."""
    valid: list[tuple[int, EvalResultIn]] = []
    errors: list[EvalError] = []
    for index, raw in enumerate(items):
        # (Results come from a body read leniently, or from a file: their text is checked.)
        found = validate_item(EvalResultIn, raw, whole="result", check_text=True)
        if not isinstance(found, str):
            valid.append((index, found))
            continue
        errors.append(EvalError(index=index, item_id=text_of(raw, "item_id"), error=found))
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
    segments = sorted({(row["feature"], row["task_type"]) for row in rows.values()}, key=str)
    for feature, task_type in segments:
        # One writer of a segment at a time: each recounts its pairs from every result
        # committed before it, its own included.
        conn.execute(
            text("select pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"routeledger.evals.{project_id}.{feature}.{task_type}"},
        )
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
    for feature, task_type in segments:
        pair_results(conn, project_id=project_id, feature=feature, task_type=task_type)
    return EvalsResult(accepted=len(rows), errors=sorted(errors, key=lambda e: e.index))


_PAIRS = text(
    """
    insert into eval_pairs (project_id, feature, task_type, first_model, first_tier,
                            second_model, second_tier, first_pct, second_pct, items)
    select a.project_id, a.feature, a.task_type, a.model, a.tier, b.model, b.tier,
           floor(a.score::numeric * 100), floor(b.score::numeric * 100), count(*)
    from eval_results a
    join eval_results b on b.project_id = a.project_id and b.feature = a.feature
                       and b.item_id = a.item_id and (b.model, b.tier) >= (a.model, a.tier)
    where a.project_id = :project_id and a.feature = :feature
      and a.task_type is not distinct from :task_type
      and b.task_type is not distinct from :task_type
    group by 1, 2, 3, 4, 5, 6, 7, 8, 9
    """
)


def pair_results(conn: Connection, *, project_id: int, feature: str, task_type: str | None):
    """Counts a segment's results again into eval_pairs (app.models), item by item."""
    conn.execute(
        text(
            "delete from eval_pairs where project_id = :project_id and feature = :feature "
            "and task_type is not distinct from :task_type"
        ),
        {"project_id": project_id, "feature": feature, "task_type": task_type},
    )
    # Results joined to themselves by item: hashed, whatever the statistics of rows just
    # written say (a nested loop took minutes over 28,000 results).
    with planner_settings(conn, enable_nestloop="off", work_mem="64MB"):
        conn.execute(_PAIRS, {"project_id": project_id, "feature": feature, "task_type": task_type})
