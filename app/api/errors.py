"""Answers for what goes wrong below the routes: the database cannot answer now, a query ran
too long, a partition is being made. Each is a 503 with Retry-After (clients, the SDK and
OTLP exporters retry those; a 500 would make them drop the data), and none shows the
driver's text: what the database said goes to the log."""

from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg.errors import UndefinedColumn, UndefinedTable
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.db import schema_behind
from app.schemas import ErrorBody
from app.services.health import NOT_MIGRATED
from app.services.partitions import PartitionsBusy
from app.settings import get_settings

log = logging.getLogger(__name__)

# psycopg's own errors too: the hot paths (COPY, arrays in binary) use its cursors directly.
UNAVAILABLE = (
    OperationalError, InterfaceError, PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError
)  # fmt: skip
RETRY_AFTER_SECONDS = 2
_QUERY_CANCELED = "57014"


def unavailable(error: Exception) -> JSONResponse:
    """The 503 for a database error, with what it means for the caller."""
    driver_error = getattr(error, "orig", error)
    if getattr(driver_error, "sqlstate", None) == _QUERY_CANCELED:
        limit = get_settings().routeledger_statement_timeout_seconds
        detail = f"the query ran longer than {limit:g} s: ask for a shorter period or fewer filters"
    elif isinstance(error, PartitionsBusy):
        detail = "the database is making room for these events; retry"
    else:
        detail = "the database cannot answer now; retry"
    log.warning("503 (%s): %s", type(error).__name__, error)
    return JSONResponse(
        {"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


_MEANINGS = {
    400: "the body cannot be read (not JSON, not valid gzip)",
    401: "no API key, or an unknown or revoked one",
    403: "the key lacks the scope this call needs",
    404: "no such thing in this project",
    409: "conflicts with what is stored",
    413: "the body is over 5 MiB (compressed or not) or holds over 1000 items",
    415: "the body's type or encoding is not one this call reads",
    422: "a field is wrong: the message names it",
    429: "over the key's rate, or too many calls without a valid key; see Retry-After",
    503: "the database cannot answer now, or a query ran too long; see Retry-After",
}


def answers(*codes: int, **meanings: str) -> dict:
    """OpenAPI `responses` for these status codes, each a {"detail": "..."} body; a meaning
    given as `_404="..."` replaces the general one."""
    return {
        code: {"model": ErrorBody, "description": meanings.get(f"_{code}", _MEANINGS[code])}
        for code in codes
    }


# Every call with a key may be refused so, whatever it does.
KEYED = answers(401, 403, 422, 429, 503)


def install(app: FastAPI) -> None:
    async def handler(_: Request, error: Exception) -> JSONResponse:
        return unavailable(error)

    for error_class in (*UNAVAILABLE, PartitionsBusy):
        app.add_exception_handler(error_class, handler)

    async def schema_handler(_: Request, error: Exception) -> JSONResponse:
        if not schema_behind(error):
            log.error("500: %s", error, exc_info=error)
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        log.warning("503: %s", error)
        return JSONResponse(
            {"detail": f"{NOT_MIGRATED} (a table or column this version needs is missing)"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    for error_class in (ProgrammingError, UndefinedTable, UndefinedColumn):
        app.add_exception_handler(error_class, schema_handler)
