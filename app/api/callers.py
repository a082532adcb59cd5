"""Who is calling: the API key checked before anything else is read, its rate counted.

The body middleware resolves the caller of every call that sends a body before reading it
(a 5 MiB body of a caller without a key is never read nor decompressed), and the routes'
dependencies reuse that answer. Calls without a valid key are throttled per client address
in this process, before they cost a database lookup."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from app.db import transaction
from app.periods import utc_now
from app.services import rate_limits
from app.services.projects import Caller, authenticate, hash_key
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


# Keys this process found valid, by hash, that a throttled address may still call with.
KNOWN_KEYS_KEPT = 10_000
# Far longer than any key made here (app.services.projects): a longer one is not a key.
MAX_KEY_CHARS = 200


class FailureThrottle:
    """A token bucket per client address, spent by calls without a valid key; and the keys
    found valid (their hashes), which the bucket does not stop: one client's bad key must not
    lock out the good ones behind the same address (a NAT, a proxy)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._known_keys: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def knows(self, key_hash: bytes) -> bool:
        with self._lock:
            return key_hash in self._known_keys

    def valid(self, key_hash: bytes) -> None:
        with self._lock:
            self._known_keys[key_hash] = None
            self._known_keys.move_to_end(key_hash)
            if len(self._known_keys) > KNOWN_KEYS_KEPT:
                self._known_keys.popitem(last=False)

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
    against its rate; Refused (401 or 429) otherwise. An address that sent too many calls
    without a valid key is refused before any database lookup, but for keys found valid
    before (a revoked one is then refused by the lookup)."""
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    if len(secret) > MAX_KEY_CHARS:
        secret = ""  # no key of ours is this long: not hashed, not looked up
    key_hash = hash_key(secret)
    wait = failures.retry_after(address)
    if wait and not failures.knows(key_hash):
        raise Refused(
            429, "too many calls without a valid API key from this address", _seconds(wait)
        )
    if scheme.lower() != "bearer" or not secret:
        failures.failed(address)
        raise Refused(
            401, "missing API key: send Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
        )
    with transaction() as conn:
        caller = authenticate(conn, secret=secret)
        if caller is None:
            failures.failed(address)
            raise Refused(401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
        failures.valid(key_hash)
        rate = caller.rate_limit_per_second or get_settings().routeledger_rate_limit_per_second
        wait = rate_limits.take(conn, key_id=caller.key_id, rate=rate, now=utc_now())
    if wait:
        raise Refused(429, f"over this key's rate of {rate:g} calls per second", _seconds(wait))
    return caller
