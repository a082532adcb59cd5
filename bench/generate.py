"""Synthetic routed traffic written straight into requests and attempts, for benchmarks.

    .venv/bin/python -m bench.generate --rows 1000000 --days 90   (into DATABASE_URL)

PostgreSQL generates the rows itself (INSERT ... SELECT over generate_series, random()
seeded), a million per transaction: 6 features, 300 customers with a skewed share of the
traffic, 70/23/7 % intended cheap/standard/premium, 20 % fallbacks that escalate one tier,
1 % failed, an experiment with two arms on half the traffic, log-spread latencies, quality
on 30 % and revenue on 10 % of the requests. Each request has one or two attempts whose
costs add up to the request's. The hours written are marked for the rollup, as ingest does.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from math import ceil

from sqlalchemy import Engine, text

CHUNK = 1_000_000

_REQUESTS = """
insert into requests (
    project_id, ts, request_id, received_at, customer_id, feature, intended_tier,
    served_tier, served_model, served_provider, attempt_count, is_fallback, is_escalation,
    is_failover, is_failed, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    latency_ms, cost_usd, unpriced_attempts, is_unpriced, baseline_cost_usd, quality_score,
    revenue_usd, router_strategy, router_version, router_confidence, experiment_name,
    experiment_arm)
select :project_id, ts, gen_random_uuid(), now(), customer_id, feature, intended,
       case when failed then null else served end,
       case when failed then null
            else (array['gpt-4o-mini', 'claude-sonnet-4', 'gpt-4o'])[served_rank] end,
       case when failed then null else 'openai' end,
       1 + fallback::int, fallback, fallback and not failed and served_rank > intended_rank,
       failed, failed, input_tokens, output_tokens, 0, 0, latency_ms,
       (input_tokens * 0.00000015 + output_tokens * 0.0000006) * (1 + fallback::int),
       0, false,
       case when failed then 0 else input_tokens * 0.0000025 + output_tokens * 0.00001 end,
       quality, revenue, 'rules', 'v3', confidence,
       case when in_experiment then 'router-v4' end,
       case when in_experiment then (array['control', 'treatment'])[arm] end
from (
    select *, (array['cheap', 'standard', 'premium'])[served_rank] as served
    from (
        select *, least(intended_rank + fallback::int, 3) as served_rank,
               (array['cheap', 'standard', 'premium'])[intended_rank] as intended
        from (
            select :start + floor((:offset + i)::numeric * :span_us / :total)
                            * interval '1 microsecond' as ts,
                   'customer-' || floor(pow(random(), 3) * 300)::int as customer_id,
                   (array['support-chat', 'search', 'summarize', 'code-review', 'agent',
                          'translate'])[1 + floor(random() * 6)::int] as feature,
                   case when r < 0.70 then 1 when r < 0.93 then 2 else 3 end as intended_rank,
                   random() < 0.2 as fallback,
                   random() < 0.01 as failed,
                   50 + floor(pow(random(), 2) * 4000)::int as input_tokens,
                   10 + floor(random() * 800)::int as output_tokens,
                   exp(5 + random() * 4) as latency_ms,
                   case when random() < 0.3 then random() end as quality,
                   case when random() < 0.1 then 0.004 end as revenue,
                   random() as confidence,
                   random() < 0.5 as in_experiment,
                   1 + floor(random() * 2)::int as arm
            -- One draw per row (an uncorrelated lateral subquery ran once per chunk: every
            -- request of a million had the same intended tier).
            from (select i, random() as r from generate_series(0, :rows - 1) as i) as draw
        ) drawn
    ) ranked
) generated
"""

# The first attempt: the served one, or the cheap model whose answer was rejected before a
# fallback; the second (fallbacks only): the served one.
_ATTEMPTS = """
insert into attempts (
    project_id, ts, request_id, position, model, provider, tier, status, input_tokens,
    output_tokens, cache_read_tokens, cache_write_tokens, latency_ms, cost_usd, cost_source,
    feature, customer_id, experiment_name, experiment_arm)
select project_id, ts, request_id, 0,
       case when is_fallback or is_failed then 'gpt-4o-mini' else served_model end, 'openai',
       case when is_fallback or is_failed then intended_tier else served_tier end,
       case when is_failed then 'error' when is_fallback then 'rejected' else 'ok' end,
       input_tokens, output_tokens, 0, 0, latency_ms / attempt_count,
       cost_usd / attempt_count, 'client', feature, customer_id, experiment_name, experiment_arm
from requests where project_id = :project_id and ts >= :low and ts < :high
union all
select project_id, ts, request_id, 1, coalesce(served_model, 'gpt-4o'), 'openai',
       coalesce(served_tier, 'premium'), case when is_failed then 'error' else 'ok' end,
       input_tokens, output_tokens, 0, 0, latency_ms / 2, cost_usd / 2, 'client', feature,
       customer_id, experiment_name, experiment_arm
from requests
where project_id = :project_id and ts >= :low and ts < :high and is_fallback
"""


def generate(
    engine: Engine, *, project_id: int, rows: int, end: datetime, days: float, seed: float = 0.42
) -> float:
    """Writes `rows` requests spread evenly over the `days` (or part of a day) before `end`;
    returns seconds."""
    from app.periods import HOUR, floor_hour
    from app.services.partitions import ensure_partitions, month_start
    from app.services.rollups import ROLLUP_JOB, mark_written

    start = end - timedelta(days=days)
    ensure_partitions(
        engine, {month_start(start + timedelta(days=d)) for d in range(ceil(days) + 1)}
    )
    span_us = round(days * 86_400 * 10**6)
    started = time.perf_counter()
    for offset in range(0, rows, CHUNK):
        count = min(CHUNK, rows - offset)
        low = start + timedelta(microseconds=offset * span_us // rows)
        high = start + timedelta(microseconds=(offset + count) * span_us // rows)
        with engine.begin() as conn:
            conn.execute(text("select setseed(:seed)"), {"seed": seed})
            conn.execute(
                text(_REQUESTS),
                {"project_id": project_id, "start": start, "offset": offset, "rows": count,
                 "total": rows, "span_us": span_us},
            )  # fmt: skip
            conn.execute(
                text(_ATTEMPTS),
                {"project_id": project_id, "low": low, "high": high},
            )
            # As ingest does: the hours written, marked in the same transaction.
            hours = [floor_hour(low) + HOUR * h for h in range(int((high - low) / HOUR) + 2)]
            mark_written(conn, job=ROLLUP_JOB, project_id=project_id, hours=hours)
    return time.perf_counter() - started


def main() -> None:
    from app.db import get_engine
    from bench.common import create_project

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    project_id, _ = create_project(f"bench-{int(time.time())}")
    seconds = generate(
        get_engine(), project_id=project_id, rows=args.rows, end=datetime.now(UTC), days=args.days
    )
    print(json.dumps({"project_id": project_id, "rows": args.rows, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
