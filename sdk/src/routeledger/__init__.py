"""RouteLedger SDK: record routed LLM requests without slowing the app, and route them.

from routeledger import RouteLedger

ledger = RouteLedger()  # ROUTELEDGER_API_KEY, ROUTELEDGER_ENDPOINT
with ledger.request(customer_id="acme", feature="support-chat") as req:
    req.attempt("gpt-4o-mini", "cheap", 500, 200, latency_ms=812.0)
"""

from routeledger._version import __version__
from routeledger.client import Request, RouteLedger, TimedAttempt, new_request_id
from routeledger.routing import (
    Cascade,
    CascadeTier,
    EscalationCapReached,
    RouteDecision,
    Router,
    Rule,
    RuleRouter,
    estimate_tokens,
)
from routeledger.usage import Usage, read_usage

__all__ = [
    "Cascade",
    "CascadeTier",
    "EscalationCapReached",
    "Request",
    "RouteDecision",
    "RouteLedger",
    "Router",
    "Rule",
    "RuleRouter",
    "TimedAttempt",
    "Usage",
    "__version__",
    "estimate_tokens",
    "new_request_id",
    "read_usage",
]
