"""Requests export throughput: rows/s of GET /v1/exports/requests.csv streamed by a real API
process, and that process's peak memory (RSS, sampled every 20 ms) while it streams.

    .venv/bin/python -m bench.export [--rows 1000000]

The rows are written straight into the requests table by one INSERT ... SELECT over
generate_series (the export reads only that table), spread over the last 20 days, with
text, money at full precision, floats, nulls and a little JSON metadata.

In the same run, two reads of PostgreSQL's own CSV straight from psycopg, discarded, show
the machine's limit: the export's own COPY (SELECT ...) TO STDOUT (`query_*`), and a plain
COPY of the whole table (`table_*`: COPY (SELECT * FROM requests), as a partitioned table
cannot be copied by name). The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import psutil
import psycopg
from sqlalchemy import text

from bench.common import api_server, create_project, scratch_database

DAYS = 20

_FILL = """
insert into requests (
    project_id, ts, request_id, received_at, customer_id, feature, user_tier, task_type,
    intended_tier, served_tier, served_model, served_provider, attempt_count, is_fallback,
    is_escalation, is_failover, is_failed, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, latency_ms, cost_usd, unpriced_attempts, is_unpriced,
    baseline_cost_usd, quality_score, revenue_usd, router_strategy, router_version,
    router_confidence, experiment_name, experiment_arm, metadata)
select :project_id,
       :start + (i * :span_us / :rows) * interval '1 microsecond',
       gen_random_uuid(), now(),
       'customer-' || (i % 200),
       (array['support-chat', 'search', 'summarize', 'code-review'])[1 + i % 4],
       case when i % 3 = 0 then 'free' else 'pro' end, 'faq', 'cheap',
       case when i % 5 = 0 then 'premium' else 'cheap' end,
       case when i % 5 = 0 then 'gpt-4o' else 'gpt-4o-mini' end, 'openai',
       1 + (i % 5 = 0)::int, i % 5 = 0, i % 5 = 0, false, false,
       50 + i % 4000, 10 + i % 1500, 0, 0, (i % 40000) / 10.0,
       (50 + i % 4000) * 0.00000015 + (10 + i % 1500) * 0.0000006, 0, false,
       (50 + i % 4000) * 0.0000025 + (10 + i % 1500) * 0.00001,
       case when i % 4 = 0 then (i % 100) / 100.0 end,
       case when i % 10 = 0 then 0.004 end, 'rules', 'v3', (i % 1000) / 1000.0,
       case when i % 2 = 0 then 'router-v4' end, case when i % 2 = 0 then 'treatment' end,
       case when i % 7 = 0 then jsonb_build_object('region', 'eu', 'n', i) end
from generate_series(0, :rows - 1) as i
"""


def fill(project_id: int, rows: int, start: datetime) -> float:
    from app.db import get_engine
    from app.services.partitions import ensure_partitions, month_start

    engine = get_engine()
    ensure_partitions(engine, {month_start(start + timedelta(days=d)) for d in range(DAYS + 1)})
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            text(_FILL),
            {
                "project_id": project_id,
                "start": start,
                "span_us": DAYS * 86_400 * 10**6,
                "rows": rows,
            },
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("vacuum analyze requests"))
    return time.perf_counter() - started


class PeakMemory:
    """The peak RSS of a process and its children, sampled in a thread. The children are
    listed once: listing them scans every process of the machine, which took a tenth of a
    core from the export it measures."""

    def __init__(self, pid: int, every: float = 0.02):
        process = psutil.Process(pid)
        self._processes = [process, *process.children(recursive=True)]
        self._every = every
        self._stop = threading.Event()
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self._processes)

    def _sample(self) -> None:
        while not self._stop.wait(self._every):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def stream_export(url: str, key: str, start: datetime, end: datetime) -> tuple[int, int, float]:
    """Rows (lines less the header: no cell of the bench holds a line break), bytes and
    seconds of one requests export."""
    params = {"start": start.isoformat(), "end": end.isoformat()}
    lines = size = 0
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as client:
        with client.stream(
            "GET",
            "/v1/exports/requests.csv",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                lines += chunk.count(b"\n")  # a chunk may end between \r and \n
                size += len(chunk)
    return lines - 1, size, time.perf_counter() - started


def read_copy(database_url: str, query: str, params: dict | None = None) -> tuple[int, float]:
    """Lines and seconds of a COPY ... TO STDOUT read with psycopg and discarded."""
    lines = 0
    with psycopg.connect(database_url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(query, params) as copy:
            for _ in copy:
                lines += 1
        return lines, time.perf_counter() - started


def main() -> None:
    from app.periods import Period
    from app.services.exports import requests_copy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=DAYS)
    with scratch_database("bench_export") as database_url:
        project_id, key = create_project("bench-export")
        fill_seconds = fill(project_id, args.rows, start)
        print(f"filled {args.rows:,} requests in {fill_seconds:.1f} s")
        with api_server(database_url) as (url, pid):
            stream_export(url, key, end - timedelta(hours=1), end)  # warm up: imports, pool
            with PeakMemory(pid) as memory:
                before = memory.rss()
                rows, size, seconds = stream_export(url, key, start, end)
        query, params = requests_copy(project_id=project_id, within=Period(start, end))
        query_lines, query_seconds = read_copy(database_url, query, params)
        table_rows, table_seconds = read_copy(
            database_url, "copy (select * from requests) to stdout (format csv)"
        )
    if rows != args.rows or query_lines - 1 != args.rows or table_rows != args.rows:
        raise SystemExit(f"exported {rows}, {query_lines - 1}, {table_rows}, not {args.rows} rows")
    rate, query_rate, table_rate = rows / seconds, rows / query_seconds, rows / table_seconds
    mib = 1024 * 1024
    print(
        f"exported {rows:,} rows ({size / mib:,.0f} MiB) in {seconds:.2f} s = {rate:,.0f} rows/s;"
        f" server RSS {before / mib:.0f} MiB before, peak {memory.peak / mib:.0f} MiB;"
        f" its COPY read by psycopg {query_rate:,.0f} rows/s, the plain table {table_rate:,.0f}"
    )
    print(
        json.dumps(
            {
                "benchmark": "export_requests",
                "rows": rows,
                "bytes": size,
                "seconds": round(seconds, 2),
                "rows_per_s": round(rate),
                "server_rss_before_mib": round(before / mib, 1),
                "server_peak_rss_mib": round(memory.peak / mib, 1),
                "query_seconds": round(query_seconds, 2),
                "query_rows_per_s": round(query_rate),
                "table_seconds": round(table_seconds, 2),
                "table_rows_per_s": round(table_rate),
                "api_to_query": round(rate / query_rate, 2),
                "api_to_table": round(rate / table_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
