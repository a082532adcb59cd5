"""Hourly rollups: the tables every metric reads, recomputed hour by hour from raw rows.

An hour is "dirty" when a request of that hour (by its timestamp) was received, or feedback
on one arrived, since the rollup job last looked. The job finds dirty hours through
requests.received_at and feedback.received_at, then recomputes each dirty hour of a project
whole, from raw rows: delete its rollup rows, insert them again. Recomputing whole hours makes
every run idempotent, and makes late events and late feedback re-roll only the hours they
touch. Two workers at once are serialised by advisory locks (one for finding dirty hours,
one per project for rolling), so they give the same result as one.

Each hourly table has a daily twin, the same rows folded by UTC day, so that long periods read
a row per day instead of 24. A re-rolled hour marks its day; a marked day is folded again
from its hourly rows once it is over. Metrics read a day from the daily tables only when it
is not marked (see app.services.metrics.coverage), so the two tiers never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import DateTime

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# Rows are stamped received_at before their transaction commits; looking this far back each
# run catches an ingest transaction that committed after the watermark passed its stamp.
LOOKBACK = timedelta(minutes=2)
# Hours rolled in one transaction, so a large backlog does not become one huge transaction.
HOURS_PER_TRANSACTION = 48
DAYS_PER_TRANSACTION = 7
ROLLUP_JOB = "rollup"
# Days whose hourly rollups changed, to be folded into the daily tables once they are over.
ROLLUP_DAILY_JOB = "rollup_daily"
MARGINS_JOB = "margins"

# Latency buckets: bucket 0 is [0, 1 ms), bucket k is [2^((k-1)/4), 2^(k/4)) ms, the last one
# is everything from 2^20 ms (about 17 minutes) up: quarter-octaves, at most 19% wide.
LATENCY_BOUNDS_MS = tuple(2 ** (k / 4) for k in range(81))

_HOURS = bindparam("hours", type_=ARRAY(DateTime(timezone=True)))
# The origin of date_bin's hourly buckets, in Python and in SQL.
BIN_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
BIN_ORIGIN_SQL = "timestamptz '2000-01-01 00:00:00+00'"


def floor_hour(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def floor_day(at: datetime) -> datetime:
    """The UTC midnight starting the day of `at`."""
    return floor_hour(at).replace(hour=0)


def lock_project(conn: Connection, *, job: str, project_id: int) -> None:
    """Waits until no other transaction works on this job for this project."""
    conn.execute(
        text("select pg_advisory_xact_lock(hashtext(:job), :project_id)"),
        {"job": f"routeledger.{job}", "project_id": project_id},
    )


def mark_dirty(conn: Connection, *, job: str, project_id: int, hours: Iterable[datetime]) -> None:
    hours = sorted({floor_hour(h) for h in hours})
    if hours:
        conn.execute(
            text(
                "insert into dirty_hours (job, project_id, hour) "
                "select :job, :project_id, h from unnest(:hours) as h on conflict do nothing"
            ).bindparams(_HOURS),
            {"job": job, "project_id": project_id, "hours": hours},
        )


def advance_watermark(conn: Connection, *, job: str, until: datetime) -> datetime:
    """Moves the job's watermark to `until`; returns where it was (the epoch at first)."""
    previous = conn.execute(
        text("select watermark from job_watermarks where job = :job for update"), {"job": job}
    ).scalar()
    conn.execute(
        text(
            "insert into job_watermarks (job, watermark) values (:job, :until) "
            "on conflict (job) do update set watermark = excluded.watermark"
        ),
        {"job": job, "until": until},
    )
    return previous or datetime(2000, 1, 1, tzinfo=UTC)


