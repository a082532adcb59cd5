"""Provider-agnostic routing primitives: rule routing, a cascade with an escalation cap, and
the Router protocol that a custom classifier or embedding router implements.

The app passes its own call functions, so no provider package is imported here.
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from re import Pattern
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Protocol,
    runtime_checkable,
)

if TYPE_CHECKING:
    from routeledger.client import Request


@dataclass
class RouteDecision:
    """A router's choice. Request.route() fills in latency_ms (measured), strategy and
    version (from the router's attributes) when the router leaves them out."""

    tier: str
    confidence: float | None = None
    strategy: str | None = None
    version: str | None = None
    latency_ms: float | None = None
    rule: str | None = None  # the RuleRouter rule that matched; not sent

    def as_event(self) -> dict[str, Any]:
        """The event's router object."""
        fields = {
            "strategy": self.strategy,
            "version": self.version,
            "confidence": self.confidence,
            "latency_ms": self.latency_ms,
        }
        return {name: value for name, value in fields.items() if value is not None}


@runtime_checkable
class Router(Protocol):
    """Anything that picks a tier for a text. Optional attributes `strategy` and `version`
    name it in the events; `context` holds feature, user_tier and task_type."""

    def route(self, text: str, **context: Any) -> RouteDecision: ...


def estimate_tokens(text: str) -> int:
    """About four characters a token, the usual rule of thumb for English."""
    return (len(text) + 3) // 4


class Rule:
    """Routes to `tier` when every condition given holds; a rule without conditions always
    matches. features and user_tiers: the request's must be one of them; min_tokens and
    max_tokens bound the estimated input tokens (inclusive); keywords: any of them as a
    whole word, case-insensitive; pattern: a regular expression found in the text."""

    def __init__(
        self,
        tier: str,
        *,
        name: str | None = None,
        features: str | Iterable[str] = (),
        user_tiers: str | Iterable[str] = (),
        min_tokens: int | None = None,
        max_tokens: int | None = None,
        keywords: str | Iterable[str] = (),
        pattern: str | Pattern[str] | None = None,
    ) -> None:
        self.tier = tier
        self.name = name
        self.features = frozenset(_strings(features))
        self.user_tiers = frozenset(_strings(user_tiers))
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        words = "|".join(re.escape(word) for word in _strings(keywords))
        # Lookarounds rather than \b, so that keywords such as "c++" match as whole words too.
        self._keywords = re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE) if words else None
        self._pattern = re.compile(pattern) if isinstance(pattern, str) else pattern

    def matches(self, text: str, feature: str | None, user_tier: str | None, tokens: int) -> bool:
        return (
            (not self.features or feature in self.features)
            and (not self.user_tiers or user_tier in self.user_tiers)
            and (self.min_tokens is None or tokens >= self.min_tokens)
            and (self.max_tokens is None or tokens <= self.max_tokens)
            and (self._keywords is None or self._keywords.search(text) is not None)
            and (self._pattern is None or self._pattern.search(text) is not None)
        )


class RuleRouter:
    """Ordered rules: the first that matches picks the tier, else the default tier."""

    strategy = "rules"

    def __init__(self, rules: Iterable[Rule], default: str, *, version: str | None = None) -> None:
        self.rules = list(rules)
        self.default = default
        self.version = version

    def route(
        self,
        text: str = "",
        *,
        feature: str | None = None,
        user_tier: str | None = None,
        estimated_tokens: int | None = None,
        **context: Any,
    ) -> RouteDecision:
        """estimated_tokens defaults to estimate_tokens(text); other context is ignored."""
        tokens = estimate_tokens(text) if estimated_tokens is None else estimated_tokens
        for rule in self.rules:
            if rule.matches(text, feature, user_tier, tokens):
                return RouteDecision(
                    rule.tier, strategy=self.strategy, version=self.version, rule=rule.name
                )
        return RouteDecision(self.default, strategy=self.strategy, version=self.version)


@dataclass
class CascadeTier:
    """One step of a cascade: `call(*args, **kwargs)` returns the provider's response.
    With a timeout (seconds), a slower call is recorded as a timeout and the cascade moves
    on; the call finishes in the background and its answer is dropped."""

    tier: str
    model: str
    call: Callable[..., Any]
    provider: str | None = None
    timeout: float | None = None


class EscalationCapReached(Exception):
    """A cascade with on_cap="raise" would have escalated past its cap. `result` is the
    cheaper answer that failed the check, recorded as rejected."""

    def __init__(self, tier: str, result: Any) -> None:
        super().__init__(f"escalation cap reached: the {tier} answer failed the check")
        self.tier = tier
        self.result = result


