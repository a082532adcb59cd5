"""The facts of one request and the rates over many, defined once (DESIGN.md, vocabulary).

Ingest stores each request's facts (served attempt, fallback, escalation, failover, failed,
cost, baseline cost) from here; re-pricing recomputes costs with the same functions; the
replay simulates requests with them; the rollups and every reader count the stored facts
(app.rollup_figures) and turn counts into rates with `rate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Generic, NamedTuple, Protocol, TypeVar

from app.services.pricing import MONEY_CONTEXT, PriceBook, TokenUsage
from app.vocabulary import FAILOVER_STATUSES, SERVED_STATUS


class AttemptOutcome(TokenUsage, Protocol):
    """What the facts read of an attempt: an ingested one, a stored one or a simulated one."""

    tier: str
    status: str


A = TypeVar("A", bound=AttemptOutcome)


def served_attempt(attempts: Sequence[A]) -> A | None:
    """The last attempt whose status is ok; None when the request failed."""
    for attempt in reversed(attempts):  # a loop: a generator costs ingest twice as much
        if attempt.status == SERVED_STATUS:
            return attempt
    return None


class RequestFacts(NamedTuple, Generic[A]):
    # A named tuple, not a dataclass: ingest makes one per request, and it is twice as fast.
    intended_tier: str
    served: A | None
    attempt_count: int
    is_fallback: bool
    is_escalation: bool
    is_failover: bool

    @property
    def is_failed(self) -> bool:
        return self.served is None


def request_facts(
    attempts: Sequence[A], *, intended_tier: str | None, tier_ranks: Mapping[str, int]
) -> RequestFacts[A]:
    """The facts of a request from its attempts in call order. The intended tier defaults
    to the first attempt's; a fallback has two or more attempts; an escalation is served by
    a tier that ranks above the intended one; a failover has an attempt that errored or
    timed out."""
    intended = intended_tier or attempts[0].tier
    served = served_attempt(attempts)
    is_failover = False
    for attempt in attempts:  # a loop: a generator costs ingest twice as much
        if attempt.status in FAILOVER_STATUSES:
            is_failover = True
            break
    return RequestFacts(  # positionally: by keyword it costs nearly twice as much
        intended,
        served,
        len(attempts),
        len(attempts) >= 2,
        served is not None and tier_ranks[served.tier] > tier_ranks[intended],
        is_failover,
    )


# --- cost ------------------------------------------------------------------------------------


class AttemptCost(NamedTuple):
    """An attempt's cost (None: unpriced), where it came from ('client': sent on the event;
    'price': priced here, price_id says with which row), and that row."""

    cost_usd: Decimal | None
    source: str | None
    price_id: int | None


class ModelCall(TokenUsage, Protocol):
    model: str
    provider: str | None


def attempt_cost(
    call: ModelCall, *, client_cost: Decimal | None, prices: PriceBook, at: datetime
) -> AttemptCost:
    """The cost the client sent, else the call's tokens at its model's price in force at
    `at`; unpriced (None) when the model has no price."""
    if client_cost is not None:
        return AttemptCost(client_cost, "client", None)
    cost, price_id = prices.cost_at(call.model, call.provider, at, call)
    return AttemptCost(cost, None if price_id is None else "price", price_id)


class RequestCost(NamedTuple):
    """The sum of a request's known attempt costs, and how many attempts are unpriced (the
    sum is then a lower bound)."""

    known_usd: Decimal
    unpriced_attempts: int

    @property
    def is_unpriced(self) -> bool:
        return self.unpriced_attempts > 0


def request_cost(attempt_costs: Iterable[Decimal | None]) -> RequestCost:
    known, unpriced = Decimal(0), 0
    for cost in attempt_costs:
        if cost is None:
            unpriced += 1
        else:
            known = MONEY_CONTEXT.add(known, cost)
    return RequestCost(known, unpriced)


@dataclass(frozen=True)
class BaselineModel:
    """The project's frontier model, savings are measured against."""

    model: str
    provider: str | None


def baseline_cost(
    served: TokenUsage | None, *, baseline: BaselineModel | None, prices: PriceBook, at: datetime
) -> tuple[Decimal | None, int | None]:
    """The served attempt's tokens at the baseline model's price in force at `at`, and that
    price's id; 0 for a failed request; None (unknown) without a baseline model or price."""
    if served is None:
        return Decimal(0), None
    if baseline is None:
        return None, None
    return prices.cost_at(baseline.model, baseline.provider, at, served)


# --- rates -------------------------------------------------------------------------------------

# Each rate is the share of requests counted by a rollup figure.
RATE_COUNTS = {
    "fallback_rate": "fallbacks",
    "escalation_rate": "escalations",
    "failover_rate": "failovers",
}


def rate(count: float | Decimal, requests: float | Decimal) -> float | None:
    """count / requests; None over no requests."""
    return float(count) / float(requests) if requests else None