def collect_dirty_hours(conn: Connection, *, now: datetime) -> None:
    """Marks the hours of everything received since the last collection as dirty."""
    conn.execute(text("select pg_advisory_xact_lock(hashtext('routeledger.rollup.collect'))"))
    since = advance_watermark(conn, job=ROLLUP_JOB, until=now) - LOOKBACK
    conn.execute(
        text(
            f"""
            insert into dirty_hours (job, project_id, hour)
            select distinct :job, project_id, date_bin('1 hour', ts, {BIN_ORIGIN_SQL})
            from requests where received_at >= :since and received_at < :until
            union
            select distinct :job, project_id, date_bin('1 hour', request_ts, {BIN_ORIGIN_SQL})
            from feedback where received_at >= :since and received_at < :until
            on conflict do nothing
            """
        ),
        {"job": ROLLUP_JOB, "since": since, "until": now},
    )


def take_dirty_hours(
    conn: Connection, *, job: str, project_id: int, limit: int, before: datetime | None = None
) -> list[datetime]:
    """Removes and returns up to `limit` dirty hours of a project (before `before`, when
    given); the caller holds the project's lock for the job, and a rollback puts them back."""
    rows = conn.execute(
        text(
            """
            delete from dirty_hours where (job, project_id, hour) in (
                select job, project_id, hour from dirty_hours
                where job = :job and project_id = :project_id
                  and (cast(:before as timestamptz) is null or hour < :before)
                order by hour limit :limit
            ) returning hour
            """
        ),
        {"job": job, "project_id": project_id, "limit": limit, "before": before},
    )
    return sorted(row.hour for row in rows)


def dirty_projects(conn: Connection, *, job: str) -> list[int]:
    rows = conn.execute(
        text("select distinct project_id from dirty_hours where job = :job order by 1"),
        {"job": job},
    )
    return [row.project_id for row in rows]


_REQUEST_SUMS = """
    count(*) as requests,
    sum(attempt_count) as attempts,
    count(*) filter (where is_fallback) as fallbacks,
    count(*) filter (where is_escalation) as escalations,
    count(*) filter (where is_failover) as failovers,
    count(*) filter (where is_failed) as failed,
    sum(input_tokens) as input_tokens,
    sum(output_tokens) as output_tokens,
    sum(cache_read_tokens) as cache_read_tokens,
    sum(cache_write_tokens) as cache_write_tokens,
    sum(cost_usd) as cost_usd,
    count(*) filter (where is_unpriced) as unpriced_requests,
    coalesce(sum(baseline_cost_usd), 0) as baseline_cost_usd,
    count(*) filter (where baseline_cost_usd is null) as baseline_unknown,
    coalesce(sum(revenue_usd), 0) as revenue_usd,
    coalesce(sum(quality_score), 0) as quality_sum,
    count(quality_score) as quality_count,
    count(latency_ms) as latency_count
"""
_REQUEST_FIGURES = (
    "requests", "attempts", "fallbacks", "escalations", "failovers", "failed", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "unpriced_requests",
    "baseline_cost_usd", "baseline_unknown", "revenue_usd", "quality_sum", "quality_count",
)  # fmt: skip
_ATTEMPT_FIGURES = ("attempts", "cost_usd", "unpriced_attempts")
_ROUTING = ("intended_tier", "served_tier", "served_model", "experiment_name", "experiment_arm")
_EXPERIMENT = ("experiment_name", "experiment_arm")


@dataclass(frozen=True)
class Grain:
    """A rollup bin size: the tables' name suffix, their bin column, the bin's width."""

    suffix: str
    column: str
    width: timedelta

    @property
    def width_sql(self) -> str:
        return f"interval '{int(self.width.total_seconds())} seconds'"


HOURLY = Grain("hourly", "hour", HOUR)
DAILY = Grain("daily", "day", DAY)


