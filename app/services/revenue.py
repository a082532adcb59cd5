"""Revenue records: what a customer paid for a period (prorated into metrics by overlap)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert

from app.models import revenue_records
from app.periods import Period, calendar_parts, floor_day
from app.schemas import RevenueRecordIn
from app.services.rollups import MARGINS_JOB, mark_written

# A billing period: a day, a month, a year; a record longer than this is a mistake.
LONGEST_RECORD = timedelta(days=5 * 366)


class InvalidRevenue(ValueError):
    pass


@dataclass(frozen=True)
class RevenueAdded:
    accepted: int
    duplicates: int


def add_revenue(
    conn: Connection, *, project_id: int, records: list[RevenueRecordIn]
) -> RevenueAdded:
    """Stores the records (all, or none when one is wrong); a record whose record_id the
    project has stored before, or that an earlier record of the call carries, is a duplicate,
    whatever else it says."""
    for index, record in enumerate(records):
        if record.period_end <= record.period_start:
            raise InvalidRevenue(f"records[{index}].period_end: must be after period_start")
        if record.period_end - record.period_start > LONGEST_RECORD:
            raise InvalidRevenue(
                f"records[{index}].period_end: a record covers at most {LONGEST_RECORD.days} "
                "days; split a longer one"
            )
    # One statement: a record_id twice in it is stored once too (the first, as in the call).
    stored = conn.execute(
        insert(revenue_records)
        .values(
            [
                {
                    "project_id": project_id,
                    "customer_id": r.customer_id,
                    "period_start": r.period_start,
                    "period_end": r.period_end,
                    "amount_usd": r.amount_usd,
                    "record_id": r.record_id,
                }
                for r in records
            ]
        )
        .on_conflict_do_nothing(
            index_elements=["project_id", "record_id"],
            index_where=revenue_records.c.record_id.is_not(None),
        )
        .returning(revenue_records.c.id)
    ).all()
    # The margins of every day a record overlaps change.
    days = {
        floor_day(day.start)
        for r in records
        for day in calendar_parts(Period(r.period_start, r.period_end), "day")
    }
    mark_written(conn, job=MARGINS_JOB, project_id=project_id, hours=days)
    return RevenueAdded(len(stored), len(records) - len(stored))
