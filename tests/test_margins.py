"""Customer margins per day and per month, kept up to date by the margins job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from app.periods import DAY, Period, grain_period
from app.schemas import RevenueRecordIn
from app.services.ingest import Batch, ingest_batch
from app.services.margins import run_margins, stored_margins
from app.services.revenue import add_revenue
from app.services.rollups import run_rollup
from tests.helpers import attempt, event, make_project

# The last day of August: the events and the revenue record run into September.
LAST_OF_AUGUST = datetime(2026, 8, 31, tzinfo=UTC)
AUGUST = grain_period("month", datetime(2026, 8, 1, tzinfo=UTC))
SEPTEMBER = grain_period("month", datetime(2026, 9, 1, tzinfo=UTC))
NOW = datetime(2026, 9, 5, 12, tzinfo=UTC)


def after(**delta: int) -> str:
    return (LAST_OF_AUGUST + timedelta(**delta)).isoformat()


def test_margins_per_day_and_month_with_prorated_revenue(engine):
    project = make_project()
    events = [
        event(attempt(cost_usd="0.75"), customer_id="acme", timestamp=after(hours=1)),
        event(attempt(cost_usd="0.25"), customer_id="acme", timestamp=after(hours=30)),
        event(attempt(cost_usd="2"), customer_id="globex", revenue_usd="0.5",
              timestamp=after(hours=2)),
    ]  # fmt: skip
    result = ingest_batch(engine, project_id=project.id, batch=Batch(events), now=NOW)
    assert result.accepted == 3
    with engine.begin() as conn:
        # 4 over four days, from August 31 to September 4: 1 a day.
        add_revenue(
            conn,
            project_id=project.id,
            records=[RevenueRecordIn(customer_id="acme", period_start=after(hours=0),
                                     period_end=after(hours=96), amount_usd="4")],
        )  # fmt: skip
    run_rollup(engine, now=NOW)
    run_margins(engine)
    run_margins(engine)  # a rerun changes nothing
    with engine.connect() as conn:
        days = stored_margins(
            conn,
            project_id=project.id,
            granularity="day",
            within=Period(LAST_OF_AUGUST, LAST_OF_AUGUST + DAY),
        )
        months = {
            month.start.month: {
                m["customer_id"]: m
                for m in stored_margins(
                    conn, project_id=project.id, granularity="month", within=month
                )
            }
            for month in (AUGUST, SEPTEMBER)
        }
    assert [(d["customer_id"], d["margin_usd"]) for d in days] == [
        ("globex", Decimal("-1.5")),  # negative margins first
        ("acme", Decimal("0.25")),  # 1 of revenue (a quarter of the record) − 0.75
    ]
    assert days[1]["margin_pct"] == Decimal("0.25") and days[0]["requests"] == 1
    assert months[8]["acme"]["cost_usd"] == Decimal("0.75")
    assert months[8]["acme"]["revenue_usd"] == Decimal(1)
    assert months[8]["globex"]["margin_usd"] == Decimal("-1.5")
    # September: the second acme request and three days of the record; no globex.
    assert set(months[9]) == {"acme"}
    assert months[9]["acme"]["cost_usd"] == Decimal("0.25")
    assert months[9]["acme"]["revenue_usd"] == Decimal(3)
    assert months[9]["acme"]["margin_usd"] == Decimal("2.75")