@dataclass(frozen=True)
class RollupTable:
    """An hourly rollup table and its daily twin (`{name}_hourly`, `{name}_daily`, binned by
    their `hour` and `day` columns): what they group by, what they sum, and whether they keep
    a latency histogram."""

    name: str
    dimensions: tuple[str, ...]
    figures: tuple[str, ...]
    histogram: bool = False

    def at(self, grain: Grain) -> str:
        """The table of this grain."""
        return f"{self.name}_{grain.suffix}"

    @property
    def hourly(self) -> str:
        return self.at(HOURLY)

    @property
    def columns(self) -> tuple[str, ...]:
        histogram = ("latency_buckets", "latency_counts") if self.histogram else ()
        return (*self.dimensions, *self.figures, *histogram)


# Requests by feature, customer and route; the same without the customer (what metrics read
# when no customer is asked for: many times fewer rows); attempts by model, with and without
# the customer; and the customers' own figures.
REQUESTS = RollupTable("rollup", ("feature", "customer_id", *_ROUTING), _REQUEST_FIGURES, True)
ROUTING = RollupTable("rollup_routing", ("feature", *_ROUTING), _REQUEST_FIGURES, True)
ATTEMPTS = RollupTable(
    "rollup_models", ("feature", "customer_id", *_EXPERIMENT, "model", "tier"), _ATTEMPT_FIGURES
)
ROUTING_ATTEMPTS = RollupTable(
    "rollup_routing_models", ("feature", *_EXPERIMENT, "model", "tier"), _ATTEMPT_FIGURES
)
CUSTOMERS = RollupTable(
    "rollup_customers",
    ("customer_id",),
    ("requests", "input_tokens", "output_tokens", "cost_usd", "unpriced_requests", "revenue_usd"),
)
ROLLUPS = (REQUESTS, ROUTING, ATTEMPTS, ROUTING_ATTEMPTS, CUSTOMERS)

_BINS = bindparam("bins", type_=ARRAY(DateTime(timezone=True)))
_HISTOGRAM_ARRAYS = """
    coalesce(array_agg(bucket) filter (where bucket is not null), '{}'),
    coalesce(array_agg(latency_count) filter (where bucket is not null), '{}')
"""


def _roll_requests(table: RollupTable) -> TextClause:
    """The requests of the hours `:bins` rolled into `table`: one pass grouped by its
    dimensions and the latency bucket, then the buckets folded into a sparse histogram per
    group. The two arrays are built from the same rows in the same order, so they stay
    aligned; no ORDER BY inside array_agg, which would rule out hash aggregation."""
    dimensions = ", ".join(table.dimensions)
    bin_of_ts = f"date_bin('1 hour', ts, {BIN_ORIGIN_SQL})"
    return text(
        f"""
        insert into {table.hourly} (project_id, hour, {", ".join(table.columns)})
        select project_id, bin, {dimensions}, {", ".join(f"sum({c})" for c in table.figures)},
            {_HISTOGRAM_ARRAYS}
        from (
            select project_id, {bin_of_ts} as bin, {dimensions},
                width_bucket(latency_ms, cast(:bounds as float8[])) as bucket, {_REQUEST_SUMS}
            from requests
            where project_id = :project_id and ts >= :low and ts < :high
              and {bin_of_ts} = any(:bins)
            group by project_id, bin, {dimensions}, bucket
        ) by_bucket
        group by project_id, bin, {dimensions}
        """
    ).bindparams(_BINS)


_ROLL_ATTEMPTS = text(
    f"""
    insert into {ATTEMPTS.hourly} (project_id, hour, {", ".join(ATTEMPTS.columns)})
    select a.project_id, date_bin('1 hour', a.ts, {BIN_ORIGIN_SQL}), r.feature, r.customer_id,
        r.experiment_name, r.experiment_arm, a.model, a.tier,
        count(*), coalesce(sum(a.cost_usd), 0), count(*) filter (where a.cost_usd is null)
    from attempts a
    join requests r using (project_id, ts, request_id)
    where a.project_id = :project_id and a.ts >= :low and a.ts < :high
      and r.project_id = :project_id and r.ts >= :low and r.ts < :high
      and date_bin('1 hour', a.ts, {BIN_ORIGIN_SQL}) = any(:bins)
    group by 1, 2, 3, 4, 5, 6, 7, 8
    """
).bindparams(_BINS)


