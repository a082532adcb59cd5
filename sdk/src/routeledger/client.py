"""The RouteLedger client and the request it records."""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import random
import time
import weakref
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from routeledger.spool import Spool
from routeledger.transport import Transport
from routeledger.usage import read_usage
from routeledger.worker import RejectedCallback, Worker

if TYPE_CHECKING:
    from routeledger.routing import RouteDecision, Router

logger = logging.getLogger("routeledger")

DEFAULT_ENDPOINT = "http://localhost:8000"
Money = Union[Decimal, str, int, float]  # sent as decimal text


class RouteLedger:
    """Records routed LLM requests and delivers them to RouteLedger in the background.

    Nothing here raises into the app or waits on the network: events go to an in-memory
    queue that one daemon thread sends in gzipped batches, and to an on-disk spool when
    the service cannot take them, replayed once it answers again.
    """

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str | None = None,
        *,
        batch_size: int = 500,
        max_batch_bytes: int = 4 << 20,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        max_retries: int = 3,
        timeout: float = 10.0,
        shutdown_timeout: float = 2.0,
        spool_dir: str | Path | None = None,
        max_spool_bytes: int = 256 << 20,
        on_rejected: RejectedCallback | None = None,
    ) -> None:
        """api_key and endpoint fall back to ROUTELEDGER_API_KEY and ROUTELEDGER_ENDPOINT,
        spool_dir to ROUTELEDGER_SPOOL_DIR, then ~/.cache/routeledger/spool.
        on_rejected(event, error) is called on the worker thread for each event the API rejects
        (judges invalid), with the API's message."""
        # Read from a file or a secret, a key often ends with a line break: never part of it.
        api_key = (api_key or os.environ.get("ROUTELEDGER_API_KEY") or "").strip()
        endpoint = endpoint or os.environ.get("ROUTELEDGER_ENDPOINT") or DEFAULT_ENDPOINT
        transport = spool = None
        if not api_key:
            logger.error("RouteLedger has no API key (ROUTELEDGER_API_KEY): events are dropped")
        else:
            try:
                transport = Transport(endpoint, api_key, timeout)
                spool = _open_spool(spool_dir, endpoint, api_key, max_spool_bytes)
            except ValueError as error:
                logger.error("RouteLedger is disabled: %s", error)
        self._worker = Worker(
            transport,
            spool,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            flush_interval=flush_interval,
            max_queue=max_queue,
            max_retries=max_retries,
            shutdown_timeout=shutdown_timeout,
            on_rejected=on_rejected,
        )
        self.spool_dir = spool.directory if spool is not None else None
        _workers.add(self._worker)

    def request(
        self,
        customer_id: str,
        feature: str,
        *,
        intended_tier: str | None = None,
        router: RouteDecision | Mapping[str, Any] | None = None,
        experiment: Mapping[str, str] | None = None,
        user_tier: str | None = None,
        task_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> Request:
        """One routed request; `with client.request(...) as req:` sends it when the block ends.

        experiment is {"name": ..., "arm": ...}; router is a RouteDecision or the event's
        router object. request_id and timestamp default to a new UUID and now."""
        if router is not None and not isinstance(router, Mapping):
            intended_tier = intended_tier or router.tier
            router = router.as_event()
        if timestamp is None:
            timestamp = time.time()  # a float: the worker formats it, off the calling thread
        return Request(
            self._worker,
            {
                "request_id": request_id or new_request_id(),
                "timestamp": timestamp,
                "customer_id": customer_id,
                "feature": feature,
                "user_tier": user_tier,
                "task_type": task_type,
                "intended_tier": intended_tier,
                "router": router,
                "experiment": experiment,
                "attempts": [],
                "quality": None,
                "revenue_usd": None,
                "metadata": metadata,
            },
        )

    def feedback(
        self,
        request_id: str,
        score: float,
        *,
        source: str | None = None,
        comment: str | None = None,
    ) -> None:
        """Quality in [0, 1] that arrives after the request was sent."""
        self._worker.put(
            "feedback",
            {"request_id": request_id, "score": score, "source": source, "comment": comment},
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued and spooled has been delivered, or the timeout passes.
        True when nothing is left to send; False too while events are held (the API failed
        on them: they are retried every few minutes, and not waited for)."""
        return self._worker.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush within the timeout (shutdown_timeout by default), then spool what is left.
        Runs by itself at interpreter exit. True when everything was delivered."""
        return self._worker.shutdown(timeout)

    def stats(self) -> dict[str, int]:
        """Event counts: queued (waiting in memory now), and since start sent, duplicates,
        rejected (judged invalid by the API, dropped), held (set aside after the API failed
        on them), spooled (written to disk), dropped (lost) and retries (HTTP requests that
        send events again)."""
        return self._worker.stats()

    def __enter__(self) -> RouteLedger:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()


class Request:
    """One end-user request and its attempts, sent once when its block ends (or on send())."""

    __slots__ = ("_worker", "_event", "_sent")

    def __init__(self, worker: Worker, event: dict[str, Any]) -> None:
        self._worker = worker
        self._event = event
        self._sent = False

    @property
    def request_id(self) -> str:
        return self._event["request_id"]

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return self._event["attempts"]

    @property
    def intended_tier(self) -> str | None:
        return self._event["intended_tier"]

    @intended_tier.setter
    def intended_tier(self, tier: str) -> None:
        self._event["intended_tier"] = tier

    def attempt(
        self,
        model: str,
        tier: str,
        input_tokens: int,
        output_tokens: int,
        *,
        latency_ms: float | None = None,
        status: str = "ok",
        reason: str | None = None,
        provider: str | None = None,
        cost_usd: Money | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        """Record one model call, in call order. status: ok, error, timeout or rejected
        (the answer came back and failed a check). input_tokens excludes cache reads and writes."""
        self._event["attempts"].append(
            {
                "model": model,
                "provider": provider,
                "tier": tier,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_tokens": cache_read_tokens,
                "cache_write_tokens": cache_write_tokens,
                "cost_usd": cost_usd,
                "latency_ms": latency_ms,
                "status": status,
                "reason": reason,
            }
        )

    def attempt_from_response(
        self,
        response: Any,
        tier: str,
        *,
        model: str | None = None,
        latency_ms: float | None = None,
        status: str = "ok",
        reason: str | None = None,
        provider: str | None = None,
        cost_usd: Money | None = None,
    ) -> None:
        """Record a call from its response: an OpenAI chat completion or response, an
        Anthropic message, or a dict of either; model defaults to the response's."""
        usage = read_usage(response)
        self.attempt(
            model or usage.model or "unknown",
            tier,
            usage.input_tokens,
            usage.output_tokens,
            latency_ms=latency_ms,
            status=status,
            reason=reason,
            provider=provider,
            cost_usd=cost_usd,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )

    def timed(self, model: str, tier: str, *, provider: str | None = None) -> TimedAttempt:
        """`with req.timed(model, tier) as call: call.set_response(client.create(...))` records
        an attempt with its measured latency; an exception in the block becomes an error (or
        timeout) attempt and is re-raised."""
        return TimedAttempt(self, model, tier, provider)

    def route(self, router: Router, text: str = "", **context: Any) -> RouteDecision:
        """Ask a router for the tier, recording its decision, confidence and latency; the
        request's feature, user tier and task type are passed along unless given."""
        for name in ("feature", "user_tier", "task_type"):
            context.setdefault(name, self._event[name])
        started = time.perf_counter()
        decision = router.route(text, **context)
        if decision.latency_ms is None:
            decision.latency_ms = (time.perf_counter() - started) * 1000
        if decision.strategy is None:
            decision.strategy = getattr(router, "strategy", None) or type(router).__name__
        if decision.version is None:
            decision.version = getattr(router, "version", None)
        self._event["intended_tier"] = decision.tier
        self._event["router"] = decision.as_event()
        return decision

    def set_quality(self, score: float, source: str | None = None) -> None:
        """Quality in [0, 1]; client.feedback() sends it when it is known only later."""
        self._event["quality"] = (
            {"score": score} if source is None else {"score": score, "source": source}
        )

    def set_revenue(self, amount_usd: Money) -> None:
        """What the customer paid for this request, for per-customer margins."""
        self._event["revenue_usd"] = amount_usd

    def send(self) -> None:
        """Hand the request to the client; the end of the `with` block calls it. Only once."""
        if self._sent:
            return
        self._sent = True
        if not self._event["attempts"]:
            logger.debug(
                "RouteLedger request %s has no attempts: not sent", self._event["request_id"]
            )
            return
        event = self._event
        # The caller's own dicts are read later, on the worker thread: as they are now.
        for name in ("router", "experiment", "metadata"):
            if event[name] is not None:
                try:
                    event[name] = _snapshot(event[name])
                except Exception:  # a dict holding itself, a mapping that fails: never the app's
                    logger.warning(
                        "RouteLedger could not copy the %s of request %s: it is sent as it is "
                        "when encoded",
                        name,
                        event["request_id"],
                    )
        self._worker.put("requests", event)

    def __enter__(self) -> Request:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.send()


class TimedAttempt:
    """An attempt whose latency is measured around a `with` block; see Request.timed()."""

    __slots__ = (
        "_request",
        "model",
        "tier",
        "provider",
        "status",
        "reason",
        "cost_usd",
        "_tokens",
        "_started",
    )

    def __init__(self, request: Request, model: str, tier: str, provider: str | None) -> None:
        self._request = request
        self.model = model
        self.tier = tier
        self.provider = provider
        self.status = "ok"
        self.reason: str | None = None
        self.cost_usd: Money | None = None
        self._tokens = (0, 0, 0, 0)  # input, output, cache read, cache write
        self._started = 0.0

    def set_response(self, response: Any) -> None:
        """Take the token counts from a provider response (see Request.attempt_from_response)."""
        usage = read_usage(response)
        self._tokens = (
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
        )

    def set_tokens(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        self._tokens = (input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)

    def reject(self, reason: str) -> None:
        """The answer came back but failed a quality or confidence check."""
        self.status = "rejected"
        self.reason = reason

    def __enter__(self) -> TimedAttempt:
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, error: BaseException | None, traceback: Any) -> None:
        latency_ms = (time.perf_counter() - self._started) * 1000
        if error is not None:
            self.status = status_of(error)
            self.reason = type(error).__name__
        input_tokens, output_tokens, cache_read, cache_write = self._tokens
        self._request.attempt(
            self.model,
            self.tier,
            input_tokens,
            output_tokens,
            latency_ms=latency_ms,
            status=self.status,
            reason=self.reason,
            provider=self.provider,
            cost_usd=self.cost_usd,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        )


def status_of(error: BaseException) -> str:
    """The status of an attempt that raised: a timeout for TimeoutError and the providers'
    own timeout errors (known by name, so that no provider package is imported), else an
    error."""
    return "timeout" if any("Timeout" in cls.__name__ for cls in type(error).__mro__) else "error"


# A private generator: str(uuid.uuid4()) costs about 3 µs on the calling thread, this
# about 1 µs, and an app that seeds the global `random` cannot make ids repeat.
_ids = random.Random(os.urandom(32))
_UUID4_BITS = (4 << 76) | (2 << 62)  # version 4, RFC 4122 variant
_UUID4_MASK = ((1 << 128) - 1) ^ ((0xF << 76) | (0x3 << 62))


def new_request_id() -> str:
    """A random (version 4) UUID as text."""
    digits = "%032x" % (_ids.getrandbits(128) & _UUID4_MASK | _UUID4_BITS)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _open_spool(
    spool_dir: str | Path | None, endpoint: str, api_key: str, max_bytes: int
) -> Spool | None:
    """The spool of this endpoint and key: events are only ever replayed where they were bound."""
    binding = hashlib.sha256(f"{endpoint}\n{api_key}".encode()).hexdigest()[:16]
    try:
        base = (
            spool_dir
            or os.environ.get("ROUTELEDGER_SPOOL_DIR")
            or Path.home() / ".cache" / "routeledger" / "spool"
        )
        return Spool(os.path.join(os.fspath(base), binding), max_bytes)
    except (OSError, RuntimeError) as error:  # RuntimeError: no home directory
        logger.warning(
            "RouteLedger has no spool (%s): events that cannot be sent in time are dropped", error
        )
        return None


# Workers shut down at interpreter exit and start afresh in a forked child. They are
# tracked rather than clients: a running worker outlives a client the app let go of.
_workers: weakref.WeakSet[Worker] = weakref.WeakSet()


def _shutdown_all() -> None:
    for worker in list(_workers):
        worker.shutdown()


def _reset_all_after_fork() -> None:
    global _ids
    _ids = random.Random(os.urandom(32))  # the child must not repeat the parent's ids
    for worker in list(_workers):
        worker.reset_after_fork()


atexit.register(_shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)


def _snapshot(value: Any) -> Any:
    """A copy of JSON-like data (mappings and sequences, copied all the way down), so that
    the caller can change its objects once the request is sent."""
    if isinstance(value, Mapping):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_snapshot(item) for item in value]
    return value
