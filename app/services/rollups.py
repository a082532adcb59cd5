"""Hourly rollups: the tables every metric reads, recomputed hour by hour from raw rows.

An hour is "dirty" when a request of that hour (by its timestamp) was received, or feedback
on one arrived, since the rollup job last looked. The job finds dirty hours through
requests.received_at and feedback.received_at, then recomputes each dirty hour of a project
whole, from raw rows: delete its rollup rows, insert them again. Recomputing whole hours makes
every run idempotent, and makes late events and late feedback re-roll only the hours they
touch. Two workers at once are serialised by advisory locks (one for finding dirty hours,
one per project for rolling), so they give the same result as one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import DateTime

HOUR = timedelta(hours=1)
# Rows are stamped received_at before their transaction commits; looking this far back each
# run catches an ingest transaction that committed after the watermark passed its stamp.
LOOKBACK = timedelta(minutes=2)
# Hours rolled in one transaction, so a large backlog does not become one huge transaction.
HOURS_PER_TRANSACTION = 48
ROLLUP_JOB = "rollup"
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


def take_dirty_hours(conn: Connection, *, job: str, project_id: int, limit: int) -> list[datetime]:
    """Removes and returns up to `limit` dirty hours of a project; the caller holds the
    project's lock for the job, and a rollback puts them back."""
    rows = conn.execute(
        text(
            """
            delete from dirty_hours where (job, project_id, hour) in (
                select job, project_id, hour from dirty_hours
                where job = :job and project_id = :project_id order by hour limit :limit
            ) returning hour
            """
        ),
        {"job": job, "project_id": project_id, "limit": limit},
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
_SUMMED = (
    "requests", "attempts", "fallbacks", "escalations", "failovers", "failed", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "unpriced_requests",
    "baseline_cost_usd", "baseline_unknown", "revenue_usd", "quality_sum", "quality_count",
)  # fmt: skip
_DIMENSIONS = (
    "feature, customer_id, intended_tier, served_tier, served_model, "
    "experiment_name, experiment_arm"
)

# One pass over the hours' requests grouped by dimensions and latency bucket, then the
# buckets folded into a sparse histogram per dimension group. The two arrays are built from
# the same rows in the same order, so they stay aligned; no ORDER BY inside array_agg, which
# would rule out hash aggregation.
_ROLL_REQUESTS = text(
    f"""
    insert into rollup_hourly (project_id, hour, {_DIMENSIONS}, {", ".join(_SUMMED)},
                               latency_buckets, latency_counts)
    select project_id, hour, {_DIMENSIONS}, {", ".join(f"sum({c})" for c in _SUMMED)},
        coalesce(array_agg(bucket) filter (where bucket is not null), '{{}}'),
        coalesce(array_agg(latency_count) filter (where bucket is not null),
                 '{{}}')
    from (
        select project_id, date_bin('1 hour', ts, {BIN_ORIGIN_SQL}) as hour, {_DIMENSIONS},
            width_bucket(latency_ms, cast(:bounds as float8[])) as bucket, {_REQUEST_SUMS}
        from requests
        where project_id = :project_id and ts >= :low and ts < :high
          and date_bin('1 hour', ts, {BIN_ORIGIN_SQL}) = any(:hours)
        group by project_id, hour, {_DIMENSIONS}, bucket
    ) by_bucket
    group by project_id, hour, {_DIMENSIONS}
    """
).bindparams(_HOURS)

_ROLL_ATTEMPTS = text(
    f"""
    insert into rollup_models_hourly (project_id, hour, feature, customer_id, experiment_name,
                                      experiment_arm, model, tier, attempts, cost_usd,
                                      unpriced_attempts)
    select a.project_id, date_bin('1 hour', a.ts, {BIN_ORIGIN_SQL}), r.feature, r.customer_id,
        r.experiment_name, r.experiment_arm, a.model, a.tier,
        count(*), coalesce(sum(a.cost_usd), 0), count(*) filter (where a.cost_usd is null)
    from attempts a
    join requests r using (project_id, ts, request_id)
    where a.project_id = :project_id and a.ts >= :low and a.ts < :high
      and r.project_id = :project_id and r.ts >= :low and r.ts < :high
      and date_bin('1 hour', a.ts, {BIN_ORIGIN_SQL}) = any(:hours)
    group by 1, 2, 3, 4, 5, 6, 7, 8
    """
).bindparams(_HOURS)


_ROUTING_DIMENSIONS = (
    "feature, intended_tier, served_tier, served_model, experiment_name, experiment_arm"
)

# The customer-free rollup, folded from the hours' rollup rows: each row's figures are
# counted once (with its first latency bucket), its histogram merged bucket by bucket.
_ROLL_ROUTING = text(
    f"""
    insert into rollup_routing_hourly (project_id, hour, {_ROUTING_DIMENSIONS},
                                       {", ".join(_SUMMED)}, latency_buckets, latency_counts)
    select project_id, hour, {_ROUTING_DIMENSIONS}, {", ".join(f"sum({c})" for c in _SUMMED)},
        coalesce(array_agg(bucket) filter (where bucket is not null), '{{}}'),
        coalesce(array_agg(latency_count) filter (where bucket is not null),
                 '{{}}')
    from (
        select project_id, hour, {_ROUTING_DIMENSIONS}, h.bucket,
            sum(h.n) as latency_count,
            {", ".join(f"sum({c}) filter (where coalesce(h.k, 1) = 1) as {c}" for c in _SUMMED)}
        from rollup_hourly
        left join lateral unnest(latency_buckets, latency_counts) with ordinality
            as h(bucket, n, k) on true
        where project_id = :project_id and hour >= :low and hour < :high
          and hour = any(:hours)
        group by project_id, hour, {_ROUTING_DIMENSIONS}, h.bucket
    ) by_bucket
    group by project_id, hour, {_ROUTING_DIMENSIONS}
    """
).bindparams(_HOURS)

_ROLL_ROUTING_MODELS = text(
    """
    insert into rollup_routing_models_hourly (project_id, hour, feature, experiment_name,
                                              experiment_arm, model, tier, attempts, cost_usd,
                                              unpriced_attempts)
    select project_id, hour, feature, experiment_name, experiment_arm, model, tier,
        sum(attempts), sum(cost_usd), sum(unpriced_attempts)
    from rollup_models_hourly
    where project_id = :project_id and hour >= :low and hour < :high and hour = any(:hours)
    group by 1, 2, 3, 4, 5, 6, 7
    """
).bindparams(_HOURS)

_ROLL_CUSTOMERS = text(
    """
    insert into rollup_customers_hourly (project_id, hour, customer_id, requests, input_tokens,
                                         output_tokens, cost_usd, unpriced_requests, revenue_usd)
    select project_id, hour, customer_id, sum(requests), sum(input_tokens), sum(output_tokens),
        sum(cost_usd), sum(unpriced_requests), sum(revenue_usd)
    from rollup_hourly
    where project_id = :project_id and hour >= :low and hour < :high and hour = any(:hours)
    group by 1, 2, 3
    """
).bindparams(_HOURS)

ROLLUP_TABLES = (
    "rollup_hourly",
    "rollup_models_hourly",
    "rollup_routing_hourly",
    "rollup_routing_models_hourly",
    "rollup_customers_hourly",
)


def reroll_hours(conn: Connection, *, project_id: int, hours: list[datetime]) -> None:
    """Recomputes the rollups of these hours of a project from raw rows."""
    params = {
        "project_id": project_id,
        "hours": hours,
        "low": min(hours),
        "high": max(hours) + HOUR,
        "bounds": list(LATENCY_BOUNDS_MS),
    }
    # Freshly ingested rows have no statistics yet: the planner then expects one row and
    # joins attempts to requests in a nested loop, quadratic in the hour's requests.
    conn.execute(text("set local enable_nestloop = off"))
    # That setting prices every plan with a lateral unnest (always a nested loop) so high
    # that PostgreSQL would JIT-compile it: half a second per statement for nothing.
    conn.execute(text("set local jit = off"))
    conn.execute(text("set local plan_cache_mode = force_custom_plan"))
    # Room to group in memory: the default 4 MB sends these sorts to disk.
    conn.execute(text("set local work_mem = '64MB'"))
    for table in ROLLUP_TABLES:
        conn.execute(
            text(
                f"delete from {table} where project_id = :project_id and hour = any(:hours)"
            ).bindparams(_HOURS),
            params,
        )
    conn.execute(_ROLL_REQUESTS, params)
    conn.execute(_ROLL_ATTEMPTS, params)
    conn.execute(_ROLL_ROUTING, params)
    conn.execute(_ROLL_ROUTING_MODELS, params)
    conn.execute(_ROLL_CUSTOMERS, params)
    mark_dirty(conn, job=MARGINS_JOB, project_id=project_id, hours=hours)


@dataclass(frozen=True)
class RollupRun:
    projects: int
    hours: int


def drain_dirty_hours(
    engine: Engine,
    *,
    job: str,
    limit: int,
    work: Callable[[Connection, int, list[datetime]], None],
) -> tuple[int, int]:
    """Hands every project's dirty hours of a job to `work`, up to `limit` at a time, each
    batch in one transaction under the project's lock for the job (a failure puts the batch
    back). Returns how many projects and hours were done."""
    with engine.connect() as conn:
        projects = dirty_projects(conn, job=job)
    hours_done = 0
    for project_id in projects:
        while True:
            with engine.begin() as conn:
                lock_project(conn, job=job, project_id=project_id)
                hours = take_dirty_hours(conn, job=job, project_id=project_id, limit=limit)
                if not hours:
                    break
                work(conn, project_id, hours)
            hours_done += len(hours)
    return len(projects), hours_done


def run_rollup(engine: Engine, *, now: datetime | None = None) -> RollupRun:
    """Rolls up everything received until `now` (default: the database's clock)."""
    with engine.begin() as conn:
        now = now or conn.execute(text("select now()")).scalar_one()
        collect_dirty_hours(conn, now=now)
    projects, hours = drain_dirty_hours(
        engine,
        job=ROLLUP_JOB,
        limit=HOURS_PER_TRANSACTION,
        work=lambda conn, project_id, hours: reroll_hours(conn, project_id=project_id, hours=hours),
    )
    return RollupRun(projects=projects, hours=hours)


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
