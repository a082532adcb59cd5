"""Customer margins per day and per month, kept up to date by the margins job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from app.schemas import RevenueRecordIn
from app.services.ingest import Batch, ingest_batch
from app.services.margins import month_of, period_of, run_margins, stored_margins
from app.services.metrics import Period
from app.services.revenue import add_revenue
from app.services.rollups import floor_hour, run_rollup
from tests.conftest import make_project
from tests.events import attempt, event

DAY = floor_hour(datetime.now(UTC)).replace(hour=0) - timedelta(days=1)


def after(**delta: int) -> str:
    return (DAY + timedelta(**delta)).isoformat()


def test_margins_per_day_and_month_with_prorated_revenue(engine):
    project = make_project()
    events = [
        event(attempt(cost_usd="0.75"), customer_id="acme", timestamp=after(hours=1)),
        event(attempt(cost_usd="0.25"), customer_id="acme", timestamp=after(hours=30)),
        event(attempt(cost_usd="2"), customer_id="globex", revenue_usd="0.5",
              timestamp=after(hours=2)),
    ]  # fmt: skip
    assert ingest_batch(engine, project_id=project.id, batch=Batch(events)).accepted == 3
    with engine.begin() as conn:
        add_revenue(
            conn,
            project_id=project.id,
            records=[RevenueRecordIn(customer_id="acme", period_start=after(hours=0),
                                     period_end=after(hours=96), amount_usd="4")],
        )  # fmt: skip
    run_rollup(engine)
    run_margins(engine)
    run_margins(engine)  # a rerun changes nothing
    with engine.connect() as conn:
        days = stored_margins(
            conn,
            project_id=project.id,
            granularity="day",
            within=Period(DAY, DAY + timedelta(days=1)),
        )
        month = month_of(DAY)
        months = stored_margins(
            conn, project_id=project.id, granularity="month", within=period_of("month", month)
        )
    assert [(d["customer_id"], d["margin_usd"]) for d in days] == [
        ("globex", Decimal("-1.5")),  # negative margins first
        ("acme", Decimal("0.25")),  # 1 of revenue (a quarter of the record) − 0.75
    ]
    assert days[1]["margin_pct"] == Decimal("0.25") and days[0]["requests"] == 1
    by_customer = {m["customer_id"]: m for m in months}
    assert by_customer["acme"]["cost_usd"] == Decimal("1.00")
    overlap = min(period_of("month", month).end, DAY + timedelta(days=4)) - DAY
    assert by_customer["acme"]["revenue_usd"] == Decimal(4) * Decimal(overlap.days) / 4
