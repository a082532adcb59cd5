"""Monthly partitions of the time-partitioned tables, made ahead of the events that need them.

Creating a partition takes a lock on its parent table that waits for every reader of it (a
long export, a dashboard query), and every later ingest would queue behind that wait. So the
`partitions` job (at migrate, then hourly) makes the months an event may fall in ahead of
time: from the oldest an event may be (ROUTELEDGER_MAX_EVENT_AGE_DAYS, at most PREPARED_DAYS
back) to two months ahead. Ingest only checks. A month still missing there (older than
that, or the job has not run) is created on the spot under a short lock timeout; if a reader
holds the table, ingest answers 503 with Retry-After instead of stalling.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from app.models import PARTITIONED_TABLES
from app.periods import month_of, next_month, utc_now
from app.settings import get_settings

Month = tuple[int, int]
MONTHS_AHEAD = 2
# How far back the job prepares months, whatever the age bound.
PREPARED_DAYS = 400
# How long ingest may wait for the lock that creating a partition takes.
INGEST_LOCK_TIMEOUT = "2s"
JOB_LOCK_TIMEOUT = "10s"
RETRY_AFTER_SECONDS = 5
_LOCK_NOT_AVAILABLE = "55P03"

# Months this process has seen to exist; a partition is never dropped by the app.
_known_months: set[Month] = set()


class PartitionsBusy(RuntimeError):
    """A month's partition is missing and readers hold its table: retry in a moment."""

    retry_after = RETRY_AFTER_SECONDS


def month_start(at: datetime) -> Month:
    at = at.astimezone(UTC)
    return at.year, at.month


def partition_name(table: str, month: Month) -> str:
    return f"{table}_p{month[0]:04d}_{month[1]:02d}"


def _existing_months(engine: Engine) -> set[Month]:
    """The months whose partitions exist for every partitioned table."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """
                select parent.relname as parent, child.relname as child
                from pg_inherits
                join pg_class parent on parent.oid = pg_inherits.inhparent
                join pg_class child on child.oid = pg_inherits.inhrelid
                where parent.relname = any(:tables)
                """
            ),
            {"tables": list(PARTITIONED_TABLES)},
        ).all()
    by_table: dict[str, set[Month]] = {table: set() for table in PARTITIONED_TABLES}
    for row in rows:
        year, month = row.child.rsplit("_p", 1)[1].split("_")
        by_table[row.parent].add((int(year), int(month)))
    return set.intersection(*by_table.values())


def _create(engine: Engine, months: Iterable[Month], *, lock_timeout: str) -> list[Month]:
    """Creates these months' partitions, each month in its own short transaction under the
    lock timeout; returns the months created or found. Raises OperationalError when a lock
    was not had in time."""
    done = []
    for year, month in sorted(set(months)):
        lower = datetime(year, month, 1, tzinfo=UTC)
        upper = next_month(lower)
        with engine.begin() as conn:
            conn.execute(text(f"set local lock_timeout = '{lock_timeout}'"))
            # Serialises creators, so two never race on the same month.
            conn.execute(text("select pg_advisory_xact_lock(hashtext('routeledger.partitions'))"))
            for table in PARTITIONED_TABLES:
                conn.execute(
                    text(
                        f"create table if not exists {partition_name(table, (year, month))} "
                        f"partition of {table} for values from ('{lower.isoformat()}') "
                        f"to ('{upper.isoformat()}')"
                    )
                )
        done.append((year, month))
    return done


def ensure_partitions(engine: Engine, months: Iterable[Month]) -> None:
    """Makes sure these months have partitions; raises PartitionsBusy rather than wait."""
    missing = set(months) - _known_months
    if not missing:
        return
    _known_months.update(_existing_months(engine))
    missing -= _known_months
    if not missing:
        return
    try:
        _known_months.update(_create(engine, missing, lock_timeout=INGEST_LOCK_TIMEOUT))
    except OperationalError as error:
        if getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise PartitionsBusy("a partition is being created; retry") from None
        raise


@dataclass(frozen=True)
class PartitionsRun:
    created: int
    months: int


def months_ahead(now: datetime) -> list[Month]:
    """The months an event may fall in: from the oldest it may be (at most PREPARED_DAYS
    back) to MONTHS_AHEAD ahead."""
    max_age = get_settings().routeledger_max_event_age_days
    oldest = now - timedelta(days=min(max_age, PREPARED_DAYS))
    month, last = month_of(oldest), month_of(now)
    for _ in range(MONTHS_AHEAD):
        last = next_month(last)
    months = []
    while month <= last:
        months.append(month_start(month))
        month = next_month(month)
    return months


def run_partitions(engine: Engine, *, now: datetime | None = None) -> PartitionsRun:
    """Makes the partitions of every month an event may fall in (the `partitions` job)."""
    wanted = months_ahead(now or utc_now())
    existing = _existing_months(engine)
    created = _create(engine, set(wanted) - existing, lock_timeout=JOB_LOCK_TIMEOUT)
    _known_months.update(existing, created)
    return PartitionsRun(created=len(created), months=len(wanted))


def forget_known_partitions() -> None:
    """For tests that drop and recreate the schema within one process."""
    _known_months.clear()
