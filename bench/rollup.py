"""Rollup throughput: 1,000,000 new requests (spread over 7 days) rolled up from scratch.

    .venv/bin/python -m bench.rollup [--rows 1000000] [--days 7]

bench.generate writes the requests and attempts into a scratch database, then one
`run_rollup` (what `routeledger jobs run rollup` and the worker run) finds the dirty hours
and recomputes them. Peak memory is the benchmark process's maximum RSS (the work is
PostgreSQL's). The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from datetime import UTC, datetime

from bench.common import create_project, scratch_database
from bench.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    with scratch_database("bench_rollup"):
        from app.db import get_engine
        from app.services.rollups import run_rollup

        engine = get_engine()
        project_id, _ = create_project("bench-rollup")
        generated = generate(
            engine, project_id=project_id, rows=args.rows, end=datetime.now(UTC), days=args.days
        )
        started = time.perf_counter()
        run = run_rollup(engine)
        seconds = time.perf_counter() - started
        again = time.perf_counter()
        run_rollup(engine)  # what a beat tick right after costs: nothing new to roll
        rerun_seconds = time.perf_counter() - again
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "benchmark": "rollup",
                "requests": args.rows,
                "days": args.days,
                "hours_rolled": run.hours,
                "days_folded": run.days,
                "generate_seconds": round(generated, 1),
                "rollup_seconds": round(seconds, 2),
                "requests_per_s": round(args.rows / seconds),
                "rerun_seconds": round(rerun_seconds, 2),
                "peak_rss_mib": round(peak_mib, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
