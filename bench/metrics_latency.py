"""Metrics API latency over 10 million requests spread over 90 days.

    .venv/bin/python -m bench.metrics_latency [--rows 10000000] [--calls 25]

bench.generate writes the requests and attempts into a scratch database, one run_rollup
rolls them up, then a real API process (`routeledger api`, one worker) answers
GET /v1/metrics/routing (whole project, one feature, one customer, one experiment arm) and
GET /v1/metrics/customers over the last day, week, 30 days and 90 days, `--calls` times
each, one call at a time from an httpx client on the same machine. The last line printed is
one JSON object: p50/p95 over all calls, per window, per query (filter) and per both, in
milliseconds.

`--keep` leaves the database in place (its name is printed) and `--database NAME` measures
again over such a database, without writing and rolling up the rows again: to compare two
versions of the code on the same rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx

from bench.common import (
    api_server,
    create_key,
    create_project,
    existing_database,
    kept_project,
    scratch_database,
)
from bench.generate import generate

PROJECT = "bench-metrics"

WINDOWS = {"1d": 1, "7d": 7, "30d": 30, "90d": 90}
QUERIES = {
    "routing": ("/v1/metrics/routing", {}),
    "routing_feature": ("/v1/metrics/routing", {"feature": "support-chat"}),
    "routing_customer": ("/v1/metrics/routing", {"customer_id": "customer-7"}),
    "routing_arm": ("/v1/metrics/routing", {"experiment": "router-v4", "arm": "treatment"}),
    "customers": ("/v1/metrics/customers", {}),
}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def bench_project() -> tuple[int, str, datetime]:
    """The project of a kept database, a new key for it, and the end of its generated rows
    (the hour after the last request)."""
    project_id, last = kept_project(PROJECT)
    end = last.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return project_id, create_key(project_id), end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--database", help="a database kept by an earlier run, measured again")
    args = parser.parse_args()
    generated = rolled = None
    database = (
        existing_database(args.database)
        if args.database
        else scratch_database("bench_metrics", keep=args.keep)
    )
    with database as url:
        from app.db import get_engine
        from app.services.rollups import run_rollup

        engine = get_engine()
        if args.database:
            project_id, key, end = bench_project()
        else:
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            project_id, key = create_project(PROJECT)
            generated = generate(engine, project_id=project_id, rows=args.rows, end=end, days=90)
            started = time.perf_counter()
            run_rollup(engine)
            rolled = time.perf_counter() - started
            print(f"generated in {generated:.0f} s, rolled up in {rolled:.0f} s", file=sys.stderr)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("vacuum analyze")
            rows = conn.exec_driver_sql("select count(*) from requests").scalar()
            rollup_rows = conn.exec_driver_sql(
                "select count(*) from rollup_routing_hourly"
            ).scalar()
            daily_rows = conn.exec_driver_sql("select count(*) from rollup_daily").scalar()
        timings: dict[tuple[str, str], list[float]] = {}
        with (
            api_server(url) as (api_url, _pid),
            httpx.Client(base_url=api_url, timeout=300) as client,
        ):
            headers = {"Authorization": f"Bearer {key}"}
            for window, days in WINDOWS.items():
                period = {"start": (end - timedelta(days=days)).isoformat(), "end": end.isoformat()}
                for query, (path, filters) in QUERIES.items():
                    for _ in range(args.calls):
                        began = time.perf_counter()
                        response = client.get(path, params={**period, **filters}, headers=headers)
                        response.raise_for_status()
                        timings.setdefault((window, query), []).append(
                            (time.perf_counter() - began) * 1000
                        )

    def summary(select) -> dict:
        values = [t for (window, query), times in timings.items() if select(window, query)
                  for t in times]  # fmt: skip
        return {"p50_ms": round(percentile(values, 0.5), 1),
                "p95_ms": round(percentile(values, 0.95), 1)}  # fmt: skip

    print(
        json.dumps(
            {
                "benchmark": "metrics_latency",
                "requests": rows,
                "days": 90,
                "generate_seconds": generated and round(generated, 1),
                "rollup_seconds": rolled and round(rolled, 1),
                "rollup_routing_hourly_rows": rollup_rows,
                "rollup_daily_rows": daily_rows,
                "calls": sum(len(times) for times in timings.values()),
                **summary(lambda window, query: True),
                "by_window": {w: summary(lambda window, _, w=w: window == w) for w in WINDOWS},
                "by_query": {q: summary(lambda _, query, q=q: query == q) for q in QUERIES},
                "by_window_and_query": {
                    f"{w} {q}": summary(lambda window, query, w=w, q=q: (window, query) == (w, q))
                    for w in WINDOWS
                    for q in QUERIES
                },
            }
        )
    )


if __name__ == "__main__":
    main()
