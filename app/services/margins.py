"""Customer margins per day and per month, kept in customer_margins for fast reads.

A day (and its month) is recomputed whole, from the rollups and the revenue records, when
the rollup job re-rolled one of its hours or a revenue record overlapping it arrived, so a
rerun or two workers at once give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, insert, select, text

from app.models import customer_margins
from app.services.metrics import CustomerFigures, Period, customer_metrics
from app.services.rollups import (
    LOOKBACK,
    MARGINS_JOB,
    advance_watermark,
    drain_dirty_hours,
    floor_day,
)

DAYS_PER_TRANSACTION = 31


def month_of(at: datetime) -> datetime:
    return floor_day(at).replace(day=1)


def next_month(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def period_of(granularity: str, start: datetime) -> Period:
    end = start + timedelta(days=1) if granularity == "day" else next_month(start)
    return Period(start, end)


def _mark_revenue_days(conn: Connection, *, now: datetime) -> None:
    """Marks the days overlapped by revenue records that arrived since the last run."""
    since = advance_watermark(conn, job="margins.revenue", until=now) - LOOKBACK
    conn.execute(
        text(
            """
            insert into dirty_hours (job, project_id, hour)
            select distinct :job, project_id, day
            from revenue_records,
                 generate_series(date_bin('1 day', period_start, timestamptz '2000-01-01Z'),
                                 period_end - interval '1 microsecond', '1 day') as day
            where created_at >= :since and created_at < :until
            on conflict do nothing
            """
        ),
        {"job": MARGINS_JOB, "since": since, "until": now},
    )


def recompute(conn: Connection, *, project_id: int, granularity: str, start: datetime) -> None:
    within = period_of(granularity, start)
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
        "revenue_usd": figures.revenue_usd,
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


def run_margins(engine: Engine, *, now: datetime | None = None) -> MarginsRun:
    with engine.begin() as conn:
        conn.execute(text("select pg_advisory_xact_lock(hashtext('routeledger.margins.collect'))"))
        now = now or conn.execute(text("select now()")).scalar_one()
        _mark_revenue_days(conn, now=now)
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
