"""Dashboard server time per page with many requests stored (default 10 million over 30
days): each page's layout and main callback, run as the server runs them (services,
figures, JSON), with the read cache empty, so every figure comes from PostgreSQL.

    .venv/bin/python -m bench.dashboard_latency [--requests 10000000] [--days 30]
        [--customers 100] [--runs 20] [--range-days 7] [--keep | --database NAME]
        [--pages customer,routing]

Rows are written straight into requests and attempts with SQL (ingest has its own
benchmark), then rolled up by the real rollup job. The last line printed is one JSON
object with the figures.

`--keep` leaves the database in place (its name is printed) and `--database NAME` measures
again over such a database, without writing and rolling up the rows again: to compare two
versions of the code on the same rows. The pages show the period that ends on the day of
the last stored request.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import statistics
import time
from datetime import UTC, date, datetime, timedelta

from plotly.io.json import to_json_plotly
from sqlalchemy import text

from bench.common import create_project, existing_database, kept_project, scratch_database

PROJECT = "bench-dashboard"
FEATURES = ("support-chat", "summarize", "code-assist", "search-answer")
_INSERT = """
with rows as (
    select i, cast(:start as timestamptz) + (i - :first) * :step * interval '1 microsecond' as ts,
           random() as r1, random() as r2, random() as r3, random() as r4, random() as r5
    from generate_series(cast(:first as bigint), cast(:last as bigint)) as i
), shaped as (
    select *, (array['support-chat','summarize','code-assist','search-answer'])[1 + i % 4]
              as feature,
           case when r1 < 0.7 then 1 when r1 < 0.93 then 2 else 3 end as intended_rank,
           (r2 < 0.08) as escalated, (r3 < 0.02) as failed_over,
           200 + (r4 * 2000)::int as input_tokens, 50 + (r5 * 600)::int as output_tokens
    from rows
), priced as (
    select *, least(intended_rank + escalated::int, 3) as served_rank
    from shaped
)
insert into {table}
select {columns}
from priced
"""
_REQUEST_COLUMNS = """
    :project_id, ts, md5(i::text)::uuid, now(),
    'customer-' || lpad((i * 7919 % :customers)::text, 3, '0'),
    feature, null, null,
    (array['cheap','standard','premium'])[intended_rank],
    (array['cheap','standard','premium'])[served_rank],
    (array['gpt-4o-mini','claude-sonnet-4','claude-opus-4'])[served_rank],
    (array['openai','anthropic','anthropic'])[served_rank],
    1 + escalated::int + failed_over::int, escalated or failed_over,
    served_rank > intended_rank, failed_over, false,
    input_tokens, output_tokens, 0, 0, 300 + r4 * 3000,
    (input_tokens + output_tokens)
        * (array[0.0000004, 0.000006, 0.00003]::numeric[])[served_rank],
    0, false, (input_tokens + output_tokens) * 0.00015, null,
    case when r5 < 0.3 then 0.6 + r5 end, case when r5 < 0.3 then 'judge' end, null,
    'rules', 'v3', r1, 2.0,
    case when feature = 'code-assist' then 'router-v4' end,
    case when feature = 'code-assist' then
        (case when r3 < 0.5 then 'control' else 'treatment' end) end,
    null
"""
_ATTEMPT_COLUMNS = """
    :project_id, ts, md5(i::text)::uuid, 0,
    (array['gpt-4o-mini','claude-sonnet-4','claude-opus-4'])[served_rank],
    (array['openai','anthropic','anthropic'])[served_rank],
    (array['cheap','standard','premium'])[served_rank], 'ok', null,
    input_tokens, output_tokens, 0, 0, 300 + r4 * 3000,
    (input_tokens + output_tokens)
        * (array[0.0000004, 0.000006, 0.00003]::numeric[])[served_rank],
    'client', null,
    feature, 'customer-' || lpad((i * 7919 % :customers)::text, 3, '0'),
    case when feature = 'code-assist' then 'router-v4' end,
    case when feature = 'code-assist' then
        (case when r3 < 0.5 then 'control' else 'treatment' end) end
