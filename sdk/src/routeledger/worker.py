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

from routeledger.spool import HOLD_SECONDS, Spool
from routeledger.transport import Reply, Transport

logger = logging.getLogger("routeledger")

KINDS = ("requests", "feedback")  # each is an API path /v1/<kind> and the key of its batch body
STAT_NAMES = ("sent", "duplicates", "rejected", "held", "spooled", "dropped", "retries")
MAX_BATCH_EVENTS = 1000  # the API takes at most this many events per call
# The service cannot take anything now: the same batch again later, never split.
UNAVAILABLE = frozenset({408, 429, 502, 503, 504})
# The API refuses what the batch holds: halves are sent, down to the event it refuses.
CONTENT_REFUSALS = frozenset({400, 413, 422})
_BACKOFF_BASE = 0.5  # seconds before the first retry; doubles with each failure
_BACKOFF_MAX = 30.0
_WARN_EVERY = 60.0  # seconds between two warnings of the same kind

RejectedCallback = Callable[[dict[str, Any], str], None]


class _InFlight:
    """Lines the worker is sending; those before `unsettled` still need sending."""

    __slots__ = ("kind", "lines", "unsettled")

    def __init__(self, kind: str, lines: list[bytes]) -> None:
        self.kind = kind
        self.lines = lines
        self.unsettled = len(lines)

    def settle(self, index: int) -> None:
        self.unsettled = index


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
        # Refusals in a row, without an event taken, before a split batch is left for later:
        # enough to reach the first refused event and its neighbours, few enough that an API
        # failing on everything is not sent every event of a batch one by one.
        self._split_budget = 2 * self._batch_size.bit_length() + 2
        # Without a transport (no key or a bad endpoint) the worker never starts: it counts drops.
        self._closed = transport is None
        self._stopping = self._closed
        self.reset_after_fork()
        self._start()  # at once, so that a spool left by an earlier run is replayed

    def reset_after_fork(self) -> None:
        """Start this process's state afresh: the parent keeps its thread, locks and queue
        (the spool lets go of the parent's files by itself)."""
        self._queues: dict[str, deque[dict[str, Any]]] = {kind: deque() for kind in KINDS}
        self._take_lock = threading.Lock()  # the worker takes batches and shutdown drains under it
        self._in_flight: _InFlight | None = None
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
        self._last_reply_ok = False  # the API's last answer was a 2xx
        self._warned_at: dict[str, float] = {}
        if self._transport is not None:
            self._transport.forget_connection()

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
        """Wait until everything queued and spooled is delivered; False when time ran out
        first, or when events are held (see Spool.hold): those are not waited for."""
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
            done = self._flush_cond.wait_for(lambda: self._flushed >= target, timeout)
        return done and not (self._spool is not None and self._spool.has_held())

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
            for kind, lines in self._take_everything():
                if lines:
                    self._spool_lines(kind, lines)
        if self._spool is not None:
            self._spool.seal()
        return delivered

    def pending(self) -> bool:
        """Whether anything waits: queued, spooled, or held."""
        return self._sendable() or (self._spool is not None and self._spool.has_held())

    def stats(self) -> dict[str, int]:
        with self._counts_lock:
            counts = dict(self._counts)
        counts["queued"] = sum(len(queue) for queue in self._queues.values())
        return counts

    def _sendable(self) -> bool:
        return any(self._queues.values()) or (self._spool is not None and self._spool.has_pending())

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
                if not self._sendable():
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
                    flight = _InFlight(kind, self._encode_all(events))
                    self._in_flight = flight
                try:
                    left = self._deliver(kind, flight.lines, flight.settle)
                except Exception:  # a bug of ours: the batch is kept, never lost with it
                    logger.exception("RouteLedger could not send a batch: it is spooled")
                    left = flight.unsettled
                with self._take_lock:
                    if self._in_flight is not flight:
                        continue  # a shutdown took it and spooled what was left
                    self._in_flight = None
                    if left:
                        self._spool_lines(kind, flight.lines[:left])

    def _replay_one_file(self) -> bool:
        """Send the oldest spool file, cutting each delivered batch off its end; False when
        there is none or the service did not take all of it."""
        if (
            self._spool is None
            or self._stopping
            or (self._failures and time.monotonic() < self._retry_at)
        ):
            return False
        claim = self._spool.claim_oldest()
        if claim is None:
            return False

        def settle(index: int) -> None:
            if index:  # all of it: removed below
                self._spool.truncate(claim, index)

        try:
            left = self._deliver(claim.kind, claim.lines, settle)
        except Exception:
            self._spool.release(claim)  # for a later try; a claim kept would hide the file
            raise
        if left:
            self._spool.release(claim)
            return False
        self._spool.remove(claim)
        return True

    def _deliver(self, kind: str, lines: list[bytes], settle: Callable[[int], None]) -> int:
        """Send lines, last batch first, until each is stored, a duplicate, rejected (the API
        says it is invalid) or held (the API fails on it); settle(i) says that lines[i:] are
        done. Returns how many lines, from the first, are still to send: the service is down
        or refuses the key, and they are kept for later.

        A batch the API refuses whole (400, 413, 422, or a server error) is split in halves,
        the later half first, down to single events, so the settled lines are always the end
        of the list and a spool file is only ever shortened."""
        ranges = [(start, end, False) for start, end in self._batch_ranges(lines)]
        proven = self._last_reply_ok  # the API takes this client's batches
        refusals = 0  # in a row, without a batch taken
        while ranges:
            start, end, resend = ranges.pop()
            if self._stopping:  # a shutdown spools what is left: sending it too would repeat it
                return end
            reply = self._send(kind, lines[start:end], resend)
            if reply is None:
                return end
            status = reply.status
            if 200 <= status < 300 and not _is_ingest_answer(reply):
                # A proxy or portal answering for the API: nothing says the events are stored.
                self._back_off(None)
                self._warn(
                    "not-the-api",
                    "RouteLedger got HTTP %d without the API's answer (%s): the events are kept "
                    "in the spool until the API takes them; check the endpoint",
                    status,
                    reply.text,
                    level=logging.ERROR,
                )
                return end
            if 200 <= status < 300:
                self._settle(lines[start:end], reply)
                proven, refusals = True, 0
            elif status in CONTENT_REFUSALS or status >= 500:
                refusals += 1
                if end - start > 1:
                    if refusals > self._split_budget:
                        self._back_off(reply)
                        return end
                    middle = (start + end) // 2
                    ranges += [(start, middle, True), (middle, end, True)]
                    continue
                if status < 500 and proven:
                    self._reject(json.loads(lines[start]), _message(reply))
                else:
                    # A server error, or a refusal before the API took anything: the event
                    # may be fine, so it waits apart rather than in front of the others.
                    self._hold(kind, lines[start], reply)
            else:  # 401, 403, 404...: the key or the endpoint is wrong, not the events
                self._back_off(reply)
                self._warn(
                    f"refused-{status}",
                    "RouteLedger API refused events with HTTP %d (%s): they are kept in the "
                    "spool until it takes them; check the API key and endpoint",
                    status,
                    _message(reply),
                    level=logging.ERROR,
                )
                return end
            settle(start)
        return 0

    def _send(self, kind: str, lines: list[bytes], resend: bool) -> Reply | None:
        """POST one batch, retrying with backoff while the service may be back soon. None
        when it cannot be sent now: the caller keeps it."""
        while True:
            if self._failures and time.monotonic() < self._retry_at:
                return None  # known to be down: the spool takes it without waiting
            reply = self._post(kind, lines, resend or self._failures > 0)
            # (A 2xx that is not the API's answer proves nothing: it counts as a failure.)
            self._last_reply_ok = (
                reply is not None and 200 <= reply.status < 300 and _is_ingest_answer(reply)
            )
            if reply is not None and reply.status not in UNAVAILABLE:
                if self._last_reply_ok or reply.status in CONTENT_REFUSALS:
                    self._failures = 0  # the service works; server errors and refusals of
                    # the key keep counting, so that their backoff grows
                return reply
            delay = self._back_off(reply)
            if self._failures > self._max_retries or self._stopping:
                return None
            self._hurry.wait(delay)
            self._hurry.clear()

    def _post(self, kind: str, lines: list[bytes], resend: bool) -> Reply | None:
        if resend:
            self._count(retries=1)
        body = b'{"' + kind.encode() + b'":[' + b",".join(lines) + b"]}"
        try:
            return self._transport.post("/v1/" + kind, body)
        except (OSError, http.client.HTTPException) as error:
            self._warn("network", "RouteLedger cannot reach the API: %s", error)
            return None

    def _back_off(self, reply: Reply | None) -> float:
        """Take the service as down for a while; the delay, growing with each failure."""
        self._failures += 1
        if reply is not None and reply.retry_after is not None:
            # As the service asks, within the bounds of a probe: an hour's Retry-After would
            # keep the events from a service back in a minute, 0 would send them in a loop.
            delay = min(max(reply.retry_after, _BACKOFF_BASE), _BACKOFF_MAX)
        else:
            # (The exponent is bounded: failures go on counting through a long outage.)
            exponential = min(_BACKOFF_BASE * 2 ** min(self._failures - 1, 16), _BACKOFF_MAX)
            delay = exponential * random.uniform(0.5, 1.0)  # jitter: clients do not retry in step
        self._retry_at = time.monotonic() + delay
        return delay

    def _settle(self, lines: list[bytes], reply: Reply) -> None:
        """A 200 or 207: the events listed in its errors are rejected, the others stored."""
        payload = reply.payload  # a dict: _is_ingest_answer
        errors = [error for error in payload.get("errors") or [] if isinstance(error, dict)]
        duplicates = int(payload.get("duplicates") or 0)
        # Feedback for a request not stored yet is held by the API: delivered all the same.
        accepted = int(payload["accepted"]) + int(payload.get("held") or 0)
        self._count(sent=accepted, duplicates=duplicates)
        for error in errors:
            index = error.get("index")
            event = (
                json.loads(lines[index])
                if isinstance(index, int) and 0 <= index < len(lines)
                else {"request_id": error.get("request_id")}
            )
            self._reject(event, str(error.get("error")))

    def _reject(self, event: dict[str, Any], error: str) -> None:
        """An event the API says is invalid: dropped, counted, logged and passed on."""
        self._count(rejected=1)
        logger.warning("RouteLedger API rejected event %s: %s", event.get("request_id"), error)
        if self._on_rejected is not None:
            try:
                self._on_rejected(event, error)
            except Exception:
                logger.exception("RouteLedger on_rejected callback failed")

    def _hold(self, kind: str, line: bytes, reply: Reply) -> None:
        if self._spool is not None and self._spool.hold(kind, [line]):
            self._count(held=1)
            logger.warning(
                "RouteLedger API answered HTTP %d for event %s alone (%s): held, tried again "
                "every %d s",
                reply.status,
                json.loads(line).get("request_id"),
                _message(reply),
                HOLD_SECONDS,
            )
            return
        self._count(dropped=1)
        self._warn(
            "dropped",
            "RouteLedger dropped an event the API failed on: its spool is full or unavailable",
        )

    # Both threads

    def _take_everything(self) -> list[tuple[str, list[bytes]]]:
        """Empty the queues and take what the batch in flight has not settled (it may still
        arrive: a duplicate then)."""
        with self._take_lock:
            flight, self._in_flight = self._in_flight, None
            taken = [(flight.kind, flight.lines[: flight.unsettled])] if flight else []
            for kind, queue in self._queues.items():
                events = [queue.popleft() for _ in range(len(queue))]
                taken.append((kind, self._encode_all(events)))
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
            except Exception as error:  # a value whose str() raises, a year out of range...
                self._count(dropped=1)
                logger.error(
                    "RouteLedger dropped event %s, which it cannot encode: %r",
                    event.get("request_id"),
                    error,
                )
        return lines

    def _batch_ranges(self, lines: list[bytes]) -> Iterator[tuple[int, int]]:
        """Consecutive batches within the count and the byte limits, as (start, end)."""
        start = size = 0
        for index, line in enumerate(lines):
            if index > start and (
                index - start == self._batch_size or size + len(line) > self._max_batch_bytes
            ):
                yield start, index
                start, size = index, 0
            size += len(line) + 1
        if start < len(lines):
            yield start, len(lines)

    def _count(self, **amounts: int) -> None:
        with self._counts_lock:
            for name, amount in amounts.items():
                self._counts[name] += amount

    def _warn(self, key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(key, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned_at[key] = now
            logger.log(level, message, *args)


def _is_ingest_answer(reply: Reply) -> bool:
    """Whether a 2xx is the API's own answer to an ingest call: it says what it took."""
    return isinstance(reply.payload, dict) and "accepted" in reply.payload


def _message(reply: Reply) -> str:
    """What the API said about a refusal: its detail, else the start of its body."""
    if isinstance(reply.payload, dict) and reply.payload.get("detail"):
        return str(reply.payload["detail"])
    return reply.text


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
        # A naive datetime is local time, as Python's own astimezone() and timestamp() take it
        # (datetime.now() is one): the offset of the local zone at that time applies.
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
