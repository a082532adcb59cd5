"""Who is calling: the API key checked before anything else is read, its rate counted.

The body middleware resolves the caller of every call that sends a body before reading it
(a 5 MiB body of a caller without a key is never read nor decompressed), and the routes'
dependencies reuse that answer. Calls without a valid key are throttled per client address
in this process, before they cost a database lookup."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from app.db import transaction
from app.periods import utc_now
from app.services import rate_limits
from app.services.projects import Caller, authenticate
from app.settings import get_settings

# Calls without a valid key: bursts of 20 per address, then 2 a second.
FAILURES_PER_SECOND = 2.0
FAILURE_BURST = 20.0


@dataclass
class Refused(Exception):
    """The call is refused before any route runs: status, message and headers."""

    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


class FailureThrottle:
    """A token bucket per client address, spent by calls without a valid key."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, last = self._buckets.get(address, (FAILURE_BURST, now))
        return min(FAILURE_BURST, tokens + (now - last) * FAILURES_PER_SECOND)

    def retry_after(self, address: str) -> float:
        """0 while the address may still fail, else seconds until it may call again."""
        with self._lock:
            tokens = self._tokens(address, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / FAILURES_PER_SECOND

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._buckets[address] = (self._tokens(address, now) - 1, now)
            if len(self._buckets) > 100_000:  # forget the quietest half now and then
                for stale in sorted(self._buckets, key=lambda a: self._buckets[a][1])[:50_000]:
                    del self._buckets[stale]


failures = FailureThrottle()


def client_address(scope: dict) -> str:
    """The caller's address (its proxy's forwarded one, as uvicorn's proxy_headers sets it)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def _seconds(wait: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait)))}


def resolve_caller(authorization: str | None, *, address: str) -> Caller:
    """The caller of a key sent as `Authorization: Bearer <key>`, with this call counted
    against its rate; Refused (401 or 429) otherwise."""
    wait = failures.retry_after(address)
    if wait:
        raise Refused(
            429, "too many calls without a valid API key from this address", _seconds(wait)
        )
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        failures.failed(address)
        raise Refused(
            401, "missing API key: send Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
        )
    with transaction() as conn:
        caller = authenticate(conn, secret=secret.strip())
        if caller is None:
            failures.failed(address)
            raise Refused(401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
        rate = caller.rate_limit_per_second or get_settings().routeledger_rate_limit_per_second
        wait = rate_limits.take(conn, key_id=caller.key_id, rate=rate, now=utc_now())
    if wait:
        raise Refused(429, f"over this key's rate of {rate:g} calls per second", _seconds(wait))
    return caller