"""


def load(*, project_id: int, requests: int, days: int, customers: int, end: datetime) -> float:
    """Writes the rows day by day; returns the seconds it took."""
    from app.db import get_engine, transaction
    from app.periods import HOUR
    from app.services.partitions import ensure_partitions, month_start
    from app.services.rollups import ROLLUP_JOB, mark_written

    engine = get_engine()
    start = end - timedelta(days=days)
    ensure_partitions(engine, {month_start(start + timedelta(days=d)) for d in range(days + 1)})
    per_day = requests // days
    step = int(86_400_000_000 / per_day)
    began = time.perf_counter()
    for day in range(days):
        first, last = day * per_day, (day + 1) * per_day - 1
        params = {
            "project_id": project_id,
            "start": start + timedelta(days=day),
            "first": first,
            "last": last,
            "step": step,
            "customers": customers,
        }
        with transaction() as conn:
            for table, columns in (("requests", _REQUEST_COLUMNS), ("attempts", _ATTEMPT_COLUMNS)):
                conn.execute(text(_INSERT.format(table=table, columns=columns)), params)
            # As ingest does: the hours written, marked in the same transaction.
            hours = [params["start"] + HOUR * h for h in range(24)]
            mark_written(conn, job=ROLLUP_JOB, project_id=project_id, hours=hours)
        print(f"  day {day + 1}/{days}: {last + 1:,} requests", flush=True)
    with engine.begin() as conn:
        conn.execute(text("analyze requests; analyze attempts"))
    return time.perf_counter() - began


def prepare(project_id: int, *, start: datetime) -> None:
    from app.db import transaction
    from app.schemas import AlertRuleIn, AlertScope, PolicyIn
    from app.services import alerts, policies

    with transaction() as conn:
        for feature in FEATURES:
            policy = PolicyIn(
                split={"cheap": 0.7, "standard": 0.25, "premium": 0.05},
                effective_from=start.isoformat(),
            )
            policies.set_policy(conn, project_id=project_id, feature=feature, policy=policy)
        alerts.create_rule(
            conn,
            project_id=project_id,
            rule=AlertRuleIn(
                name="escalation spike",
                metric="escalation_rate",
                scope=AlertScope(feature="support-chat"),
                window_minutes=60,
                baseline_multiplier=2,
                min_requests=50,
                cooldown_minutes=60,
                recipients=["pm@example.com"],
            ),
        )


def page_calls(range_days: int, today: date) -> dict:
    """page -> (layout function, its query, callback, the callback's arguments)."""
    from dashboards import flow
    from dashboards.pages import (
        advisor,
        alerts,
        customer,
        customers,
        drift,
        experiments,
        exports,
        models,
        overview,
        prices,
        routing,
    )

    end = today.isoformat()
    start = (today - timedelta(days=range_days - 1)).isoformat()
    period = {"start": start, "end": end}
    shares = [{"type": routing.POLICY_SHARE, "tier": t} for t in ("cheap", "standard", "premium")]
    return {
        "overview": (overview.layout, period, overview.update, (start, end, None)),
        "routing": (
            routing.layout,
            {**period, "feature": "support-chat"},
            # Its callbacks, one after the other (a browser asks for them at once).
            lambda *args: (routing.update(*args), flow.update_flow(*args[:3])),
            (start, end, "support-chat", None, shares),
        ),
        "advisor": (
            advisor.layout,
            period,
            lambda *args: (advisor.update(*args), advisor.router_calibration(*args)),
            (start, end, None),
        ),
        "customers": (customers.layout, period, customers.update, (start, end, "")),
        "customer": (
            customer.layout,
            {**period, "customer_id": "customer-007"},
            customer.update,
            (start, end, "customer-007"),
        ),
        "models": (models.layout, period, models.update, (start, end, None)),
        "experiments": (
            experiments.layout,
            {**period, "experiment": "router-v4"},
            experiments.update,
            (start, end, "router-v4"),
        ),
        "drift": (drift.layout, period, drift.update, (start, end, "tier", None)),
        "alerts": (alerts.layout, period, alerts.update, (start, end, None)),
        "prices": (prices.layout, {}, prices.update, (None,)),
        "exports": (exports.layout, period, exports.update, (start, end, "day")),
    }


def measure(
    project_id: int,
    project_name: str,
    *,
    runs: int,
    range_days: int,
    today: date,
    only: tuple[str, ...] | None = None,
) -> dict:
    """Per page (of page_calls, or those named in `only`): p50 and p95 with the read cache
    empty (cold: every figure from PostgreSQL) and with it filled (warm: a second view within
    CACHE_SECONDS)."""
    from flask import g

    from app.services.users import Membership
    from app.settings import get_settings
    from dashboards import data
    from dashboards.app import create_app

    # The pages are called in this process, no session is signed: any real key will do.
    os.environ.setdefault("ROUTELEDGER_SECRET_KEY", secrets.token_hex(32))
    get_settings.cache_clear()
    app = create_app()
    membership = Membership(project_id, project_name, "admin")
    results = {}
    pages = page_calls(range_days, today)  # once the app is there to register them
    for page, (layout, query, update, args) in pages.items():
        if only is not None and page not in only:
            continue
        figures = {}
        for state in ("cold", "warm"):
            times = []
            for _ in range(runs):
                if state == "cold":
                    data.clear()
                with app.server.test_request_context("/"):
                    g.memberships, g.membership, g.email = [membership], membership, "bench"
                    began = time.perf_counter()
                    to_json_plotly(layout(**query))
                    to_json_plotly(update(*args))
                    times.append((time.perf_counter() - began) * 1000)
            times.sort()
            figures[f"{state}_p50_ms"] = round(statistics.median(times), 1)
            figures[f"{state}_p95_ms"] = round(times[math.ceil(len(times) * 0.95) - 1], 1)
        results[page] = figures
        print(f"  {page:12} " + "  ".join(f"{k} {v:7.1f}" for k, v in figures.items()), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--range-days", type=int, default=7, help="the period the pages show")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--database", help="a database kept by an earlier run, measured again")
    parser.add_argument("--pages", help="comma-separated pages to measure (default: all)")
    options = parser.parse_args()

    load_seconds = rollup_seconds = None
    database = (
        existing_database(options.database)
        if options.database
        else scratch_database("bench_dashboard", keep=options.keep)
    )
    with database:
        from app.db import get_engine
        from app.services.rollups import run_rollup

        if options.database:
            project_id, last = kept_project(PROJECT)
            today = last.astimezone(UTC).date()
        else:
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            today = end.date()
            project_id, _ = create_project(PROJECT)
            prepare(project_id, start=end - timedelta(days=options.days))
            print(f"writing {options.requests:,} requests over {options.days} days ...", flush=True)
            load_seconds = load(
                project_id=project_id,
                requests=options.requests,
                days=options.days,
                customers=options.customers,
                end=end,
            )
            print("rolling up ...", flush=True)
            began = time.perf_counter()
            run_rollup(get_engine())
            rollup_seconds = time.perf_counter() - began
        # What autovacuum does soon after a load this size (statistics, visibility map).
        with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("vacuum analyze"))
            stored = conn.execute(text("select count(*) from requests")).scalar_one()
            customers = conn.execute(
                text("select count(distinct customer_id) from rollup_customers_daily")
            ).scalar_one()
            rollup_rows = conn.execute(
                text("select count(*) from rollup_routing_hourly")
            ).scalar_one()
        print(f"measuring pages over the last {options.range_days} days ...", flush=True)
        pages = measure(
            project_id,
            PROJECT,
            runs=options.runs,
            range_days=options.range_days,
            today=today,
            only=tuple(options.pages.split(",")) if options.pages else None,
        )
    print(
        json.dumps(
            {
                "benchmark": "dashboard_latency",
                "requests_stored": stored,
                "rollup_routing_hourly_rows": rollup_rows,
                "customers": customers,
                "range_days": options.range_days,
                "runs_per_page": options.runs,
                "load_seconds": load_seconds and round(load_seconds, 1),
                "rollup_seconds": rollup_seconds and round(rollup_seconds, 1),
                "pages": pages,
                "worst_cold_p95_ms": max(p["cold_p95_ms"] for p in pages.values()),
                "worst_warm_p95_ms": max(p["warm_p95_ms"] for p in pages.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
