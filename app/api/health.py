"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.db import connection
from app.services.health import database_status

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database answers and is migrated to head",
    responses={503: {"description": "not ready: the database is unreachable or behind"}},
)
def readyz() -> JSONResponse:
    try:
        with connection() as conn:
            problem = database_status(conn)
    except Exception as error:  # any failure to reach the database means not ready
        # The driver's text names hosts and users: the log has it, the answer does not.
        log.warning("not ready: %s: %s", type(error).__name__, error)
        problem = "database unreachable"
    if problem:
        return JSONResponse({"status": "unavailable", "detail": problem}, status_code=503)
    return JSONResponse({"status": "ok"})
