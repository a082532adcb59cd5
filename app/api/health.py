"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.db import connection
from app.services.health import database_status

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers and is migrated to head")
def readyz() -> JSONResponse:
    try:
        with connection() as conn:
            problem = database_status(conn)
    except Exception as error:  # any failure to reach the database means not ready
        problem = f"database unreachable: {type(error).__name__}: {error}"
    if problem:
        return JSONResponse({"status": "unavailable", "detail": problem}, status_code=503)
    return JSONResponse({"status": "ok"})
