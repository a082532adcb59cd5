"""How callbacks read: a service function called on a fresh connection, its answer kept
for a few seconds so that several figures and users reading the same thing share one
query. Writes clear the cache, so a saved change shows at once."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from app.db import snapshot, transaction
from app.periods import HOUR, Period, next_hour, utc_now
from app.services import alerts, dashboard_queries, metrics
from app.services.metrics import Filters, RoutingMetrics

CACHE_SECONDS = 30.0
CACHE_ENTRIES = 512

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-read")
_lock = threading.Lock()
_cache: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()


def read(service: Callable[..., Any], **kwargs: Any) -> Any:
    """`service(conn, **kwargs)`, cached for CACHE_SECONDS; kwargs must be hashable."""
    key = (service.__module__, service.__qualname__, tuple(sorted(kwargs.items())))
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] > now:
            _cache.move_to_end(key)
            return hit[1]
    with snapshot() as conn:
        value = service(conn, **kwargs)
    with _lock:
        _cache[key] = (now + CACHE_SECONDS, value)
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return value


def together(*reads: Callable[[], Any]) -> list[Any]:
    """Runs several reads at once, each on its own connection, so a page waits for its
    slowest query rather than for the sum of them. A read run here must not call
    together() itself (it would wait on the pool it occupies)."""
    futures = [_pool.submit(one) for one in reads]
    return [future.result() for future in futures]


def write(service: Callable[..., Any], **kwargs: Any) -> Any:
    """`service(conn, **kwargs)` in a transaction; then every cached answer is dropped."""
    with transaction() as conn:
        value = service(conn, **kwargs)
    clear()
    return value


def clear() -> None:
    with _lock:
        _cache.clear()


def bucket_hours(within: Period) -> int:
    """The width of one point of a time series: hourly up to two days, then coarser."""
    days = (within.end - within.start) / timedelta(days=1)
    if days <= 2:
        return 1
    if days <= 14:
        return 3
    return 24


def routing_totals(project_id: int, within: Period, scope: Filters) -> RoutingMetrics:
    return read(metrics.routing_metrics, project_id=project_id, within=within, filters=scope)


def routing_over_time(project_id: int, within: Period, scope: Filters) -> list[RoutingMetrics]:
    """The same figures per time bucket (see over_time)."""
    return over_time(dashboard_queries.routing_series, project_id, within, filters=scope)


def over_time(series: Callable[..., list], project_id: int, within: Period, **scope: Any) -> list:
    """`series` (a reader of figures per time bucket, such as routing_series) over the period
    up to this hour (the hours still to come would read as a drop to zero), the bucket sized
    to the period."""
    now = next_hour(utc_now())
    return read(
        series,
        project_id=project_id,
        within=Period(within.start, max(within.start + HOUR, min(within.end, now))),
        bucket_hours=bucket_hours(within),
        **scope,
    )


def alerts_in(project_id: int, within: Period) -> list[dict]:
    """The project's alerts that were firing at some time in the period."""
    return [
        alert
        for alert in read(alerts.list_alerts, project_id=project_id)
        if alert["fired_at"] < within.end
        and (alert["resolved_at"] is None or alert["resolved_at"] > within.start)
    ]