def _fold(table: RollupTable, *, source: str, grain: Grain) -> TextClause:
    """`table`'s rows of the bins `:bins` of `grain`, folded from the hourly rows of
    `source`, a table with at least its columns. A histogram is merged bucket by bucket, each
    source row's other figures counted once (with its first bucket)."""
    dimensions = ", ".join(table.dimensions)
    bin_of_hour = f"date_bin({grain.width_sql}, hour, {BIN_ORIGIN_SQL})"
    where = (
        f"project_id = :project_id and hour >= :low and hour < :high and {bin_of_hour} = any(:bins)"
    )
    insert = (
        f"insert into {table.at(grain)} (project_id, {grain.column}, {', '.join(table.columns)})"
    )
    sums = ", ".join(f"sum({c})" for c in table.figures)
    if not table.histogram:
        return text(
            f"""
            {insert}
            select project_id, {bin_of_hour} as bin, {dimensions}, {sums}
            from {source} where {where}
            group by project_id, bin, {dimensions}
            """
        ).bindparams(_BINS)
    first_bucket_only = ", ".join(
        f"sum({c}) filter (where coalesce(h.k, 1) = 1) as {c}" for c in table.figures
    )
    return text(
        f"""
        {insert}
        select project_id, bin, {dimensions}, {sums}, {_HISTOGRAM_ARRAYS}
        from (
            select project_id, {bin_of_hour} as bin, {dimensions}, h.bucket,
                sum(h.n) as latency_count, {first_bucket_only}
            from {source}
            left join lateral unnest(latency_buckets, latency_counts) with ordinality
                as h(bucket, n, k) on true
            where {where}
            group by project_id, bin, {dimensions}, h.bucket
        ) by_bucket
        group by project_id, bin, {dimensions}
        """
    ).bindparams(_BINS)


# Each hourly table from raw rows or from a wider hourly table: the order matters.
_HOURLY = (
    _roll_requests(REQUESTS),
    _roll_requests(ROUTING),
    _ROLL_ATTEMPTS,
    _fold(ROUTING_ATTEMPTS, source=ATTEMPTS.hourly, grain=HOURLY),
    _fold(CUSTOMERS, source=REQUESTS.hourly, grain=HOURLY),
)
# Each daily table folded from its hourly twin.
_DAILY = tuple(_fold(table, source=table.hourly, grain=DAILY) for table in ROLLUPS)


def _tune_for_rollups(conn: Connection) -> None:
    # Freshly ingested rows have no statistics yet: the planner then expects one row and
    # joins attempts to requests in a nested loop, quadratic in the hour's requests.
    conn.execute(text("set local enable_nestloop = off"))
    # That setting prices every plan with a lateral unnest (always a nested loop) so high
    # that PostgreSQL would JIT-compile it: half a second per statement for nothing.
    conn.execute(text("set local jit = off"))
    conn.execute(text("set local plan_cache_mode = force_custom_plan"))
    # Room to group in memory: the default 4 MB sends these sorts to disk.
    conn.execute(text("set local work_mem = '64MB'"))


def _replace(conn: Connection, *, grain: Grain, statements, project_id: int, bins: list[datetime],
             **params) -> None:  # fmt: skip
    """Deletes the rollup rows of these bins of one grain and runs the statements that
    insert them again."""
    params = {**params, "project_id": project_id, "bins": bins, "low": min(bins),
              "high": max(bins) + grain.width}  # fmt: skip
    _tune_for_rollups(conn)
    for table in ROLLUPS:
        conn.execute(
            text(
                f"delete from {table.at(grain)} "
                f"where project_id = :project_id and {grain.column} = any(:bins)"
            ).bindparams(_BINS),
            params,
        )
    for statement in statements:
        conn.execute(statement, params)


