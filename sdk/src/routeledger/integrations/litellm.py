"""LiteLLM: one RouteLedger event per Router call, with every retry and fallback as an attempt.

    import litellm
    from routeledger.integrations.litellm import RouteLedgerLogger

    litellm.callbacks = [RouteLedgerLogger()]  # ROUTELEDGER_API_KEY, ROUTELEDGER_ENDPOINT
    await router.acompletion(model="cheap", messages=messages,
                             metadata={"customer_id": "acme", "feature": "support-chat"})

LiteLLM reports each model call of a Router call on its own, all sharing the call's
`litellm_trace_id` (the Router makes one per call). This logger gathers them: a success ends
the call and sends it; a call that only failed is sent once no attempt of it was under way
and nothing more arrived for it for `failed_call_settle_seconds` (LiteLLM has no "gave up"
callback), or on flush() and at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "routeledger.integrations.litellm needs LiteLLM: pip install 'routeledger-sdk[litellm]'"
    ) from error

from routeledger.client import RouteLedger

logger = logging.getLogger("routeledger")

# request_id = UUIDv5(this namespace, LiteLLM's trace id, then ":n" for the n-th further
# call under the same trace id): a call sent twice is stored once.
REQUEST_ID_NAMESPACE = uuid.UUID("0e5b8f1c-4d7a-5b3e-9c2f-1a6d8e4b7c30")
UNATTRIBUTED = "(unattributed)"
MAX_REASON = 200
_REMEMBERED_CALLS = 10_000
# LiteLLM's cost is a float: its last digits are the arithmetic's noise (0.0000975 comes out
# as 9.750000000000001e-05), so it is read to the digits a float holds.
_FLOAT_DIGITS = 15
# The longest Retry-After LiteLLM's Router waits for before its next try.
_MAX_RETRY_AFTER = 60.0


@dataclass
class _Call:
    """The attempts of one Router call seen so far."""

    request_key: str  # what its request_id is derived from
    context: dict[str, Any]
    attempts: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    last_seen: float = 0.0  # time.monotonic() of its latest attempt
    retry_due: bool = False  # its latest attempt failed with retries of its model group left
    # The Retry-After of its latest failure: the Router waits that long before its next try or
    # its fallback, so the call is not quiet until then.
    pause: float = 0.0

    def quiet_since(self) -> float:
        return self.last_seen + self.pause


class RouteLedgerLogger(CustomLogger):
    """A LiteLLM CustomLogger that records each Router call as one routed request.

    The call's `metadata` names the request: `customer_id` (else LiteLLM's `user`, else
    "(unattributed)"), `feature` (else `default_feature`), and optionally `intended_tier`,
    `user_tier` and `task_type`. An attempt's tier is its deployment's
    `model_info[tier_key]`, else `tiers[model group]`, else the model group's name. A cost
    is taken from LiteLLM only when LiteLLM priced the call above 0; otherwise RouteLedger
    prices it (a model LiteLLM does not know costs 0 there, silently). A failed call that
    used no tokens costs 0.

    A call whose attempts all failed so far waits while one of its attempts is under way (a
    slow fallback) or the Router has retries of it left, for at most
    `attempt_timeout_seconds`, and then for `failed_call_settle_seconds` without news (after
    the Retry-After its last failure asked for, which the Router waits before its fallback)
    before it is sent as failed. Its intended tier, unless the metadata names one, is the
    tier of the model group the app asked for (seen on an earlier call, or in `tiers`), so a
    call that goes straight to its fallback, the group cooled down, is still an escalation."""

    def __init__(
        self,
        ledger: RouteLedger | None = None,
        *,
        tier_key: str = "routeledger_tier",
        tiers: Mapping[str, str] | None = None,
        default_feature: str = "litellm",
        failed_call_settle_seconds: float = 30.0,
        attempt_timeout_seconds: float = 600.0,
    ) -> None:
        super().__init__()
        self.ledger = ledger if ledger is not None else RouteLedger()
        self.tier_key = tier_key
        self.tiers = dict(tiers or {})
        self.default_feature = default_feature
        self.failed_call_settle_seconds = failed_call_settle_seconds
        self.attempt_timeout_seconds = attempt_timeout_seconds
        self._calls: dict[str, _Call] = {}  # by trace id: the call not sent yet
        self._sent: OrderedDict[str, int] = OrderedDict()  # trace id: how many calls sent
        self._sent_attempts: OrderedDict[str, None] = OrderedDict()  # their attempts' call ids
        # Attempts started and not reported yet: call id -> (trace id, time.monotonic()).
        self._under_way: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Each model group's tier, as its attempts were given (deployment, map or name).
        self._group_tiers: dict[str, str] = dict(self.tiers)
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        atexit.register(self.send_pending)  # runs before the ledger's own flush at exit
        _loggers.add(self)

    def reset_after_fork(self) -> None:
        """In a forked child: the calls under way are the parent's, which sends them (sent by
        the child too, half finished, they would win over the parent's whole copy); the lock
        may have been held by a thread that does not exist here, and so is the sweeper."""
        self._lock = threading.Lock()
        self._calls.clear()
        self._under_way.clear()
        self._sweeper = None

    # --- LiteLLM's callbacks ------------------------------------------------------------

    def log_pre_api_call(self, model, messages, kwargs):
        # An attempt starts: a call that failed so far is not given up while it is under way.
        try:
            call_id, trace_id = _ids(kwargs)
        except Exception:  # a malformed callback must not break the app
            logger.exception("RouteLedger could not read a LiteLLM callback")
            return
        with self._lock:
            self._under_way[call_id] = (trace_id, time.monotonic())
            while len(self._under_way) > _REMEMBERED_CALLS:
                self._under_way.popitem(last=False)

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, start_time, end_time, ok=True)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, start_time, end_time, ok=False)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, start_time, end_time, ok=True)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, start_time, end_time, ok=False)

    # --- delivery -------------------------------------------------------------------------

    def send_pending(self) -> int:
        """Sends the calls that have only failed so far, as failed requests, also those with
        an attempt under way or a retry due (at exit: they will never be reported); how
        many."""
        with self._lock:
            trace_ids = list(self._calls)
        return sum(self._finish(trace_id) for trace_id in trace_ids)

    def send_failed(self) -> int:
        """Sends the calls that have only failed so far and have no attempt under way nor a
        retry due, as failed requests; how many. A call whose fallback is still running is
        left to finish: sent now, it would become two requests."""
        trace_ids = self._given_up(time.monotonic())
        return sum(self._finish(trace_id) for trace_id in trace_ids)

    def flush(self, timeout: float = 10.0) -> bool:
        """send_failed(), then wait until the ledger has delivered everything. In an event
        loop, await aflush() instead. (At exit every call is sent, send_pending().)"""
        self.send_failed()
        return self.ledger.flush(timeout)

    async def aflush(self, timeout: float = 10.0) -> bool:
        """flush() from within the event loop of the calls, after LiteLLM has run the callbacks
        it still holds: it runs async callbacks as tasks of that loop, and the end of the loop
        (say, of `asyncio.run(main())`) cancels those not run yet, which then reach no logger."""
        await _litellm_callbacks_done(timeout)
        self.send_failed()
        return await asyncio.to_thread(self.ledger.flush, timeout)

    def _record(self, kwargs: dict, start_time: Any, end_time: Any, *, ok: bool) -> None:
        # Nothing here may raise into LiteLLM: problems are logged.
        try:
            trace_id, call_id, attempt, ended, context = self._read(
                kwargs, start_time, end_time, ok=ok
            )
            retry_due = not ok and _retries_left(kwargs)
            pause = 0.0 if ok else _retry_after(kwargs)
        except Exception:  # a malformed callback must not break the app
            logger.exception("RouteLedger could not read a LiteLLM callback")
            return
        with self._lock:
            self._under_way.pop(call_id, None)
            if call_id in self._sent_attempts:
                return  # the same attempt reported by a sync and an async callback, sent
            call = self._calls.get(trace_id)
            if call is None:
                # A trace id already sent (one an app gave several calls, or an attempt that
                # came after its call was sent as failed) starts a request of its own: one
                # more request rather than a lost call.
                sent = self._sent.get(trace_id, 0)
                key = f"{trace_id}:{sent}" if sent else trace_id
                call = self._calls[trace_id] = _Call(key, context)
            if any(seen == call_id for _, seen, _ in call.attempts):
                return  # the same attempt reported by a sync and an async callback
            call.attempts.append((ended, call_id, attempt))
            call.last_seen = time.monotonic()
            call.retry_due = retry_due
            call.pause = pause
            if not ok and self._sweeper is None:
                self._sweeper = threading.Thread(
                    target=self._sweep, name="routeledger-litellm", daemon=True
                )
                self._sweeper.start()
        if ok:
            self._finish(trace_id)

    def _sweep(self) -> None:
        """Sends the calls that only failed and heard nothing more for the settle time: one
        thread for all of them, waking a few times per settle time."""
        while True:
            time.sleep(min(1.0, self.failed_call_settle_seconds / 4))
            now = time.monotonic()
            cutoff = now - self.failed_call_settle_seconds
            for trace_id in self._given_up(now, settled_before=cutoff):
                self._finish(trace_id, settled_before=cutoff)

    def _given_up(self, now: float, *, settled_before: float | None = None) -> list[str]:
        """The calls that only failed and have no attempt under way nor a retry due (one due
        for longer than attempt_timeout_seconds is not), and, given `settled_before`, quiet
        since then."""
        gave_up = now - self.attempt_timeout_seconds
        with self._lock:
            busy = self._traces_under_way(now)
            return [
                trace_id
                for trace_id, call in self._calls.items()
                if trace_id not in busy
                and not (call.retry_due and call.last_seen > gave_up)
                and (settled_before is None or call.quiet_since() <= settled_before)
            ]

    def _traces_under_way(self, now: float) -> set[str]:
        """The traces with an attempt started and not reported, forgetting those older than
        attempt_timeout_seconds (a call the app cancelled reports nothing)."""
        oldest = now - self.attempt_timeout_seconds
        while self._under_way and next(iter(self._under_way.values()))[1] <= oldest:
            self._under_way.popitem(last=False)
        return {trace_id for trace_id, _ in self._under_way.values()}

    def _finish(self, trace_id: str, settled_before: float | None = None) -> bool:
        with self._lock:
            call = self._calls.get(trace_id)
            if call is None or (settled_before is not None and call.quiet_since() > settled_before):
                return False  # sent already, or more attempts arrived since
            del self._calls[trace_id]
            self._sent[trace_id] = self._sent.pop(trace_id, 0) + 1
            self._sent_attempts.update((call_id, None) for _, call_id, _ in call.attempts)
            for remembered in (self._sent, self._sent_attempts):
                while len(remembered) > _REMEMBERED_CALLS:
                    remembered.popitem(last=False)
        attempts = [a for _, _, a in sorted(call.attempts, key=lambda item: item[0])]
        started = min(a.pop("started") for a in attempts)
        context = call.context
        request = self.ledger.request(
            customer_id=context["customer_id"],
            feature=context["feature"],
            intended_tier=context["intended_tier"],
            user_tier=context["user_tier"],
            task_type=context["task_type"],
            request_id=str(uuid.uuid5(REQUEST_ID_NAMESPACE, call.request_key)),
            timestamp=started,
            metadata={"litellm_trace_id": trace_id},
        )
        for attempt in attempts:
            request.attempt(**attempt)
        request.send()
        return True

    def _read(self, kwargs: dict, start_time: Any, end_time: Any, *, ok: bool):
        """(trace id, call id, the attempt's arguments, when it ended, the request's context)."""
        slo = kwargs.get("standard_logging_object") or {}
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or {}
        model_info = params.get("model_info") or metadata.get("model_info") or {}
        call_id, trace_id = _ids(kwargs)
        group = metadata.get("model_group") or slo.get("model_group")
        started = _epoch(slo.get("startTime"), start_time)
        ended = _epoch(slo.get("endTime"), end_time)

        usage = (slo.get("metadata") or {}).get("usage_object") or {}
        prompt = int(slo.get("prompt_tokens") or usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cache_read = int(details.get("cached_tokens") or usage.get("cache_read_input_tokens") or 0)
        cache_write = int(usage.get("cache_creation_input_tokens") or 0)
        if cache_read + cache_write > prompt:  # a provider that counts them apart
            cache_read = cache_write = 0
        if ok:
            status, reason = "ok", None
        else:
            error = slo.get("error_information") or {}
            reason = error.get("normalized_error") or error.get("error_class") or "error"
            named = f"{reason} {error.get('error_class') or ''}".lower()
            status = "timeout" if "timeout" in named or reason.startswith("408") else "error"
        cost = slo.get("response_cost")
        attempt = {
            "model": str(kwargs.get("model") or slo.get("model") or "unknown"),
            "tier": str(
                model_info.get(self.tier_key) or self.tiers.get(group) or group or "unknown"
            ),
            "input_tokens": prompt - cache_read - cache_write,
            "output_tokens": int(slo.get("completion_tokens") or 0),
            "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write,
            "latency_ms": max(0.0, (ended - started) * 1000),
            "status": status,
            "reason": reason[:MAX_REASON] if reason else None,
            "provider": slo.get("custom_llm_provider") or params.get("custom_llm_provider"),
            "cost_usd": _cost(cost, ok=ok, tokens=prompt + int(slo.get("completion_tokens") or 0)),
            "started": datetime.fromtimestamp(started, timezone.utc),
        }
        if group:
            self._group_tiers[group] = attempt["tier"]
        # The group the app asked for is the router's intent: a call that goes straight to
        # its fallback (the group cooled down after failures) has no attempt of it.
        asked = metadata.get("original_model_group") or group
        context = {
            "customer_id": str(metadata.get("customer_id") or kwargs.get("user") or UNATTRIBUTED),
            "feature": str(metadata.get("feature") or self.default_feature),
            "intended_tier": metadata.get("intended_tier") or self._group_tiers.get(asked),
            "user_tier": metadata.get("user_tier"),
            "task_type": metadata.get("task_type"),
        }
        return trace_id, call_id, attempt, ended, context


# Every logger, for its reset in a forked child (weakly: an app may let one go).
_loggers: weakref.WeakSet[RouteLedgerLogger] = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for each in list(_loggers):
        each.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)


def _ids(kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """(call id, trace id) of an attempt. The trace id is the Router call's own
    `litellm_trace_id`, not the standard logging object's `trace_id`, which LiteLLM takes from
    a session id or the metadata's `trace_id` when there is one: those name a conversation,
    whose every call would have been taken for one."""
    slo = kwargs.get("standard_logging_object") or {}
    call_id = str(kwargs.get("litellm_call_id") or slo.get("id") or uuid.uuid4())
    return call_id, str(kwargs.get("litellm_trace_id") or slo.get("trace_id") or call_id)


def _retries_left(kwargs: Mapping[str, Any]) -> bool:
    """Whether the Router will retry the model group of this failed attempt: its metadata
    counts the retries made and allowed, and the Router retries no client error but a
    timeout (408), a conflict (409) or a rate limit (429)."""
    metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
    made, allowed = metadata.get("attempted_retries"), metadata.get("max_retries")
    if not (isinstance(made, int) and isinstance(allowed, int) and made < allowed):
        return False
    error = (kwargs.get("standard_logging_object") or {}).get("error_information") or {}
    code = str(error.get("error_code") or "")
    return not (code.startswith("4") and code not in ("408", "409", "429"))


def _retry_after(kwargs: Mapping[str, Any]) -> float:
    """The seconds a failed attempt's answer asked to wait (Retry-After, or OpenAI's
    retry-after-ms), as far as the Router honours it; 0 without one."""
    slo = kwargs.get("standard_logging_object") or {}
    headers = (slo.get("hidden_params") or {}).get("additional_headers") or {}
    try:
        if headers.get("retry-after-ms") is not None:
            seconds = float(headers["retry-after-ms"]) / 1000
        else:
            seconds = float(headers.get("retry-after") or 0)
    except (TypeError, ValueError):  # an HTTP date, or nonsense: not waited for
        return 0.0
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0


async def _litellm_callbacks_done(timeout: float) -> None:
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    except ImportError:  # a LiteLLM without the worker runs its callbacks itself
        return
    try:
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout)
    except Exception:  # flushing must not break the app: what is left is logged
        logger.warning("RouteLedger: LiteLLM's callbacks did not all run", exc_info=True)


def _cost(litellm_cost: Any, *, ok: bool, tokens: int) -> Decimal | None:
    """LiteLLM's cost when it priced the call above 0; 0 for a failed call that used no
    tokens; otherwise none, and RouteLedger prices it (LiteLLM prices a model it does not
    know at 0, silently)."""
    if ok and litellm_cost:
        return Decimal(f"{litellm_cost:.{_FLOAT_DIGITS}g}").normalize()
    if not ok and tokens == 0:
        return Decimal(0)
    return None


def _epoch(seconds: Any, moment: Any) -> float:
    """LiteLLM's epoch seconds, else the callback's datetime (naive ones are local time)."""
    if isinstance(seconds, (int, float)):
        return float(seconds)
    if isinstance(moment, datetime):
        return moment.timestamp()
    return time.time()
