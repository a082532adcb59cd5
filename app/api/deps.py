"""Typed dependencies of the routes: the caller (from the API key) and its scope, a database
connection with a statement timeout, the period and filters of a call."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request
from sqlalchemy import Connection

from app.api.callers import Refused, client_address, resolve_caller
from app.db import connection, limit_statements, snapshot
from app.periods import InvalidPeriod, Period, hourly_period
from app.schemas import MAX_ID
from app.services.metrics import Filters
from app.services.projects import Caller
from app.settings import get_settings


def db() -> Connection:
    with connection() as conn:
        limit_statements(conn, seconds=get_settings().routeledger_statement_timeout_seconds)
        yield conn


Db = Annotated[Connection, Depends(db)]


def read_db() -> Connection:
    with snapshot() as conn:
        yield conn


# For calls that read figures: one snapshot of the database for the whole call (app.db.snapshot).
ReadDb = Annotated[Connection, Depends(read_db)]


def current_caller(request: Request) -> Caller:
    """The caller the body middleware resolved (calls with a body), else resolved now."""
    caller = getattr(request.state, "caller", None)
    if caller is not None:
        return caller
    authorization = request.headers.get("authorization")
    try:
        return resolve_caller(authorization, address=client_address(request.scope))
    except Refused as refused:
        raise HTTPException(refused.status, refused.detail, refused.headers) from None


def require_scope(scope: str):
    def check(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        if scope not in caller.scopes:
            raise HTTPException(403, f"this key lacks the {scope!r} scope")
        return caller

    return check


# A stored row's id in a path: a bigint.
Id = Annotated[int, Path(ge=1, le=MAX_ID, description="an id as listed")]

IngestCaller = Annotated[Caller, Depends(require_scope("ingest"))]
ReadCaller = Annotated[Caller, Depends(require_scope("read"))]
AdminCaller = Annotated[Caller, Depends(require_scope("admin"))]


# Query parameters of the metrics and export calls.
Bound = Annotated[
    str | None,
    Query(description="a whole UTC hour, ISO 8601; a bare date means its midnight"),
]
# Names in queries and paths: PostgreSQL's text holds no NUL.
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str | None, Query(max_length=200, pattern=NO_NUL)]
PathName = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL)]


def filters_param(
    feature: Name = None, customer_id: Name = None, experiment: Name = None, arm: Name = None
) -> Filters:
    """Which requests a metrics or export call is about."""
    return Filters(feature=feature, customer_id=customer_id, experiment=experiment, arm=arm)


RequestFilters = Annotated[Filters, Depends(filters_param)]


def period_param(start: str | None, end: str | None) -> Period:
    """The [start, end) of a call, or a 422 that names the bad bound."""
    try:
        return hourly_period(start, end)
    except InvalidPeriod as error:
        raise HTTPException(422, str(error)) from None
