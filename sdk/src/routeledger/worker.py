"""Delivery: bounded in-memory queues drained in batches by one daemon thread.

The calling thread only appends a plain dict to a deque. Encoding, gzip, HTTP, retries
and the spool all happen on the worker thread, except two slow paths that the app opted
into by overrunning the queue or by shutting down: then the calling thread spools itself.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from routeledger.spool import Spool
from routeledger.transport import Reply, Transport

logger = logging.getLogger("routeledger")

KINDS = ("requests", "feedback")  # each is an API path /v1/<kind> and the key of its batch body
STAT_NAMES = ("sent", "duplicates", "rejected", "spooled", "dropped", "retries")
MAX_BATCH_EVENTS = 1000  # the API takes at most this many events per call
_BACKOFF_BASE = 0.5  # seconds before the first retry; doubles with each failure
_BACKOFF_MAX = 30.0
_WARN_EVERY = 60.0  # seconds between two warnings of the same kind

RejectedCallback = Callable[[dict[str, Any], str], None]


class Worker:
    def __init__(
        self,
        transport: Transport | None,
        spool: Spool | None,
        *,
        batch_size: int,
        max_batch_bytes: int,
        flush_interval: float,
        max_queue: int,
        max_retries: int,
        shutdown_timeout: float,
        on_rejected: RejectedCallback | None,
    ) -> None:
        self._transport = transport
        self._spool = spool
        self._batch_size = max(1, min(batch_size, MAX_BATCH_EVENTS))
        self._max_batch_bytes = max_batch_bytes
        self._flush_interval = flush_interval
        self._max_queue = max_queue
        self._max_retries = max_retries
        self._shutdown_timeout = shutdown_timeout
        self._on_rejected = on_rejected
        # Without a transport (no key or a bad endpoint) the worker never starts: it counts drops.
        self._closed = transport is None
        self._stopping = self._closed
        self.reset_after_fork()
        self._start()  # at once, so that a spool left by an earlier run is replayed

    def reset_after_fork(self) -> None:
        """Start this process's state afresh: the parent keeps its thread, locks and queue."""
        self._queues: dict[str, deque[dict[str, Any]]] = {kind: deque() for kind in KINDS}
        self._take_lock = threading.Lock()  # the worker takes batches and shutdown drains under it
        self._in_flight: tuple[str, list[dict[str, Any]]] | None = None
        self._counts = dict.fromkeys(STAT_NAMES, 0)
        self._counts_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # work to do, a flush or a shutdown
        self._hurry = threading.Event()  # cuts a retry wait short: a flush or a shutdown
        self._flush_cond = threading.Condition()
        self._flush_requested = 0
        self._flushed = 0
        self._failures = 0  # consecutive failed sends
        self._retry_at = 0.0  # monotonic time before which the service is taken as down
        self._refusals_logged: set = set()
        self._warned_at: dict[str, float] = {}
        if self._transport is not None:
            self._transport.forget_connection()
        if self._spool is not None:
            self._spool.reset_after_fork()

    # Calling threads

    def put(self, kind: str, item: dict[str, Any]) -> None:
        """Hand one event to the worker; never blocks on the network, never raises."""
        queue = self._queues[kind]
        if len(queue) < self._max_queue and not self._closed:
            queue.append(item)
            if self._thread is None:
                self._start()
            elif len(queue) == self._batch_size:
                self._wake.set()
            return
        try:
            if not self._closed:
                self._warn(
                    "overflow",
                    "RouteLedger queue is full (%d events): spooling to disk",
                    self._max_queue,
                )
            self._spool_events(kind, [item])
        except Exception:
            logger.exception("RouteLedger could not keep an event")

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued and spooled is delivered; False when time ran out first."""
        if self._closed:
            return not self.pending()
        self._start()
        with self._flush_cond:
            self._flush_requested += 1
            target = self._flush_requested
        self._retry_at = 0.0  # try the service now, even if it looked down
        self._hurry.set()
        self._wake.set()
        with self._flush_cond:
            return self._flush_cond.wait_for(lambda: self._flushed >= target, timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush within the deadline, then spool what is left; later events go to the spool,
        made replayable by the next shutdown (the one at exit, for one)."""
        if self._closed:
            if self._spool is not None:
                self._spool.seal()
            return not self.pending()
        delivered = self.flush(self._shutdown_timeout if timeout is None else timeout)
        self._closed = True
        self._stopping = True
        self._hurry.set()
        self._wake.set()
        if not delivered:
            for kind, events in self._take_everything():
                self._spool_events(kind, events)
        if self._spool is not None:
            self._spool.seal()
        return delivered

    def pending(self) -> bool:
        return any(self._queues.values()) or (self._spool is not None and self._spool.has_pending())

    def stats(self) -> dict[str, int]:
        with self._counts_lock:
            counts = dict(self._counts)
        counts["queued"] = sum(len(queue) for queue in self._queues.values())
        return counts

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stopping:
                thread = threading.Thread(target=self._run, name="routeledger-worker", daemon=True)
                try:
                    thread.start()
                except RuntimeError as error:  # no thread now: the queue fills, then the spool
                    self._warn("thread", "RouteLedger cannot start its worker thread: %s", error)
                    return
                self._thread = thread

    # The worker thread

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                flush_target = self._flush_requested
                self._send_queued()
                while self._replay_one_file():
                    self._send_queued()  # fresh events go first, between spool files
                if not self.pending():
                    with self._flush_cond:
                        self._flushed = max(self._flushed, flush_target)
                        self._flush_cond.notify_all()
            except Exception:
                logger.exception("RouteLedger worker failed; it carries on")
        if self._transport is not None:
            self._transport.close()

    def _send_queued(self) -> None:
        for kind, queue in self._queues.items():
            while queue:
                with self._take_lock:
                    events = [queue.popleft() for _ in range(min(len(queue), self._batch_size))]
                    self._in_flight = (kind, events)
                for batch in self._batches(self._encode_all(events)):
                    if not self._deliver(kind, batch):
                        self._spool_lines(kind, batch)
                self._in_flight = None

    def _replay_one_file(self) -> bool:
        """Send the oldest spool file; False when there is none or the service did not take it."""
        if (
            self._spool is None
            or self._stopping
            or (self._failures and time.monotonic() < self._retry_at)
        ):
            return False
        claim = self._spool.claim_oldest()
        if claim is None:
            return False
        for batch in self._batches(claim.lines):
            if not self._deliver(claim.kind, batch):
                # The whole file goes back: what was delivered comes again as duplicates, ignored.
                self._spool.release(claim)
                return False
        self._spool.remove(claim)
        return True

    def _deliver(self, kind: str, lines: list[bytes]) -> bool:
        """Send one batch, retrying with backoff while the service may be back soon.
        False when it cannot be sent now: the caller keeps it in the spool."""
        while True:
            if self._failures and time.monotonic() < self._retry_at:
                return False  # known to be down: the spool takes it without waiting
            reply = self._post(kind, lines)
            if reply is None or reply.status in (408, 429) or reply.status >= 500:
                self._failures += 1
                delay = self._backoff(reply)
                self._retry_at = time.monotonic() + delay
                if self._failures > self._max_retries or self._stopping or delay > _BACKOFF_MAX:
                    return False
                self._hurry.wait(delay)
                self._hurry.clear()
                continue
            self._failures = 0
            if reply.status == 413 and len(lines) > 1:  # a proxy may allow less than the API
                half = len(lines) // 2
                return self._deliver(kind, lines[:half]) and self._deliver(kind, lines[half:])
            self._settle(lines, reply)
            return True

    def _post(self, kind: str, lines: list[bytes]) -> Reply | None:
        if self._failures:
            self._count(retries=1)
        body = b'{"' + kind.encode() + b'":[' + b",".join(lines) + b"]}"
        try:
            return self._transport.post("/v1/" + kind, body)
        except (OSError, http.client.HTTPException) as error:
            self._warn("network", "RouteLedger cannot reach the API: %s", error)
            return None

    def _backoff(self, reply: Reply | None) -> float:
        if reply is not None and reply.retry_after is not None:
            return reply.retry_after
        exponential = min(_BACKOFF_BASE * 2 ** (self._failures - 1), _BACKOFF_MAX)
        return exponential * random.uniform(0.5, 1.0)  # jitter: clients do not retry in step

    def _settle(self, lines: list[bytes], reply: Reply) -> None:
        if 200 <= reply.status < 300:
            payload = reply.payload if isinstance(reply.payload, dict) else {}
            errors = payload.get("errors") or []
            duplicates = int(payload.get("duplicates") or 0)
            accepted = payload.get("accepted")
            accepted = (
                int(accepted) if accepted is not None else len(lines) - len(errors) - duplicates
            )
            self._count(sent=accepted, duplicates=duplicates, rejected=len(errors))
            if errors:
                self._report_rejected(lines, errors)
            return
        self._count(rejected=len(lines))
        if reply.status not in self._refusals_logged:  # it would repeat for every batch
            self._refusals_logged.add(reply.status)
            logger.error(
                "RouteLedger API refused %d events with HTTP %d: %s",
                len(lines),
                reply.status,
                reply.text,
            )

    def _report_rejected(self, lines: list[bytes], errors: list[dict[str, Any]]) -> None:
        logger.warning(
            "RouteLedger API rejected %d of %d events, first: %s",
            len(errors),
            len(lines),
            errors[0],
        )
        for error in errors:
            index = error.get("index")
            valid_index = isinstance(index, int) and 0 <= index < len(lines)
            event = (
                json.loads(lines[index]) if valid_index else {"request_id": error.get("request_id")}
            )
            logger.debug(
                "RouteLedger rejected event %s: %s", event.get("request_id"), error.get("error")
            )
            if self._on_rejected is not None:
                try:
                    self._on_rejected(event, str(error.get("error")))
                except Exception:
                    logger.exception("RouteLedger on_rejected callback failed")

    # Both threads

    def _take_everything(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Empty the queues and take the batch in flight (it may still arrive: a duplicate then)."""
        with self._take_lock:
            taken = [self._in_flight] if self._in_flight is not None else []
            self._in_flight = None
            for kind, queue in self._queues.items():
                taken.append((kind, [queue.popleft() for _ in range(len(queue))]))
        return taken

    def _spool_events(self, kind: str, events: list[dict[str, Any]]) -> None:
        lines = self._encode_all(events)
        if lines:
            self._spool_lines(kind, lines)

    def _spool_lines(self, kind: str, lines: list[bytes]) -> None:
        if self._spool is not None and self._spool.append(kind, lines):
            self._count(spooled=len(lines))
            return
        self._count(dropped=len(lines))
        self._warn(
            "dropped", "RouteLedger dropped %d events: its spool is full or unavailable", len(lines)
        )

    def _encode_all(self, events: list[dict[str, Any]]) -> list[bytes]:
        lines = []
        for event in events:
            try:
                lines.append(encode(event))
            except (TypeError, ValueError) as error:
                self._count(dropped=1)
                logger.error("RouteLedger dropped an event it cannot encode: %s", error)
        return lines

    def _batches(self, lines: list[bytes]) -> Iterator[list[bytes]]:
        """Consecutive batches within the count and the byte limits."""
        batch: list[bytes] = []
        size = 0
        for line in lines:
            if batch and (
                len(batch) == self._batch_size or size + len(line) > self._max_batch_bytes
            ):
                yield batch
                batch, size = [], 0
            batch.append(line)
            size += len(line) + 1
        if batch:
            yield batch

    def _count(self, **amounts: int) -> None:
        with self._counts_lock:
            for name, amount in amounts.items():
                self._counts[name] += amount

    def _warn(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(key, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned_at[key] = now
            logger.warning(message, *args)


def encode(event: dict[str, Any]) -> bytes:
    """One event as the API takes it: no nulls, RFC 3339 timestamps, money as decimal text."""
    wire = {key: value for key, value in event.items() if value is not None}
    if "timestamp" in wire:
        wire["timestamp"] = _rfc3339(wire["timestamp"])
    if "revenue_usd" in wire:
        wire["revenue_usd"] = _decimal_text(wire["revenue_usd"])
    if "attempts" in wire:
        wire["attempts"] = [_wire_attempt(attempt) for attempt in wire["attempts"]]
    return json.dumps(wire, separators=(",", ":"), default=str).encode()


def _wire_attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    wire = {key: value for key, value in attempt.items() if value is not None}
    if "cost_usd" in wire:
        wire["cost_usd"] = _decimal_text(wire["cost_usd"])
    return wire


def _rfc3339(timestamp: Any) -> Any:
    if isinstance(timestamp, float):
        timestamp = datetime.fromtimestamp(timestamp, timezone.utc)
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=timezone.utc)  # naive datetimes are taken as UTC
        text = timestamp.astimezone(timezone.utc).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    return timestamp  # a string is the caller's own RFC 3339 text


def _decimal_text(amount: Any) -> str:
    """Decimal, int, float or numeric text as plain decimal text; floats through their repr,
    so 0.1 stays "0.1"."""
    try:
        return format(Decimal(str(amount)), "f")
    except InvalidOperation:
        return str(amount)  # the API names the field in its error
