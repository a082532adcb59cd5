"""GET /v1/exports/customers.csv and GET /v1/exports/requests.csv, streamed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.api.deps import Bound, ReadCaller, RequestFilters, period_param
from app.db import snapshot
from app.periods import Period
from app.services import exports

router = APIRouter(prefix="/v1/exports", tags=["exports"])

_CSV = {200: {"content": {"text/csv": {}}, "description": "RFC 4180 CSV, UTF-8"}}


def _stream(
    name: str, within: Period, export: Callable[..., Iterator], **kwargs
) -> StreamingResponse:
    """The export's chunks from one snapshot of the database, on a connection of its own held
    while the response streams (a dependency's connection would be closed or held too
    early)."""

    def chunks() -> Iterator[bytes]:
        with snapshot(export=True) as conn:
            for chunk in export(conn, within=within, **kwargs):
                yield chunk.data

    filename = f"{name}_{within.start:%Y%m%dT%H}_{within.end:%Y%m%dT%H}.csv"
    return StreamingResponse(
        chunks(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/customers.csv",
    response_class=StreamingResponse,
    responses=_CSV,
    summary="Per customer and per day or month: requests, tokens, cost, revenue, margin",
)
def export_customers(
    caller: ReadCaller,
    start: Bound = None,
    end: Bound = None,
    granularity: Annotated[Literal["day", "month"], Query()] = "month",
) -> StreamingResponse:
    return _stream(
        "customers",
        period_param(start, end),
        exports.customers_csv,
        project_id=caller.project_id,
        granularity=granularity,
    )


@router.get(
    "/requests.csv",
    response_class=StreamingResponse,
    responses=_CSV,
    summary="One row per request, oldest first, streamed",
)
def export_requests(
    caller: ReadCaller,
    filters: RequestFilters,
    start: Bound = None,
    end: Bound = None,
) -> StreamingResponse:
    return _stream(
        "requests",
        period_param(start, end),
        exports.requests_csv,
        project_id=caller.project_id,
        filters=filters,
    )
