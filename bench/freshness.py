"""Freshness: the time from a 2xx on ingest to the figure showing in the metrics API, under a
steady load, with the service as `routeledger up` runs it: a real API process, Celery beat
and one worker (concurrency 1), the broker Redis.

    .venv/bin/python -m bench.freshness [--rate 1000] [--seconds 120] [--probes 24] [--hour-rows 0]

Sender threads post paced batches of `bench.ingest`'s events, stamped with the time they are
sent (as an app reports its requests), to POST /v1/requests. At even intervals a probe posts
one marker event of a feature of its own, notes when its POST got its 2xx, then polls GET
/v1/metrics/routing for that feature over the marker's hour until the request shows; the
freshness is the difference (a poll every --poll-ms, so it is late by up to that much). A
probe not seen within 60 s (DESIGN.md's bound) counts as missed. The load keeps running until
every probe is seen or missed, then everything stops, also on failure.

`--hour-rows N` first writes N requests (bench.generate's, by SQL) over the current hour so
far and rolls them up: what a steady load has left in the hour later on (a tick once re-rolled
the hours written since the last one whole, from their raw rows; it now adds the requests
stored since, but the hour's rollup rows it sums them into grow with the hour too).

It also reports what the rollup job costs under the load: its runs and their durations (from
the worker's log), and the CPU of the worker's processes and of the PostgreSQL backends that
serve them (the rollup is most of their work) per second of load. The last line printed is
one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import psutil

from bench.common import create_project, free_port, scratch_database, service, wait_ready
from bench.ingest import make_event
from bench.metrics_latency import percentile

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/12")
MISSED_AFTER_SECONDS = 60.0
ROLLUP_DONE = re.compile(r"workers\.tasks\.rollup\[[^\]]+\] succeeded in ([0-9.]+)s")


def stamped_event(rng: random.Random, **fields) -> dict:
    """An event of bench.ingest's kind, timestamped now."""
    now = datetime.now(UTC)
    return {**make_event(rng, now), "timestamp": now.isoformat(), **fields}


@dataclass
class Load:
    """Paced batches from `senders` threads, `rate` events/s in all, until `stop` is set."""

    url: str
    key: str
    rate: float
    senders: int
    batch: int
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> list[threading.Thread]:
        self.started = time.monotonic()
        threads = [
            threading.Thread(target=self._send, args=(i,), daemon=True) for i in range(self.senders)
        ]
        for thread in threads:
            thread.start()
        return threads

    def _send(self, index: int) -> None:
        rng = random.Random(index)
        every = self.senders * self.batch / self.rate  # seconds between this sender's batches
        due = self.started + index * every / self.senders
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                # Behind schedule (a slow answer), the next batch goes at once to catch up.
                self.stop.wait(max(0.0, due - time.monotonic()))
                if self.stop.is_set():
                    break
                events = [stamped_event(rng) for _ in range(self.batch)]
                response = client.post(
                    "/v1/requests", content=orjson.dumps({"requests": events}), headers=headers
                )
                with self._lock:
                    if response.status_code == 200:
                        self.sent += len(events)
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                due += every
        self.ended = max(self.ended, time.monotonic())


@dataclass
class Probe:
    feature: str
    hour: datetime
    acknowledged: float
    seen: float | None = None


def send_probe(client: httpx.Client, key: str, rng: random.Random, number: int) -> Probe:
    feature = f"freshness-probe-{number}"
    event = stamped_event(rng, feature=feature, customer_id="freshness-probe")
    response = client.post(
        "/v1/requests", json={"requests": [event]}, headers={"Authorization": f"Bearer {key}"}
    )
    acknowledged = time.monotonic()
    if response.status_code != 200:
        raise SystemExit(f"probe {number}: {response.status_code} {response.text[:200]}")
    hour = datetime.fromisoformat(event["timestamp"]).replace(minute=0, second=0, microsecond=0)
    return Probe(feature=feature, hour=hour, acknowledged=acknowledged)