def reroll_hours(conn: Connection, *, project_id: int, hours: list[datetime]) -> None:
    """Recomputes the hourly rollups of these hours of a project from raw rows, and marks
    their days for the daily fold and for the margins."""
    _replace(conn, grain=HOURLY, statements=_HOURLY, project_id=project_id, bins=hours,
             bounds=list(LATENCY_BOUNDS_MS))  # fmt: skip
    mark_dirty(conn, job=MARGINS_JOB, project_id=project_id, hours=hours)
    mark_dirty(conn, job=ROLLUP_DAILY_JOB, project_id=project_id, hours=map(floor_day, hours))


def fold_days(conn: Connection, *, project_id: int, days: list[datetime]) -> None:
    """Recomputes the daily rollups of these (whole, UTC) days from their hourly rows."""
    _replace(conn, grain=DAILY, statements=_DAILY, project_id=project_id, bins=days)


@dataclass(frozen=True)
class RollupRun:
    projects: int
    hours: int
    days: int


def drain_dirty_hours(
    engine: Engine,
    *,
    job: str,
    limit: int,
    work: Callable[[Connection, int, list[datetime]], None],
    lock: str | None = None,
    before: datetime | None = None,
) -> tuple[int, int]:
    """Hands every project's dirty hours of a job (those before `before`, when given) to
    `work`, up to `limit` at a time, each batch in one transaction under the project's lock
    (the job's own, or `lock`'s); a failure puts the batch back. Returns how many projects
    and hours were done."""
    with engine.connect() as conn:
        projects = dirty_projects(conn, job=job)
    hours_done = 0
    for project_id in projects:
        while True:
            with engine.begin() as conn:
                lock_project(conn, job=lock or job, project_id=project_id)
                hours = take_dirty_hours(
                    conn, job=job, project_id=project_id, limit=limit, before=before
                )
                if not hours:
                    break
                work(conn, project_id, hours)
            hours_done += len(hours)
    return len(projects), hours_done


def run_rollup(engine: Engine, *, now: datetime | None = None) -> RollupRun:
    """Rolls up everything received until `now` (default: the database's clock): the dirty
    hours, then the days that are over and whose hours changed."""
    with engine.begin() as conn:
        now = now or conn.execute(text("select now()")).scalar_one()
        collect_dirty_hours(conn, now=now)
    projects, hours = drain_dirty_hours(
        engine,
        job=ROLLUP_JOB,
        limit=HOURS_PER_TRANSACTION,
        work=lambda conn, project_id, hours: reroll_hours(conn, project_id=project_id, hours=hours),
    )
    # The current day is folded once it is over: until then metrics read its hours (a day
    # waiting here is read hour by hour). The same lock as the hours: a day is never folded
    # while one of its hours is being re-rolled.
    _, days = drain_dirty_hours(
        engine,
        job=ROLLUP_DAILY_JOB,
        limit=DAYS_PER_TRANSACTION,
        work=lambda conn, project_id, days: fold_days(conn, project_id=project_id, days=days),
        lock=ROLLUP_JOB,
        before=floor_day(now),
    )
    return RollupRun(projects=projects, hours=hours, days=days)


# --- reading the latency histogram -----------------------------------------------------


def latency_quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The q-quantile of a latency histogram {bucket: count}, interpolated linearly within
    its bucket; None for an empty histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        count = histogram[bucket]
        if count and seen + count >= rank:
            low, high = bucket_bounds(bucket)
            return low + (high - low) * (rank - seen) / count
        seen += count
    return bucket_bounds(max(histogram))[1]


def bucket_bounds(bucket: int) -> tuple[float, float]:
    last = len(LATENCY_BOUNDS_MS)
    if bucket == 0:
        return 0.0, LATENCY_BOUNDS_MS[0]
    if bucket >= last:
        return LATENCY_BOUNDS_MS[-1], LATENCY_BOUNDS_MS[-1]
    return LATENCY_BOUNDS_MS[bucket - 1], LATENCY_BOUNDS_MS[bucket]
