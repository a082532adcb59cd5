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

from tests.helpers import FakeApi, send_requests
from routeledger import RouteLedger


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