class Cascade:
    """Tiers in order, cheapest first: each answer that fails `accept(result)`, errs or
    times out moves the request to the next tier, and every attempt is recorded with its
    status and reason. The last tier's answer is served as it is.

    With max_escalation_share, at most that share of the last `window` requests escalate
    after a rejected answer; past it the cascade keeps the cheaper answer (on_cap="keep",
    recorded as ok with reason "escalation_cap") or raises EscalationCapReached
    (on_cap="raise"). Errors and timeouts always fail over: there is no answer to keep.
    """

    def __init__(
        self,
        tiers: Iterable[CascadeTier],
        accept: Callable[[Any], bool],
        *,
        reject_reason: str = "quality_check",
        max_escalation_share: float | None = None,
        window: int = 100,
        on_cap: str = "keep",
    ) -> None:
        self.tiers = list(tiers)
        if not self.tiers:
            raise ValueError("a cascade needs at least one tier")
        if window < 1:
            raise ValueError("the escalation window holds at least one request")
        if on_cap not in ("keep", "raise"):
            raise ValueError(f'on_cap must be "keep" or "raise", not {on_cap!r}')
        self._accept = accept
        self._reject_reason = reject_reason
        self._on_cap = on_cap
        self._window = (
            _EscalationWindow(max_escalation_share, window)
            if max_escalation_share is not None
            else None
        )

    def run(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        """Serve one request: calls each tier with the same arguments, starting at the
        request's intended tier when it is one of the cascade's (a router chose it), else
        at the first. Returns the served answer; when every tier fails, re-raises the last
        error."""
        start = self._start(request)
        last = len(self.tiers) - 1
        last_error: Exception | None = None
        for index in range(start, last + 1):
            tier = self.tiers[index]
            try:
                with request.timed(tier.model, tier.tier, provider=tier.provider) as attempt:
                    result = _call(tier, args, kwargs)
                    attempt.set_response(result)
                    outcome = (
                        "serve" if index == last or self._accept(result) else self._on_rejection()
                    )
                    if outcome in ("escalate", "raise"):
                        attempt.reject(self._reject_reason)
                    elif outcome == "keep":
                        attempt.reason = "escalation_cap"
            except Exception as error:
                last_error = error
                continue
            if outcome == "escalate":
                continue
            self._record(escalated=outcome == "serve" and index > start)
            if outcome == "raise":
                raise EscalationCapReached(tier.tier, result)
            return result
        self._record(escalated=False)
        assert last_error is not None  # the last tier serves whatever answer it gets
        raise last_error

    def _start(self, request: Request) -> int:
        names = [tier.tier for tier in self.tiers]
        if request.intended_tier in names:
            return names.index(request.intended_tier)
        if request.intended_tier is None:
            request.intended_tier = names[0]
        return 0

    def _on_rejection(self) -> str:
        if self._window is None or self._window.allows_escalation():
            return "escalate"
        return self._on_cap

    def _record(self, escalated: bool) -> None:
        if self._window is not None:
            self._window.record(escalated)


class _EscalationWindow:
    """The last `size` requests of a cascade, of which at most share × size may escalate.
    Counting against the window's size, not the requests seen so far, lets the first
    requests after a start escalate as freely as later ones."""

    def __init__(self, share: float, size: int) -> None:
        self._budget = int(share * size)
        self._recent: deque[bool] = deque(maxlen=size)
        self._escalated = 0
        self._lock = threading.Lock()

    def allows_escalation(self) -> bool:
        """Whether this request may escalate: with it, the last `size` requests stay in budget."""
        with self._lock:
            leaving = self._recent[0] if len(self._recent) == self._recent.maxlen else False
            return self._escalated - leaving < self._budget

    def record(self, escalated: bool) -> None:
        with self._lock:
            if len(self._recent) == self._recent.maxlen:
                self._escalated -= self._recent[0]
            self._recent.append(escalated)
            self._escalated += escalated


def _call(tier: CascadeTier, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if tier.timeout is None:
        return tier.call(*args, **kwargs)
    outcome: dict[str, Any] = {}
    context = (
        contextvars.copy_context()
    )  # the call sees the caller's context variables (tracing, for one)

    def run() -> None:
        try:
            outcome["result"] = context.run(tier.call, *args, **kwargs)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, name="routeledger-cascade-call", daemon=True)
    thread.start()
    thread.join(tier.timeout)
    if thread.is_alive():
        raise TimeoutError(f"{tier.model} gave no answer within {tier.timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _strings(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
