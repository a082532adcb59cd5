"""Fixtures of the SDK tests.

FakeApi stands in for the ingest API on loopback in the tests that script its answers
(retries, Retry-After, 413, refusals, events it fails on); the real API comes from the
live_api fixture of tests/conftest.py.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from routeledger import RouteLedger

Answer = tuple[int, dict[str, str], dict]  # status, headers, JSON body


class FakeApi:
    """Stores request ids once, like the API; `script` holds answers given before the normal
    ones, `max_events` makes larger batches a 413, and `judge(events)` may answer a batch
    instead (an Answer, or None for the normal one). An endpoint with a path before /v1
    (http://host:port/NAME) names its client: `calls` records (NAME, status, request ids)."""

    def __init__(self, port: int = 0) -> None:
        self.request_ids: set[str] = set()
        self.received: list[dict] = []  # every event judged: stored, duplicate or rejected
        self.posts: list[tuple[str, int]] = []  # (path, events in the batch) of every call
        self.calls: list[tuple[str, int, list[str]]] = []
        self.feedback: list[dict] = []
        self.script: list[Answer] = []
        self.max_events: int | None = None
        self.judge: Callable[[list[dict]], Answer | None] | None = None
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, path: str, body: dict) -> Answer:
        sender, _, path = path.rpartition("/v1/")
        path = "/v1/" + path
        items = body.get("requests") or body.get("feedback") or []
        with self.lock:
            answer = self._judged(path, items)
            ids = [item.get("request_id") for item in items]
            self.calls.append((sender.strip("/"), answer[0], ids))
            return answer

    def _judged(self, path: str, items: list[dict]) -> Answer:
        self.posts.append((path, len(items)))
        if self.script:
            return self.script.pop(0)
        if self.max_events is not None and len(items) > self.max_events:
            return 413, {}, {"detail": "too many events"}
        answer = self.judge(items) if self.judge is not None else None
        if answer is not None:
            return answer
        if path == "/v1/feedback":
            self.feedback.extend(items)
            return 200, {}, {"accepted": len(items), "duplicates": 0, "errors": []}
        accepted = duplicates = 0
        errors = []
        for index, event in enumerate(items):
            self.received.append(event)
            if event.get("feature") == "invalid":
                errors.append(
                    {"index": index, "request_id": event["request_id"], "error": "feature: invalid"}
                )
            elif event["request_id"] in self.request_ids:
                duplicates += 1
            else:
                self.request_ids.add(event["request_id"])
                accepted += 1
        status = 207 if errors else 200
        return status, {}, {"accepted": accepted, "duplicates": duplicates, "errors": errors}

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def do_POST(self) -> None:
                try:
                    raw = self.rfile.read(int(self.headers["Content-Length"]))
                    if self.headers.get("Content-Encoding") == "gzip":
                        raw = gzip.decompress(raw)
                    body = json.loads(raw)
                except (OSError, EOFError, ValueError):  # a client killed halfway through
                    self.close_connection = True
                    return
                status, headers, body = api._answer(self.path, body)
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler


@pytest.fixture
def start_fake_api():
    """Start a FakeApi, on a given port to stand for a restarted service."""
    servers = []

    def start(port: int = 0) -> FakeApi:
        servers.append(FakeApi(port))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def fake_api(start_fake_api):
    return start_fake_api()


@pytest.fixture
def send():
    return send_requests


@pytest.fixture
def make_client(tmp_path):
    """RouteLedger clients with a private spool and short waits, shut down after the test."""
    clients = []

    def make(endpoint: str, api_key: str = "test-key", **options) -> RouteLedger:
        options.setdefault("spool_dir", tmp_path / "spool")
        options.setdefault("flush_interval", 0.05)
        options.setdefault("shutdown_timeout", 0.5)
        client = RouteLedger(api_key=api_key, endpoint=endpoint, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown(timeout=0.5)


def send_requests(
    client: RouteLedger, count: int, feature: str = "support-chat", **fields
) -> list[str]:
    """Log `count` requests of two attempts each, as an app would; their request ids."""
    ids = []
    for number in range(count):
        with client.request(customer_id=f"customer-{number % 7}", feature=feature, **fields) as req:
            req.attempt(
                "gpt-4o-mini",
                "cheap",
                500,
                200,
                latency_ms=800.0,
                status="rejected",
                reason="quality_check",
                provider="openai",
            )
            req.attempt(
                "gpt-4o",
                "premium",
                520,
                310,
                latency_ms=2100.0,
                cost_usd=Decimal("0.0041"),
                provider="openai",
            )
        ids.append(req.request_id)
    return ids


def nested(levels):
    """A JSON object `levels` deep, valid and small, like the one that poisoned batches."""
    metadata = {"leaf": "x" * 100}
    for _ in range(levels - 1):
        metadata = {"deep": metadata}
    return metadata


def send_with_poison(client, count=500, every=50):
    """count requests, one in `every` with metadata 300 levels deep: (good ids, poison ids)."""
    good, poison = [], []
    for number in range(count):
        bad = number % every == every // 2
        (poison if bad else good).extend(
            send_requests(client, 1, metadata=nested(300) if bad else {"region": "eu"})
        )
    return good, poison
