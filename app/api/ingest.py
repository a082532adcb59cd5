"""POST /v1/requests and POST /v1/feedback."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.api.bodies import batch_answers, json_body, read_json_batch
from app.api.deps import Db, IngestCaller, ReadCaller
from app.api.errors import answers
from app.db import get_engine, transaction
from app.schemas import (
    FeedbackBatch,
    FeedbackResult,
    HeldFeedback,
    IngestBatch,
    IngestResult,
)
from app.services.batches import Batch
from app.services.feedback import held_summary, record_feedback
from app.services.ingest import ingest_body

router = APIRouter(prefix="/v1", tags=["ingest"])

_ERRORS = answers(400, 413, 415, 422, _422="JSON, but not a batch", _415="not JSON")


def _multi_status(result: IngestResult | FeedbackResult) -> Response:
    return Response(
        result.model_dump_json(),
        status_code=207 if result.errors else 200,
        media_type="application/json",
    )


def _documented_body(model: type) -> dict:
    """The request body of a route that reads its own body, for the OpenAPI document."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post(
    "/requests",
    response_model=IngestResult,
    summary="Ingest a batch of routed requests",
    description=(
        "1 to 1000 events, at most 5 MiB (gzip accepted). 200: every event stored or already "
        "stored. 207: some events rejected, listed by index; the valid ones are stored. A 2xx "
        "means the events are committed."
    ),
    responses={207: {"model": IngestResult, "description": "some events rejected"}, **_ERRORS},
    openapi_extra=_documented_body(IngestBatch),
)
async def ingest_requests(request: Request, caller: IngestCaller) -> Response:
    body = await json_body(request)
    with batch_answers():
        result = await run_in_threadpool(
            ingest_body, get_engine(), project_id=caller.project_id, body=body
        )
    return _multi_status(result)


@router.post(
    "/feedback",
    response_model=FeedbackResult,
    summary="Quality scores that arrive after the request",
    responses={207: {"model": FeedbackResult, "description": "some items rejected"}, **_ERRORS},
    openapi_extra=_documented_body(FeedbackBatch),
)
async def ingest_feedback(request: Request, caller: IngestCaller) -> Response:
    batch = await read_json_batch(request, "feedback")
    result = await run_in_threadpool(_record_feedback, caller.project_id, batch)
    return _multi_status(result)


@router.get(
    "/feedback/held",
    response_model=HeldFeedback,
    summary="Feedback waiting for its request (applied when the request is stored)",
)
def get_held_feedback(caller: ReadCaller, conn: Db) -> HeldFeedback:
    return held_summary(conn, project_id=caller.project_id)


def _record_feedback(project_id: int, batch: Batch) -> FeedbackResult:
    with transaction() as conn:
        return record_feedback(conn, project_id=project_id, batch=batch)


OPENAPI_EXTRA_MODELS = (IngestBatch, FeedbackBatch)
