"""Monthly partitions of the time-partitioned tables, created on demand."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine, text

from app.models import PARTITIONED_TABLES

# Months this process has already seen created; a partition is never dropped by the app.
_known_months: set[tuple[int, int]] = set()


def month_start(at: datetime) -> tuple[int, int]:
    at = at.astimezone(UTC)
    return at.year, at.month


def partition_name(table: str, month: tuple[int, int]) -> str:
    return f"{table}_p{month[0]:04d}_{month[1]:02d}"


def ensure_partitions(engine: Engine, months: Iterable[tuple[int, int]]) -> None:
    """Creates the partitions for these months in their own short transaction (so a
    rolled-back ingest never leaves half a partition), serialised by an advisory lock."""
    missing = sorted(set(months) - _known_months)
    if not missing:
        return
    with engine.begin() as conn:
        conn.execute(text("select pg_advisory_xact_lock(hashtext('routeledger.partitions'))"))
        for year, month in missing:
            lower = datetime(year, month, 1, tzinfo=UTC)
            upper = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
            for table in PARTITIONED_TABLES:
                conn.execute(
                    text(
                        f"create table if not exists {partition_name(table, (year, month))} "
                        f"partition of {table} for values from ('{lower.isoformat()}') "
                        f"to ('{upper.isoformat()}')"
                    )
                )
    _known_months.update(missing)


def forget_known_partitions() -> None:
    """For tests that drop and recreate the schema within one process."""
    _known_months.clear()
