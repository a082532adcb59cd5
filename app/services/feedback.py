"""Quality that arrives after the request: stored as history, latest score on the request."""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import Connection, bindparam, insert, select, update

from app.models import feedback, request_keys, requests
from app.periods import utc_now
from app.schemas import FeedbackItem, FeedbackResult, ItemError, describe_errors
from app.services.ingest import Batch, request_id_of
from app.services.rollups import ROLLUP_JOB, mark_written


def record_feedback(conn: Connection, *, project_id: int, batch: Batch) -> FeedbackResult:
    """Stores feedback for requests of this project. An invalid item or an unknown
    request_id is an error for that item only; the latest score becomes the request's."""
    items: list[tuple[int, FeedbackItem]] = []
    errors: list[ItemError] = []
    for index, raw in enumerate(batch.items):
        try:
            items.append((index, FeedbackItem.model_validate(raw)))
        except ValidationError as error:
            message = describe_errors(error.errors(include_url=False), whole="item")
            errors.append(ItemError(index=index, request_id=request_id_of(raw), error=message))
    ids = sorted({item.request_id for _, item in items})
    known = dict(
        conn.execute(
            select(request_keys.c.request_id, request_keys.c.ts).where(
                request_keys.c.project_id == project_id, request_keys.c.request_id.in_(ids)
            )
        ).all()
    )
    rows = []
    now = utc_now()
    for index, item in items:
        if item.request_id not in known:
            errors.append(
                ItemError(
                    index=index,
                    request_id=str(item.request_id),
                    error="request_id: no such request in this project",
                )
            )
            continue
        rows.append(
            {
                "project_id": project_id,
                "request_id": item.request_id,
                "request_ts": known[item.request_id],
                "score": item.score,
                "source": item.source,
                "comment": item.comment,
                "received_at": now,
            }
        )
    if rows:
        conn.execute(insert(feedback), rows)
        mark_written(
            conn, job=ROLLUP_JOB, project_id=project_id, hours=(r["request_ts"] for r in rows)
        )
        latest = {row["request_id"]: row for row in rows}  # later items in the batch win
        conn.execute(
            update(requests)
            .where(
                requests.c.project_id == project_id,
                requests.c.ts == bindparam("b_ts"),
                requests.c.request_id == bindparam("b_id"),
            )
            .values(quality_score=bindparam("b_score"), quality_source=bindparam("b_source")),
            [
                {
                    "b_ts": r["request_ts"],
                    "b_id": r["request_id"],
                    "b_score": r["score"],
                    "b_source": r["source"],
                }
                for r in latest.values()
            ],
        )
    return FeedbackResult(accepted=len(rows), errors=sorted(errors, key=lambda e: e.index))
