"""POST /v1/traces (OTLP/HTTP GenAI traces) and the model-to-tier map they are read with."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.api.deps import AdminCaller, Db, PathName, ReadCaller, current_caller, require_scope
from app.api.errors import answers
from app.db import get_engine
from app.schemas import ErrorBody, ModelTierIn, ModelTierList, ModelTierOut, UnmappedModels
from app.services import model_tiers, otlp, traces
from app.services.projects import Caller

router = APIRouter(prefix="/v1")

MAX_REPORTED_ERRORS = 10


def traces_caller(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    """The ingest caller (a database that cannot answer is a 503: app.api.errors)."""
    return require_scope("ingest")(caller)


@router.post(
    "/traces",
    tags=["traces"],
    summary="OTLP/HTTP GenAI traces, assembled into routed requests",
    description=(
        "An OTLP ExportTraceServiceRequest as `application/x-protobuf` or `application/json` "
        "(gzip accepted), at most 5 MiB. Model-call spans become attempts of requests "
        "(DESIGN.md, OTLP GenAI traces); other spans are read only as possible request "
        "spans. 200: an ExportTraceServiceResponse in the request's encoding, whose "
        "partial_success counts the refused spans and says why. 429 and 503 carry Retry-After."
    ),
    responses={
        200: {"description": "ExportTraceServiceResponse (protobuf or JSON)"},
        400: {"model": ErrorBody, "description": "not decodable, or every span refused"},
        401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"},
        403: {"model": ErrorBody, "description": "the key lacks the ingest scope"},
        413: {"model": ErrorBody, "description": "over 5 MiB"},
        415: {"model": ErrorBody, "description": "neither OTLP protobuf nor OTLP JSON"},
        429: {"model": ErrorBody, "description": "over the key's rate; see Retry-After"},
        503: {"model": ErrorBody, "description": "cannot store now; see Retry-After"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                otlp.PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
                otlp.JSON: {"schema": {"type": "object"}},
            },
        }
    },
)
async def post_traces(
    request: Request, caller: Annotated[Caller, Depends(traces_caller)]
) -> Response:
    try:
        kind = otlp.media_type(request.headers.get("content-type"))
    except otlp.UnsupportedContentType as error:
        raise HTTPException(415, str(error)) from None
    body = await request.body()
    try:
        spans, outcome = await run_in_threadpool(_receive, body, kind, caller.project_id)
    except otlp.NotDecodable as error:
        raise HTTPException(400, str(error)) from None
    message = _summary(outcome.errors)
    if outcome.rejected_spans and outcome.rejected_spans == spans:
        raise HTTPException(400, f"every span was refused: {message}")
    return Response(
        otlp.encode_response(kind, rejected_spans=outcome.rejected_spans, error_message=message),
        media_type=kind,
    )


def _receive(body: bytes, kind: str, project_id: int) -> tuple[int, traces.Outcome]:
    """Decodes and receives in one worker thread: the spans the export held, and the outcome."""
    export = otlp.decode_export(body, kind)
    outcome = traces.receive_export(get_engine(), project_id=project_id, export=export)
    return sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans), outcome


def _summary(errors: list[str]) -> str:
    shown = "; ".join(errors[:MAX_REPORTED_ERRORS])
    more = len(errors) - MAX_REPORTED_ERRORS
    return f"{shown}; and {more} more" if more > 0 else shown


# --- the model-to-tier map ----------------------------------------------------------------


# A model name may hold "/" (e.g. "openrouter/gpt-4o"), sent as is or percent-encoded.
@router.get(
    "/model-tiers",
    response_model=ModelTierList | UnmappedModels,
    tags=["model tiers"],
    summary="The project's model-to-tier map; ?unmapped=true: the models held requests wait on",
)
def get_model_tiers(
    caller: ReadCaller,
    conn: Db,
    unmapped: Annotated[
        bool, Query(description="list the models of held requests, with their counts")
    ] = False,
) -> ModelTierList | UnmappedModels:
    if unmapped:
        held, models = traces.held_models(conn, project_id=caller.project_id)
        return UnmappedModels(held_requests=held, unmapped=models)
    rows = model_tiers.list_model_tiers(conn, project_id=caller.project_id)
    return ModelTierList(model_tiers=[ModelTierOut(**row) for row in rows])


@router.put(
    "/model-tiers/{model:path}",
    response_model=ModelTierOut,
    tags=["model tiers"],
    summary="Map a model to a tier; requests held for it are assembled at once",
    responses=answers(404, _404="no such route: a model name holds no line break"),
)
def put_model_tier(model: PathName, body: ModelTierIn, caller: AdminCaller) -> ModelTierOut:
    try:
        mapped = traces.map_model(
            get_engine(), project_id=caller.project_id, model=model, tier=body.tier
        )
    except model_tiers.UnknownTier as error:
        raise HTTPException(422, str(error)) from None
    return ModelTierOut(
        model=mapped.model,
        tier=mapped.tier,
        updated_at=mapped.updated_at,
        released_requests=mapped.released_requests,
    )


@router.delete(
    "/model-tiers/{model:path}",
    status_code=204,
    tags=["model tiers"],
    summary="Remove a model from the map (stored requests keep their tiers)",
    responses=answers(404),
)
def delete_model_tier(model: PathName, caller: AdminCaller, conn: Db) -> None:
    if not model_tiers.delete_model_tier(conn, project_id=caller.project_id, model=model):
        raise HTTPException(404, f"model {model!r} is not in this project's map")
    conn.commit()
