"""LiteLLM: one RouteLedger event per Router call, with every retry and fallback as an attempt.

    import litellm
    from routeledger.integrations.litellm import RouteLedgerLogger

    litellm.callbacks = [RouteLedgerLogger()]  # ROUTELEDGER_API_KEY, ROUTELEDGER_ENDPOINT
    await router.acompletion(model="cheap", messages=messages,
                             metadata={"customer_id": "acme", "feature": "support-chat"})

LiteLLM reports each model call of a Router call on its own, all sharing the standard logging
object's `trace_id`. This logger gathers them: a success ends the call and sends it; a call
that only failed is sent once nothing more arrived for it for `failed_call_settle_seconds`
(LiteLLM has no "gave up" callback), or on flush() and at exit.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
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

# request_id = UUIDv5(this namespace, LiteLLM's trace id): a call sent twice is stored once.
REQUEST_ID_NAMESPACE = uuid.UUID("0e5b8f1c-4d7a-5b3e-9c2f-1a6d8e4b7c30")
UNATTRIBUTED = "(unattributed)"
MAX_REASON = 200
_REMEMBERED_CALLS = 10_000


@dataclass
class _Call:
    """The attempts of one Router call seen so far."""

    context: dict[str, Any]
    attempts: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    last_seen: float = 0.0  # time.monotonic() of its latest attempt


class RouteLedgerLogger(CustomLogger):
    """A LiteLLM CustomLogger that records each Router call as one routed request.

    The call's `metadata` names the request: `customer_id` (else LiteLLM's `user`, else
    "(unattributed)"), `feature` (else `default_feature`), and optionally `intended_tier`,
    `user_tier` and `task_type`. An attempt's tier is its deployment's
    `model_info[tier_key]`, else `tiers[model group]`, else the model group's name. A cost
    is taken from LiteLLM only when LiteLLM priced the call above 0; otherwise RouteLedger
    prices it (a model LiteLLM does not know costs 0 there, silently). A failed call that
    used no tokens costs 0."""

    def __init__(
        self,
        ledger: RouteLedger | None = None,
        *,
        tier_key: str = "routeledger_tier",
        tiers: Mapping[str, str] | None = None,
        default_feature: str = "litellm",
        failed_call_settle_seconds: float = 30.0,
    ) -> None:
        super().__init__()
        self.ledger = ledger if ledger is not None else RouteLedger()
        self.tier_key = tier_key
        self.tiers = dict(tiers or {})
        self.default_feature = default_feature
        self.failed_call_settle_seconds = failed_call_settle_seconds
        self._calls: dict[str, _Call] = {}
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        atexit.register(self.send_pending)  # runs before the ledger's own flush at exit

    # --- LiteLLM's callbacks ------------------------------------------------------------

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
        """Sends the calls that have only failed so far, as failed requests; how many."""
        with self._lock:
            trace_ids = list(self._calls)
        return sum(self._finish(trace_id) for trace_id in trace_ids)

    def flush(self, timeout: float = 10.0) -> bool:
        """send_pending(), then wait until the ledger has delivered everything."""
        self.send_pending()
        return self.ledger.flush(timeout)

    def _record(self, kwargs: dict, start_time: Any, end_time: Any, *, ok: bool) -> None:
        # Nothing here may raise into LiteLLM: problems are logged.
        try:
            trace_id, call_id, attempt, ended, context = self._read(
                kwargs, start_time, end_time, ok=ok
            )
        except Exception:  # a malformed callback must not break the app
            logger.exception("RouteLedger could not read a LiteLLM callback")
            return
        with self._lock:
            if trace_id in self._sent:
                return  # a late copy of a call already sent
            call = self._calls.setdefault(trace_id, _Call(context))
            if any(seen == call_id for _, seen, _ in call.attempts):
                return  # the same attempt reported by a sync and an async callback
            call.attempts.append((ended, call_id, attempt))
            call.last_seen = time.monotonic()
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
            cutoff = time.monotonic() - self.failed_call_settle_seconds
            with self._lock:
                settled = [t for t, call in self._calls.items() if call.last_seen <= cutoff]
            for trace_id in settled:
                self._finish(trace_id, settled_before=cutoff)

    def _finish(self, trace_id: str, settled_before: float | None = None) -> bool:
        with self._lock:
            call = self._calls.get(trace_id)
            if call is None or (settled_before is not None and call.last_seen > settled_before):
                return False  # sent already, or more attempts arrived since
            del self._calls[trace_id]
            self._sent[trace_id] = None
            while len(self._sent) > _REMEMBERED_CALLS:
                self._sent.popitem(last=False)
        attempts = [a for _, _, a in sorted(call.attempts, key=lambda item: item[0])]
        started = min(a.pop("started") for a in attempts)
        context = call.context
        request = self.ledger.request(
            customer_id=context["customer_id"],
            feature=context["feature"],
            intended_tier=context["intended_tier"],
            user_tier=context["user_tier"],
            task_type=context["task_type"],
            request_id=str(uuid.uuid5(REQUEST_ID_NAMESPACE, trace_id)),
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
        call_id = str(kwargs.get("litellm_call_id") or slo.get("id") or uuid.uuid4())
        trace_id = str(slo.get("trace_id") or kwargs.get("litellm_trace_id") or call_id)
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
        context = {
            "customer_id": str(metadata.get("customer_id") or kwargs.get("user") or UNATTRIBUTED),
            "feature": str(metadata.get("feature") or self.default_feature),
            "intended_tier": metadata.get("intended_tier"),
            "user_tier": metadata.get("user_tier"),
            "task_type": metadata.get("task_type"),
        }
        return trace_id, call_id, attempt, ended, context


def _cost(litellm_cost: Any, *, ok: bool, tokens: int) -> Decimal | None:
    """LiteLLM's cost when it priced the call above 0; 0 for a failed call that used no
    tokens; otherwise none, and RouteLedger prices it (LiteLLM prices a model it does not
    know at 0, silently)."""
    if ok and litellm_cost:
        return Decimal(str(litellm_cost))
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
