"""The OTLP door against the JSON door: the same requests sent as OTLP protobuf trace exports
to POST /v1/traces (an app span and one span per model call, 512 spans per export, as the
OTel SDK's batch processor sends them) and as events to POST /v1/requests (batches of 500),
in one run, rounds alternating between the doors.

    .venv/bin/python -m bench.otlp [--requests 40000] [--senders 2] [--api-workers 1]

Two figures per door: requests per second, and the CPU time the API processes and their
database connections spent per request (which other work on the machine moves much less
than it moves the rate), also apart. The last line printed is one JSON object with the
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from datetime import UTC, datetime

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from bench.common import (
    api_server,
    cpu_seconds,
    create_project,
    database_backends,
    process_group,
    scratch_database,
)
from bench.ingest import batch_bodies, make_event, send_all

SPANS_PER_EXPORT = 512  # the OTel SDK's BatchSpanProcessor default
EVENTS_PER_BATCH = 500  # the RouteLedger SDK's default
TIERS = {"gpt-4o-mini": "cheap", "claude-sonnet-4-0": "standard", "gpt-4o": "premium"}


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1e9)


def add_spans(scope_spans, event: dict) -> int:
    """The event as an instrumented app reports it: an app span naming the request, a span
    per model call under it (OTel counts cached tokens inside the input tokens)."""
    trace_id, app_id = os.urandom(16), os.urandom(8)
    start = _ns(datetime.fromisoformat(event["timestamp"]))
    clock = start
    for attempt in event["attempts"]:
        span = scope_spans.spans.add(
            trace_id=trace_id, span_id=os.urandom(8), parent_span_id=app_id, name="chat",
            start_time_unix_nano=clock,
            end_time_unix_nano=clock + int(attempt["latency_ms"] * 1e6),
        )  # fmt: skip
        clock = span.end_time_unix_nano
        cached = attempt.get("cache_read_tokens", 0)
        failed = attempt["status"] in ("error", "timeout")
        for key, value in (
            ("gen_ai.request.model", attempt["model"]),
            ("gen_ai.provider.name", attempt["provider"]),
            # A call that failed has no response, so no response id (real-clients.md); its
            # usage stays, so that both doors carry the same requests.
            *(() if failed else (("gen_ai.response.id", f"chatcmpl-{os.urandom(12).hex()}"),)),
        ):
            span.attributes.add(key=key, value={"string_value": value})
        for key, value in (
            ("gen_ai.usage.input_tokens", attempt["input_tokens"] + cached),
            ("gen_ai.usage.output_tokens", attempt["output_tokens"]),
            ("gen_ai.usage.cache_read.input_tokens", cached),
        ):
            span.attributes.add(key=key, value={"int_value": value})
        if attempt["status"] != "ok":
            span.status.code = Status.STATUS_CODE_ERROR
            span.attributes.add(key="error.type", value={"string_value": attempt["status"]})
    app = scope_spans.spans.add(
        trace_id=trace_id, span_id=app_id, name="answer",
        start_time_unix_nano=start, end_time_unix_nano=clock,
    )  # fmt: skip
    router = event["router"]
    for key, value in (
        ("routeledger.customer_id", event["customer_id"]),
        ("routeledger.feature", event["feature"]),
        ("routeledger.intended_tier", event["intended_tier"]),
        ("routeledger.router.strategy", router["strategy"]),
        ("routeledger.router.version", router["version"]),
    ):
        app.attributes.add(key=key, value={"string_value": value})
    app.attributes.add(
        key="routeledger.router.confidence", value={"double_value": router["confidence"]}
    )
    return len(event["attempts"]) + 1


def exports(
    events: list[dict], spans_per_export: int = SPANS_PER_EXPORT
) -> tuple[list[bytes], int]:
    """Protobuf export bodies of at most `spans_per_export` spans, each request whole in one."""
    bodies, spans = [], 0
    export, in_export = None, 0
    for event in events:
        if export is None or in_export + len(event["attempts"]) + 1 > spans_per_export:
            if export is not None:
                bodies.append(export.SerializeToString())
            export, in_export = ExportTraceServiceRequest(), 0
            resource_spans = export.resource_spans.add()
            resource_spans.resource.attributes.add(
                key="service.name", value={"string_value": "bench"}
            )
            scope_spans = resource_spans.scope_spans.add()
        added = add_spans(scope_spans, event)
        in_export += added
        spans += added
    bodies.append(export.SerializeToString())
    return bodies, spans


def map_tiers(project_id: int) -> None:
    from app.db import transaction
    from app.services.model_tiers import set_model_tier

    with transaction() as conn:
        for model, tier in TIERS.items():
            set_model_tier(conn, project_id=project_id, model=model, tier=tier)


def count_requests(project_id: int) -> int:
    from sqlalchemy import text

    from app.db import connection

    with connection() as conn:
        return conn.execute(
            text("select count(*) from requests where project_id = :p"), {"p": project_id}
        ).scalar_one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=4, help="per door, alternating")
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument(
        "--spans-per-export", type=int, default=SPANS_PER_EXPORT,
        help="the OTel SDK's default; about 1375 carries 500 requests, as the JSON batches",
    )  # fmt: skip
    args = parser.parse_args()

    rng = random.Random(42)
    now = datetime.now(UTC)
    per_round = args.requests // args.rounds
    rounds = [[make_event(rng, now) for _ in range(per_round)] for _ in range(args.rounds)]
    json_rounds = [batch_bodies(r, EVENTS_PER_BATCH) for r in rounds]
    otlp_rounds = [exports(r, args.spans_per_export) for r in rounds]
    spans = sum(count for _, count in otlp_rounds)
    requests = per_round * args.rounds
    seconds = {"json": 0.0, "otlp": 0.0}
    # CPU seconds per door: the API processes', and their database connections'.
    cpu = {door: {"api": 0.0, "db": 0.0} for door in ("json", "otlp")}
    with scratch_database("bench_otlp") as database_url:
        json_project, json_key = create_project("bench-json")
        otlp_project, otlp_key = create_project("bench-otlp")
        map_tiers(otlp_project)
        with api_server(database_url, workers=args.api_workers) as (url, pid):
            # Warm up both doors (connections, prices, partitions) outside the timing.
            warm = [make_event(rng, now) for _ in range(EVENTS_PER_BATCH)]
            send_all(url, json_key, [orjson.dumps({"requests": warm})], 1)
            send_all(url, otlp_key, exports(warm)[0], 1, path="/v1/traces",
                     content_type="application/x-protobuf")  # fmt: skip

            def send(door: str, bodies: list[bytes], **how: str) -> None:
                api, backends = process_group(pid), database_backends(database_url)
                used = {"api": cpu_seconds(api), "db": cpu_seconds(backends)}
                seconds[door] += send_all(url, keys[door], bodies, args.senders, **how)
                # Connections the pool opened meanwhile count whole.
                backends += set(database_backends(database_url)) - set(backends)
                cpu[door]["api"] += cpu_seconds(api) - used["api"]
                cpu[door]["db"] += cpu_seconds(backends) - used["db"]

            keys = {"json": json_key, "otlp": otlp_key}
            for json_bodies, (otlp_bodies, _) in zip(json_rounds, otlp_rounds, strict=True):
                send("json", json_bodies)
                send("otlp", otlp_bodies, path="/v1/traces",
                     content_type="application/x-protobuf")  # fmt: skip
        stored = {"json": count_requests(json_project), "otlp": count_requests(otlp_project)}
    warm_requests = len(warm)
    if stored != {"json": requests + warm_requests, "otlp": requests + warm_requests}:
        raise SystemExit(f"not every request was stored: {stored}")

    json_rate = requests / seconds["json"]
    otlp_rate = requests / seconds["otlp"]
    print(f"JSON: {requests} requests in {seconds['json']:.2f} s = {json_rate:,.0f} requests/s")
    print(
        f"OTLP: {requests} requests ({spans} spans) in {seconds['otlp']:.2f} s = "
        f"{otlp_rate:,.0f} requests/s, {spans / seconds['otlp']:,.0f} spans/s"
    )
    split_us = {
        door: {part: used / requests * 1e6 for part, used in parts.items()}
        for door, parts in cpu.items()
    }
    cpu_us = {door: parts["api"] + parts["db"] for door, parts in split_us.items()}
    for door, name in (("json", "JSON"), ("otlp", "OTLP")):
        print(
            f"CPU per request, {name}: {cpu_us[door]:.0f} µs (API processes "
            f"{split_us[door]['api']:.0f}, database connections {split_us[door]['db']:.0f})"
        )
    print(
        json.dumps(
            {
                "benchmark": "otlp",
                "requests": requests,
                "spans": spans,
                "senders": args.senders,
                "api_workers": args.api_workers,
                "spans_per_export": args.spans_per_export,
                "events_per_batch": EVENTS_PER_BATCH,
                "json_requests_per_s": round(json_rate),
                "otlp_requests_per_s": round(otlp_rate),
                "otlp_spans_per_s": round(spans / seconds["otlp"]),
                "otlp_cost_per_request_vs_json": round(json_rate / otlp_rate, 3),
                "json_cpu_us_per_request": round(cpu_us["json"]),
                "otlp_cpu_us_per_request": round(cpu_us["otlp"]),
                "otlp_cpu_per_request_vs_json": round(cpu_us["otlp"] / cpu_us["json"], 3),
                # Where each door's CPU goes: its API processes, its database connections.
                "json_api_cpu_us_per_request": round(split_us["json"]["api"]),
                "json_db_cpu_us_per_request": round(split_us["json"]["db"]),
                "otlp_api_cpu_us_per_request": round(split_us["otlp"]["api"]),
                "otlp_db_cpu_us_per_request": round(split_us["otlp"]["db"]),
            }
        )
    )


if __name__ == "__main__":
    main()
