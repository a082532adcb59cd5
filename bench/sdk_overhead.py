"""SDK overhead: time on the calling thread per logged request with two attempts, for the
RouteLedger SDK next to the langfuse SDK and the posthog client, each sending to the same
local sink (an HTTP server on loopback that accepts and discards everything); then the
events per second that one RouteLedger client delivers to the real API.

    .venv/bin/python -m bench.sdk_overhead [--requests 20000] [--deliver 50000]

Each SDK is timed in a process of its own (so one SDK's imports and garbage do not weigh
on another's figures) with its background sender running, after a warm-up, and with a
queue that holds the whole run (none drops or spills events to keep up with the loop). Each logs the
same facts: customer, feature, intended tier, and per attempt model, provider, tier,
tokens, latency, status and reason. langfuse: a span with two generation observations;
posthog: two $ai_generation events sharing a trace id. The delivery figure runs against a
scratch database (BENCH_DATABASE_URL's server) and a real `routeledger api` process;
--deliver 0 skips it. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS = ("routeledger", "langfuse", "posthog")
CUSTOMERS = [f"customer-{number}" for number in range(50)]
ATTEMPTS = (
    {
        "model": "gpt-4o-mini",
        "provider": "openai",
        "tier": "cheap",
        "input_tokens": 500,
        "output_tokens": 200,
        "latency_ms": 812.0,
        "status": "rejected",
        "reason": "quality_check",
    },
    {
        "model": "gpt-4o",
        "provider": "openai",
        "tier": "premium",
        "input_tokens": 520,
        "output_tokens": 310,
        "latency_ms": 2140.0,
        "status": "ok",
        "reason": None,
    },
)


def routeledger_logger(sink: str, capacity: int):
    from routeledger import RouteLedger

    client = RouteLedger(
        api_key="bench", endpoint=sink, max_queue=capacity, spool_dir=tempfile.mkdtemp()
    )
    return routeledger_log(client), client.shutdown


def routeledger_log(client):
    def log(number: int) -> None:
        with client.request(CUSTOMERS[number % 50], "support-chat", intended_tier="cheap") as req:
            for attempt in ATTEMPTS:
                req.attempt(
                    attempt["model"],
                    attempt["tier"],
                    attempt["input_tokens"],
                    attempt["output_tokens"],
                    latency_ms=attempt["latency_ms"],
                    status=attempt["status"],
                    reason=attempt["reason"],
                    provider=attempt["provider"],
                )

    return log


def langfuse_logger(sink: str, capacity: int):
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(capacity)  # langfuse queues through OpenTelemetry
    from langfuse import Langfuse

    client = Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench", host=sink)

    def log(number: int) -> None:
        with client.start_as_current_observation(
            name="support-chat",
            as_type="span",
            metadata={"customer_id": CUSTOMERS[number % 50], "intended_tier": "cheap"},
        ) as span:
            for attempt in ATTEMPTS:
                span.start_observation(
                    name="attempt",
                    as_type="generation",
                    model=attempt["model"],
                    usage_details={
                        "input": attempt["input_tokens"],
                        "output": attempt["output_tokens"],
                    },
                    metadata={
                        key: attempt[key]
                        for key in ("provider", "tier", "latency_ms", "status", "reason")
                    },
                ).end()

    return log, client.shutdown


def posthog_logger(sink: str, capacity: int):
    from posthog import Posthog

    client = Posthog("phc_bench", host=sink, max_queue_size=capacity)

    def log(number: int) -> None:
        trace_id = str(uuid.uuid4())
        for attempt in ATTEMPTS:
            client.capture(
                "$ai_generation",
                distinct_id=CUSTOMERS[number % 50],
                properties={
                    "$ai_trace_id": trace_id,
                    "$ai_model": attempt["model"],
                    "$ai_provider": attempt["provider"],
                    "$ai_input_tokens": attempt["input_tokens"],
                    "$ai_output_tokens": attempt["output_tokens"],
                    "$ai_latency": attempt["latency_ms"] / 1000,
                    "$ai_is_error": attempt["status"] != "ok",
                    "feature": "support-chat",
                    "tier": attempt["tier"],
                    "status": attempt["status"],
                    "reason": attempt["reason"],
                    "intended_tier": "cheap",
                },
            )

    return log, client.shutdown


LOGGERS = {
    "routeledger": routeledger_logger,
    "langfuse": langfuse_logger,
    "posthog": posthog_logger,
}


def time_calls(log, requests: int, warmup: int) -> dict:
    """Median and p99 of the time one log call takes on this thread, in microseconds."""
    for number in range(warmup):
        log(number)
    clock = time.perf_counter_ns
    samples = []
    for number in range(requests):
        started = clock()
        log(number)
        samples.append(clock() - started)
    samples.sort()
    return {
        "median_us": round(samples[len(samples) // 2] / 1000, 2),
        "p99_us": round(samples[int(len(samples) * 0.99)] / 1000, 2),
    }


def measure_one(name: str, sink: str, requests: int) -> dict:
    warmup = min(requests, 2000)
    # Room for every event of the run (three per request at most), so that no SDK drops
    # events or spills them to disk when its sender falls behind this tight loop.
    log, shutdown = LOGGERS[name](sink, 3 * (requests + warmup))
    figures = time_calls(log, requests, warmup)
    shutdown()
    package = "routeledger-sdk" if name == "routeledger" else name
    return {**figures, "version": version(package)}


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _discard(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_GET = do_PUT = _discard

    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # the SDKs drop their kept-alive connections when they shut down


def serve_sink(ports) -> None:
    server = _QuietServer(("127.0.0.1", 0), _Sink)
    ports.put(server.server_address[1])
    server.serve_forever()


def delivered_per_second(events: int) -> dict:
    """One RouteLedger client, `events` requests logged as fast as possible, until flush()
    confirms them all stored by a real API process over a scratch database."""
    from routeledger import RouteLedger

    from bench.common import api_server, create_project, scratch_database

    with scratch_database("sdk_bench") as database_url, api_server(database_url) as (url, _):
        _, key = create_project("sdk-bench")
        client = RouteLedger(
            api_key=key, endpoint=url, max_queue=events, spool_dir=tempfile.mkdtemp()
        )
        log = routeledger_log(client)
        started = time.perf_counter()
        for number in range(events):
            log(number)
        flushed = client.flush(600)
        elapsed = time.perf_counter() - started
        stats = client.stats()
        client.shutdown()
    return {
        "events": events,
        "seconds": round(elapsed, 2),
        "events_per_s": round(events / elapsed),
        "all_stored": flushed and stats["sent"] == events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="timed requests per SDK")
    parser.add_argument(
        "--deliver", type=int, default=50_000, help="events for the delivery figure; 0 skips it"
    )
    parser.add_argument(
        "--measure", choices=PEERS, help=argparse.SUPPRESS
    )  # one SDK, in a child process
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_one(args.measure, args.sink, args.requests)))
        return

    ports = multiprocessing.Queue()
    sink_process = multiprocessing.Process(target=serve_sink, args=(ports,), daemon=True)
    sink_process.start()
    sink = f"http://127.0.0.1:{ports.get(timeout=30)}"
    overhead = {}
    for name in PEERS:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.sdk_overhead",
                "--measure",
                name,
                "--sink",
                sink,
                "--requests",
                str(args.requests),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,  # stderr passes through: a missing package says so
            text=True,
            check=True,
        )
        figures = overhead[name] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{name:12} median {figures['median_us']:8.2f} µs   p99 {figures['p99_us']:8.2f} µs")
    sink_process.terminate()

    delivery = delivered_per_second(args.deliver) if args.deliver else None
    if delivery:
        rate, events, seconds = delivery["events_per_s"], delivery["events"], delivery["seconds"]
        print(f"delivery     {rate} events/s ({events} events in {seconds} s)")
    print(json.dumps({"requests_timed": args.requests, "overhead": overhead, "delivery": delivery}))


if __name__ == "__main__":
    main()
