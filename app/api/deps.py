"""Typed dependencies of the routes: the caller (from the API key), its scope, its rate."""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from sqlalchemy import Connection

from app.db import connection
from app.periods import InvalidPeriod, Period, hourly_period
from app.services.metrics import Filters
from app.services.projects import Caller, authenticate
from app.settings import get_settings


class RateLimiter:
    """A token bucket per API key, in this process: `rate` calls per second, bursts of two
    seconds' worth. Several API processes each allow the rate."""

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key_id: int, rate: float) -> float:
        """0 when the call may go ahead (and is counted), else seconds until it may."""
        capacity = max(1.0, 2 * rate)
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / rate


rate_limiter = RateLimiter()


def db() -> Connection:
    with connection() as conn:
        yield conn


Db = Annotated[Connection, Depends(db)]


def current_caller(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise HTTPException(
            401, "missing API key: send Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
        )
    with connection() as conn:
        caller = authenticate(conn, secret=secret.strip())
    if caller is None:
        raise HTTPException(401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
    rate = caller.rate_limit_per_second or get_settings().routeledger_rate_limit_per_second
    wait = rate_limiter.retry_after(caller.key_id, rate)
    if wait > 0:
        raise HTTPException(
            429,
            f"over this key's rate of {rate:g} calls per second",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return caller


def require_scope(scope: str):
    def check(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        if scope not in caller.scopes:
            raise HTTPException(403, f"this key lacks the {scope!r} scope")
        return caller

    return check


IngestCaller = Annotated[Caller, Depends(require_scope("ingest"))]
ReadCaller = Annotated[Caller, Depends(require_scope("read"))]
AdminCaller = Annotated[Caller, Depends(require_scope("admin"))]


# Query parameters of the metrics and export calls.
Bound = Annotated[
    str | None,
    Query(description="a whole UTC hour, ISO 8601; a bare date means its midnight"),
]
Name = Annotated[str | None, Query(max_length=200)]


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
