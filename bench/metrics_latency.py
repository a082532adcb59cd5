"""Metrics API latency over 10 million requests spread over 90 days.

    .venv/bin/python -m bench.metrics_latency [--rows 10000000] [--calls 25]

bench.generate writes the requests and attempts into a scratch database, one run_rollup
rolls them up, then a real API process (`routeledger api`, one worker) answers
GET /v1/metrics/routing (whole project, one feature, one customer, one experiment arm) and
GET /v1/metrics/customers over the last day, week, 30 days and 90 days, `--calls` times
each, one call at a time from an httpx client on the same machine. The last line printed is
one JSON object: p50/p95 per window and over all calls, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx

from bench.common import api_server, create_project, scratch_database
from bench.generate import generate

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--calls", type=int, default=25)
    args = parser.parse_args()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    with scratch_database("bench_metrics") as url:
        from app.db import get_engine
        from app.services.rollups import run_rollup

        engine = get_engine()
        project_id, key = create_project("bench-metrics")
        generated = generate(engine, project_id=project_id, rows=args.rows, end=end, days=90)
        started = time.perf_counter()
        run_rollup(engine)
        rolled = time.perf_counter() - started
        print(f"generated in {generated:.0f} s, rolled up in {rolled:.0f} s", file=sys.stderr)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("vacuum analyze")
            rollup_rows = conn.exec_driver_sql(
                "select count(*) from rollup_routing_hourly"
            ).scalar()
            daily_rows = conn.exec_driver_sql("select count(*) from rollup_daily").scalar()
        timings: dict[str, list[float]] = {}
        with (
            api_server(url) as (api_url, _pid),
            httpx.Client(base_url=api_url, timeout=300) as client,
        ):
            headers = {"Authorization": f"Bearer {key}"}
            for window, days in WINDOWS.items():
                period = {"start": (end - timedelta(days=days)).isoformat(), "end": end.isoformat()}
                for path, filters in QUERIES.values():
                    for _ in range(args.calls):
                        began = time.perf_counter()
                        response = client.get(path, params={**period, **filters}, headers=headers)
                        response.raise_for_status()
                        timings.setdefault(window, []).append((time.perf_counter() - began) * 1000)
    every = [t for values in timings.values() for t in values]
    print(
        json.dumps(
            {
                "benchmark": "metrics_latency",
                "requests": args.rows,
                "days": 90,
                "generate_seconds": round(generated, 1),
                "rollup_seconds": round(rolled, 1),
                "rollup_routing_hourly_rows": rollup_rows,
                "rollup_daily_rows": daily_rows,
                "calls": len(every),
                "p50_ms": round(percentile(every, 0.5), 1),
                "p95_ms": round(percentile(every, 0.95), 1),
                "by_window": {
                    window: {
                        "p50_ms": round(percentile(values, 0.5), 1),
                        "p95_ms": round(percentile(values, 0.95), 1),
                    }
                    for window, values in timings.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
