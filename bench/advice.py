"""Routing advice latency with many requests stored (default 10 million over 30 days), the
traffic written by PostgreSQL itself as bench/generate.py writes it (6 features, quality on
30 % of the requests, a router confidence on all), plus the real RouteLLM MMLU results
(14,042 items, two models) as one feature's offline evidence.

    .venv/bin/python -m bench.advice [--requests 10000000] [--days 30] [--calls 20] [--runs 20]

Measured: the rollup job (which now also fills the flow and quality rollups the advice reads)
and what one day of its raw rows costs each of those tables; GET /v1/advice/routing (every
feature, and one) and POST /v1/advice/what-if through one real API process, one call at a
time; the Advisor page and the Routing page (with its Sankey) as bench/dashboard_latency.py
times pages, cold and warm. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import text

from bench.common import REPO, api_server, create_project, scratch_database

ROUTELLM = REPO.parent / "shared" / "data" / "routellm"
MIXTRAL, GPT4 = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
EVIDENCE_FEATURE = "search"


def percentiles(times: list[float]) -> dict:
    times = sorted(times)
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[math.ceil(len(times) * 0.95) - 1], 1),
    }


def import_evals(project_id: int, path: Path) -> int:
    from app.db import transaction
    from app.services.evals import record_evals
    from tools.eval_import import results_from_file

    results = results_from_file(
        path, feature=EVIDENCE_FEATURE, task_type=None, tiers={MIXTRAL: "cheap", GPT4: "premium"}
    )
    with transaction() as conn:
        return record_evals(conn, project_id=project_id, items=results).accepted


def raw_day_ms(project_id: int, day: datetime) -> dict:
    """Milliseconds to compute one day of hourly rows from the raw rows, per rollup table:
    what each adds to the rollup job."""
    from app.db import connection
    from app.services.rollups import FLOW, HOURLY, QUALITY, ROUTING, raw_rows, raw_select

    figures = {}
    with connection() as conn:
        for table in (ROUTING, FLOW, QUALITY):
            sql = raw_select(
                table,
                bin_sql=HOURLY.bin_of(f"{table.raw_alias}.ts"),
                where=raw_rows(table, low=":low", high=":high"),
            )
            params = {"project_id": project_id, "low": day, "high": day + timedelta(days=1)}
            began = time.perf_counter()
            rows = conn.execute(text(f"select count(*) from ({sql}) rolled"), params).scalar()
            figures[table.name] = {"ms": round((time.perf_counter() - began) * 1000), "rows": rows}
    return figures


def api_latency(url: str, key: str, calls: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    asks = {
        "advice_all_features": ("GET", "/v1/advice/routing", {}),
        "advice_one_feature": ("GET", "/v1/advice/routing", {"params": {"feature": "summarize"}}),
        "advice_offline_feature": (
            "GET", "/v1/advice/routing", {"params": {"feature": EVIDENCE_FEATURE}}
        ),
        "what_if": (
            "POST", "/v1/advice/what-if",
            {"json": {"feature": "support-chat", "shares": {"cheap": 0.8, "premium": 0.2}}},
        ),
    }  # fmt: skip
    figures = {}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        for name, (method, path, options) in asks.items():
            times = []
            for _ in range(calls):
                began = time.perf_counter()
                response = client.request(method, path, **options)
                times.append((time.perf_counter() - began) * 1000)
                response.raise_for_status()
            figures[name] = percentiles(times)
            print(f"  {name:24} {figures[name]}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--calls", type=int, default=20, help="API calls of each kind")
    parser.add_argument("--runs", type=int, default=20, help="runs of each page")
    parser.add_argument("--evals", type=Path, default=ROUTELLM / "mmlu")
    options = parser.parse_args()

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with scratch_database("bench_advice") as url:
        from app.db import get_engine
        from app.services.rollups import run_rollup
        from bench import dashboard_latency
        from bench.generate import generate

        engine = get_engine()
        project_id, key = create_project("bench-advice")
        print(f"writing {options.requests:,} requests over {options.days} days ...", flush=True)
        generate_seconds = generate(
            engine, project_id=project_id, rows=options.requests, end=end, days=options.days
        )
        evals = import_evals(project_id, options.evals) if options.evals.exists() else 0
        print("rolling up ...", flush=True)
        began = time.perf_counter()
        run_rollup(engine)
        rollup_seconds = time.perf_counter() - began
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("vacuum analyze"))
            counts = {
                table: conn.execute(text(f"select count(*) from {table}")).scalar_one()
                for table in ("requests", "rollup_flow_hourly", "rollup_flow_daily",
                              "rollup_quality_hourly", "rollup_quality_daily")
            }  # fmt: skip
        one_day = raw_day_ms(project_id, end - timedelta(days=options.days // 2))
        print(f"  one day from raw rows: {one_day}", flush=True)
        print("calling the API ...", flush=True)
        with api_server(url) as (api_url, _):
            api = api_latency(api_url, key, options.calls)
        print("measuring pages ...", flush=True)
        pages = dashboard_latency.measure(
            project_id, "bench-advice", runs=options.runs, range_days=options.days,
            today=end.date(), only=("advisor", "routing"),
        )  # fmt: skip
    print(
        json.dumps(
            {
                "benchmark": "advice",
                "requests_stored": counts.pop("requests"),
                "days": options.days,
                "eval_results": evals,
                "generate_seconds": round(generate_seconds, 1),
                "rollup_seconds": round(rollup_seconds, 1),
                "rollup_rows": counts,
                "one_day_from_raw_rows": one_day,
                "api_calls_each": options.calls,
                "api": api,
                "page_runs": options.runs,
                "pages": pages,
            }
        )
    )


if __name__ == "__main__":
    main()