def shows(client: httpx.Client, key: str, probe: Probe) -> bool:
    """Whether the metrics of the probe's feature over its hour count its request."""
    end = probe.hour.timestamp() + 3600
    response = client.get(
        "/v1/metrics/routing",
        params={
            "feature": probe.feature,
            "start": probe.hour.isoformat(),
            "end": datetime.fromtimestamp(end, UTC).isoformat(),
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    response.raise_for_status()
    return response.json()["requests"] >= 1


def run_probes(url: str, key: str, *, count: int, seconds: float, poll: float) -> list[Probe]:
    """`count` probes sent at even intervals over `seconds`, each polled for until it shows
    or is missed."""
    rng = random.Random(7)
    started = time.monotonic()
    due = [started + seconds * (i + 0.5) / count for i in range(count)]
    probes: list[Probe] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:
            now = time.monotonic()
            if due and now >= due[0]:
                due.pop(0)
                probes.append(send_probe(client, key, rng, len(probes)))
            waiting = [
                p for p in probes
                if p.seen is None and now - p.acknowledged < MISSED_AFTER_SECONDS
            ]  # fmt: skip
            if not due and not waiting:
                return probes
            for probe in waiting:
                if shows(client, key, probe):
                    probe.seen = time.monotonic()
            time.sleep(poll)


def cpu_seconds(worker: psutil.Process, database: str) -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds so far, by pid, of the worker's processes and of the PostgreSQL backends
    connected to them (found by the client port in the backend's process title)."""

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    processes = [worker, *worker.children(recursive=True)]
    ports = {
        f"({c.laddr.port})"
        for p in processes
        for c in p.net_connections("tcp")
        if c.raddr and c.raddr.port == 5432
    }
    backends = {}
    for process in psutil.process_iter(["cmdline"]):
        with suppress(psutil.Error):
            title = " ".join(process.info["cmdline"] or [])
            if database in title and any(port in title for port in ports):
                backends[process.pid] = used(process)
    return {p.pid: used(p) for p in processes}, backends


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def rollup_runs(log: Path) -> list[float]:
    """The durations of the rollup task's runs, from the worker's log."""
    return [float(m.group(1)) for m in ROLLUP_DONE.finditer(log.read_text(errors="replace"))]


def rounded(statistic, values: list[float], *args) -> float | None:
    """`statistic` of the values to the hundredth; None when too few to compute it."""
    return round(statistic(values, *args), 2) if len(values) >= 2 else None


def fill_hour(project_id: int, rows: int) -> float:
    """Writes `rows` requests (bench.generate's) over the current hour so far and rolls them
    up, as a steady load leaves the hour later on (at 1,000 events/s, 1.8 million by half
    past); returns the seconds the rollup took."""
    from app.db import get_engine
    from app.periods import DAY, floor_hour, utc_now
    from app.services.rollups import run_rollup
    from bench.generate import generate

    now = utc_now()
    elapsed = max(now - floor_hour(now), timedelta(seconds=1))
    generate(get_engine(), project_id=project_id, rows=rows, end=now, days=elapsed / DAY)
    started = time.perf_counter()
    run_rollup(get_engine())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="events/s of background load")
    parser.add_argument("--seconds", type=float, default=120, help="over which probes are sent")
    parser.add_argument("--probes", type=int, default=24)
    parser.add_argument("--batch", type=int, default=100, help="events per POST of the load")
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--poll-ms", type=float, default=150)
    parser.add_argument(
        "--hour-rows", type=int, default=0, help="requests in the current hour before the load"
    )
    args = parser.parse_args()

    os.environ["CELERY_BROKER_URL"] = BROKER_URL  # for this process's Celery app too
    from app.settings import get_settings
    from workers.celery_app import ROLLUP_EVERY

    logs = Path(tempfile.mkdtemp(prefix="bench_freshness_"))
    print(f"logs: {logs}", file=sys.stderr)
    with scratch_database("bench_freshness") as database_url:
        project_id, key = create_project("bench-freshness")
        fill_rollup_seconds = fill_hour(project_id, args.hour_rows) if args.hour_rows else None
        database = database_url.rsplit("/", 1)[1].partition("?")[0]
        env = {**os.environ, "DATABASE_URL": database_url, "ROUTELEDGER_DATA_DIR": str(logs)}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with (
            service("api", "--port", str(port), env=env, log=logs / "api.log") as api,
            service("worker", "--concurrency", "1", env=env, log=logs / "worker.log") as worker,
            service("beat", env=env, log=logs / "beat.log"),
        ):
            wait_ready(url, api)
            load = Load(url, key, rate=args.rate, senders=args.senders, batch=args.batch)
            worker_process = psutil.Process(worker.pid)
            worker_before, backends_before = cpu_seconds(worker_process, database)
            threads = load.run()
            cpu_started = time.monotonic()
            try:
                probes = run_probes(
                    url, key, count=args.probes, seconds=args.seconds, poll=args.poll_ms / 1000
                )
                worker_after, backends_after = cpu_seconds(worker_process, database)
                cpu_seconds_elapsed = time.monotonic() - cpu_started
            finally:
                load.stop.set()
                for thread in threads:
                    thread.join(60)
        runs = rollup_runs(logs / "worker.log")

    if load.failures:
        raise SystemExit(f"{len(load.failures)} load batches failed, first: {load.failures[0]}")
    load_seconds = load.ended - load.started
    freshness = sorted(p.seen - p.acknowledged for p in probes if p.seen is not None)
    settings = get_settings()
    print(
        json.dumps(
            {
                "benchmark": "freshness",
                "broker": BROKER_URL.split(":", 1)[0],
                "worker_concurrency": 1,
                "rollup_every_s": ROLLUP_EVERY.total_seconds(),
                "rollup_connections": settings.routeledger_rollup_connections,
                "hour_rows_before": args.hour_rows,
                "hour_rows_rollup_s": fill_rollup_seconds and round(fill_rollup_seconds, 1),
                "target_events_per_s": args.rate,
                "events_per_s": round(load.sent / load_seconds),
                "load_seconds": round(load_seconds, 1),
                "probes": len(probes),
                "probes_missed": len(probes) - len(freshness),
                "freshness_p50_s": rounded(percentile, freshness, 0.50),
                "freshness_p95_s": rounded(percentile, freshness, 0.95),
                "freshness_max_s": rounded(max, freshness),
                "rollup_runs": len(runs),
                "rollup_run_p50_s": rounded(percentile, runs, 0.50),
                "rollup_run_max_s": rounded(max, runs),
                "rollup_busy_share": round(sum(runs) / load_seconds, 3),
                "worker_cpu_cores": round(
                    cpu_between(worker_before, worker_after) / cpu_seconds_elapsed, 3
                ),
                "worker_db_cpu_cores": round(
                    cpu_between(backends_before, backends_after) / cpu_seconds_elapsed, 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
