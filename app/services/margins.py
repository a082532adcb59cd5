"""Customer margins per day and per month, kept in customer_margins for fast reads.

A day (and its month) is recomputed whole, from the rollups and the revenue records, when
the rollup job re-rolled one of its hours or a revenue record overlapping it arrived, so a
rerun or two workers at once give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, insert, select

from app.models import customer_margins
from app.periods import Period, floor_day, grain_period, month_of
from app.services.metrics import CustomerFigures, customer_metrics
from app.services.rollups import MARGINS_JOB, collect_dirty_hours, drain_dirty_hours

DAYS_PER_TRANSACTION = 31


def recompute(conn: Connection, *, project_id: int, granularity: str, start: datetime) -> None:
    within = grain_period(granularity, start)
    conn.execute(
        delete(customer_margins).where(
            customer_margins.c.project_id == project_id,
            customer_margins.c.granularity == granularity,
            customer_margins.c.period_start == start,
        )
    )
    rows = [
        _row(figures, project_id=project_id, granularity=granularity, within=within)
        for figures in customer_metrics(conn, project_id=project_id, within=within)
    ]
    if rows:
        conn.execute(insert(customer_margins), rows)


def _row(figures: CustomerFigures, *, project_id: int, granularity: str, within: Period) -> dict:
    return {
        "project_id": project_id,
        "granularity": granularity,
        "period_start": within.start,
        "period_end": within.end,
        "customer_id": figures.customer_id,
        "requests": figures.requests,
        "input_tokens": figures.input_tokens,
        "output_tokens": figures.output_tokens,
        "cost_usd": figures.cost_usd,
        "revenue_usd": figures.total_revenue_usd,
        "margin_usd": figures.margin_usd,
        "margin_pct": figures.margin_pct,
        "unpriced_requests": figures.unpriced_requests,
    }


@dataclass(frozen=True)
class MarginsRun:
    projects: int
    hours: int


def recompute_hours(conn: Connection, project_id: int, hours: list[datetime]) -> None:
    """Recomputes the days of these hours, and their months."""
    days = sorted({floor_day(h) for h in hours})
    for day in days:
        recompute(conn, project_id=project_id, granularity="day", start=day)
    for month in sorted({month_of(d) for d in days}):
        recompute(conn, project_id=project_id, granularity="month", start=month)


def run_margins(engine: Engine) -> MarginsRun:
    with engine.begin() as conn:
        collect_dirty_hours(conn, job=MARGINS_JOB)
    projects, hours = drain_dirty_hours(
        engine, job=MARGINS_JOB, limit=DAYS_PER_TRANSACTION * 24, work=recompute_hours
    )
    return MarginsRun(projects=projects, hours=hours)


def stored_margins(
    conn: Connection, *, project_id: int, granularity: str, within: Period
) -> list[dict]:
    """The stored per-customer margins of the periods starting in `within`, each period's
    negative margins first."""
    rows = conn.execute(
        select(customer_margins)
        .where(
            customer_margins.c.project_id == project_id,
            customer_margins.c.granularity == granularity,
            customer_margins.c.period_start >= within.start,
            customer_margins.c.period_start < within.end,
        )
        .order_by(
            customer_margins.c.period_start,
            customer_margins.c.margin_usd,
            customer_margins.c.customer_id,
        )
    )
    return [dict(row._mapping) for row in rows]
