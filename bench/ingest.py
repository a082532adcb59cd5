"""Ingest throughput: events/s through POST /v1/requests (batches of 500 events of 1 to 3
attempts, several concurrent senders) against a raw psycopg binary COPY of the same rows
into the same tables, measured in the same run, in rounds that alternate between the two
(so that a minute when the machine's other work slows one does not fall on it alone), each
side going first in every other round.

    .venv/bin/python -m bench.ingest [--events 100000] [--rounds 4] [--senders 4] [--api-workers 2]

It also times the service's own Python work per event (`ingest_body` called in this
process on such bodies, its CPU time): a figure the machine's other work moves far less
than throughput; and the senders' CPU per event, which the service's processes share the
two cores with.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from queue import Empty, Queue
from urllib.parse import urlsplit

import orjson

from bench.common import api_server, create_project, scratch_database

CHEAP, STANDARD, PREMIUM = (
    ("gpt-4o-mini", "openai"),
    ("claude-sonnet-4-0", "anthropic"),
    (
        "gpt-4o",
        "openai",
    ),
)
FEATURES = ["support-chat", "search", "summarize", "code-review"]


def make_event(rng: random.Random, at: datetime) -> dict:
    chain = [("cheap", CHEAP), ("standard", STANDARD), ("premium", PREMIUM)][
        : rng.choice((1, 1, 2, 3))
    ]
    attempts = []
    for position, (tier, (model, provider)) in enumerate(chain):
        last = position == len(chain) - 1
        attempts.append(
            {
                "model": model,
                "provider": provider,
                "tier": tier,
                "input_tokens": rng.randint(50, 4000),
                "output_tokens": rng.randint(10, 1500),
                "cache_read_tokens": rng.choice((0, 0, 512)),
                "latency_ms": round(rng.uniform(100, 4000), 1),
                "status": "ok" if last else rng.choice(("rejected", "error", "timeout")),
            }
        )
    return {
        "request_id": str(uuid.uuid4()),
        "timestamp": (at - timedelta(seconds=rng.randint(0, 86_400 * 3))).isoformat(),
        "customer_id": f"customer-{rng.randint(1, 200)}",
        "feature": rng.choice(FEATURES),
        "intended_tier": "cheap",
        "router": {"strategy": "rules", "version": "v3", "confidence": round(rng.random(), 3)},
        "attempts": attempts,
        "metadata": {"region": rng.choice(("eu", "us"))},
    }


def batch_bodies(events: list[dict], batch: int) -> list[bytes]:
    """`POST /v1/requests` bodies of `batch` events each."""
    return [orjson.dumps({"requests": events[i : i + batch]}) for i in range(0, len(events), batch)]


def send_all(
    url: str,
    key: str,
    bodies: list[bytes],
    senders: int,
    *,
    path: str = "/v1/requests",
    content_type: str = "application/json",
) -> float:
    """Posts the bodies over `senders` keep-alive connections at once; the seconds it took.
    With the standard library's http.client: the senders share the machine's two cores with
    the service, and httpx cost seven times the CPU per body (8 µs an event against 1.2)."""
    work: Queue[bytes] = Queue()
    for body in bodies:
        work.put(body)
    failures: list[str] = []
    address = urlsplit(url)

    def sender() -> None:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        try:
            while True:
                try:
                    body = work.get_nowait()
                except Empty:
                    return
                try:
                    connection.request("POST", path, body=body, headers=headers)
                    response = connection.getresponse()
                    answer = response.read()
                except OSError as error:  # a batch lost: the rate would be overstated
                    failures.append(f"{type(error).__name__}: {error}")
                    return
                if response.status != 200:
                    failures.append(f"{response.status} {answer[:200]!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} batches failed, first: {failures[0]}")
    return elapsed


def copy_rows(events: list[dict], project_id: int) -> list:
    """The rows of the events (under new ids), derived ahead of time, for `raw_copy`."""
    from app.db import get_engine
    from app.schemas import EVENT
    from app.services.ingest import derive
    from app.services.partitions import ensure_partitions, month_start
    from app.services.pricing import PriceBook
    from app.services.projects import load_project_context

    engine = get_engine()
    parsed = [EVENT.validate_python({**e, "request_id": str(uuid.uuid4())}) for e in events]
    ensure_partitions(engine, {month_start(e.timestamp) for e in parsed})
    with engine.connect() as conn:
        project = load_project_context(conn, project_id=project_id)
        models = {(a.model, a.provider) for e in parsed for a in e.attempts}
        if project.baseline:
            models.add((project.baseline.model, project.baseline.provider))
        prices = PriceBook.load(conn, project_id=project_id, models=models)
    now = datetime.now(UTC)
    return [derive(e, project=project, prices=prices, received_at=now) for e in parsed]


def raw_copy(rows: list, project_id: int) -> float:
    """The rows written by COPY alone, in one transaction: the floor for ingest."""
    from app.db import get_engine
    from app.services.ingest import ATTEMPTS_COPY, REQUESTS_COPY

    raw = get_engine().raw_connection()
    try:
        started = time.perf_counter()
        with raw.driver_connection.cursor() as cur:
            with cur.copy(
                "copy request_keys (project_id, request_id, ts) from stdin (format binary)"
            ) as copy:
                copy.set_types(("int8", "uuid", "timestamptz"))
                for row in rows:
                    copy.write_row((project_id, row.request_id, row.ts))
            REQUESTS_COPY.write(cur, (row.request_row for row in rows))
            ATTEMPTS_COPY.write(cur, (a for row in rows for a in row.attempt_rows))
        raw.driver_connection.commit()
        return time.perf_counter() - started
    finally:
        raw.close()


def service_cpu(events: list[dict], project_id: int, batch: int) -> float:
    """CPU seconds per event of this process calling `ingest_body` itself on bodies of the
    events, as the route does (after one body of warm-up): the service's Python work without
    HTTP, PostgreSQL's work not counted."""
    from app.db import get_engine
    from app.services.ingest import ingest_body

    engine = get_engine()
    renamed = [{**e, "request_id": str(uuid.uuid4())} for e in events[: 11 * batch]]
    warm_up, *timed = batch_bodies(renamed, batch)
    ingest_body(engine, project_id=project_id, body=warm_up)
    started = time.process_time()
    for body in timed:
        ingest_body(engine, project_id=project_id, body=body)
    return (time.process_time() - started) / (len(renamed) - batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="per side, alternating (even: each side first as often)",
    )
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--api-workers", type=int, default=2)
    args = parser.parse_args()

    rng = random.Random(42)
    now = datetime.now(UTC)
    events = [make_event(rng, now) for _ in range(args.events)]
    per_round = -(-args.events // args.rounds)
    rounds = [events[i : i + per_round] for i in range(0, len(events), per_round)]
    attempts = sum(len(e["attempts"]) for e in events)
    api_seconds, copy_seconds, sender_cpu, round_ratios = 0.0, 0.0, 0.0, []
    with scratch_database("bench_ingest") as database_url:
        api_project, key = create_project("bench-api")
        copy_project, _ = create_project("bench-copy")
        # Warm up both sides outside the timing: the server's processes, their connections
        # and prepared statements (four calls per sender), prices and partitions; the COPY's
        # connection and tables.
        with api_server(database_url, workers=args.api_workers) as (url, _pid):
            warm = [make_event(rng, now) for _ in range(4 * args.senders * args.batch)]
            send_all(url, key, batch_bodies(warm, args.batch), args.senders)
            raw_copy(copy_rows(warm[: args.batch], copy_project), copy_project)
            for number, chunk in enumerate(rounds):
                rows = copy_rows(chunk, copy_project)
                bodies = batch_bodies(chunk, args.batch)
                # Each side writes into the same tables, so the one that goes second finds
                # them larger: the sides take turns going first. (The API idles meanwhile.)
                if number % 2:
                    copy = raw_copy(rows, copy_project)
                sender_started = time.process_time()
                api = send_all(url, key, bodies, args.senders)
                sender_cpu += time.process_time() - sender_started
                if not number % 2:
                    copy = raw_copy(rows, copy_project)
                api_seconds, copy_seconds = api_seconds + api, copy_seconds + copy
                round_ratios.append(round(copy / api, 3))
                print(
                    f"round {len(round_ratios)}: API {len(chunk) / api:,.0f} events/s, "
                    f"COPY {len(chunk) / copy:,.0f} events/s, ratio {round_ratios[-1]}"
                )
        cpu_per_event = service_cpu(events, create_project("bench-cpu")[0], args.batch)

    api_rate = args.events / api_seconds
    copy_rate = args.events / copy_seconds
    print(
        f"API : {args.events} events ({attempts} attempts) in {api_seconds:.2f} s"
        f" = {api_rate:,.0f} events/s"
    )
    print(f"COPY: {args.events} events in {copy_seconds:.2f} s = {copy_rate:,.0f} events/s")
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "events": args.events,
                "attempts": attempts,
                "batch": args.batch,
                "rounds": len(rounds),
                "senders": args.senders,
                "api_workers": args.api_workers,
                "api_events_per_s": round(api_rate),
                "copy_events_per_s": round(copy_rate),
                "api_to_copy_ratio": round(api_rate / copy_rate, 3),
                "round_ratios": round_ratios,
                "service_cpu_us_per_event": round(cpu_per_event * 1e6, 1),
                "sender_cpu_us_per_event": round(sender_cpu / args.events * 1e6, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
