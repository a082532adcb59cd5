"""RuleRouter, the Router protocol and Cascade, with OpenAI- and Anthropic-shaped answers.
No server: the recorded attempts are read from the request."""

import re
import threading
import time

import pytest
from routeledger import (
    Cascade,
    CascadeTier,
    EscalationCapReached,
    RouteDecision,
    RouteLedger,
    Router,
    Rule,
    RuleRouter,
)


@pytest.fixture
def ledger(tmp_path):
    client = RouteLedger(api_key="k", endpoint="http://127.0.0.1:9", spool_dir=tmp_path)
    yield client
    client.shutdown(timeout=0)


def openai_answer(text, model="gpt-4o-mini"):
    return {
        "model": model,
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def anthropic_answer(text, model="claude-sonnet-4"):
    return {
        "model": model,
        "type": "message",
        "content": [{"type": "text", "text": text}],
        "usage": {"input_tokens": 90, "output_tokens": 40, "cache_read_input_tokens": 10},
    }


def answer_text(result):
    if "choices" in result:
        return result["choices"][0]["message"]["content"]
    return result["content"][0]["text"]


ROUTER = RuleRouter(
    [
        Rule("premium", name="legal", features="legal"),
        Rule("premium", name="enterprise-long", user_tiers=["enterprise"], min_tokens=1000),
        Rule("standard", name="keywords", keywords=["refund", "c++"]),
        Rule("standard", name="invoice-number", pattern=r"INV-\d{6}"),
        Rule("cheap", name="short", max_tokens=10),
    ],
    default="standard",
    version="v3",
)


@pytest.mark.parametrize(
    "text, context, tier, rule",
    [
        ("anything", {"feature": "legal"}, "premium", "legal"),
        ("x" * 4000, {"feature": "chat", "user_tier": "enterprise"}, "premium", "enterprise-long"),
        ("x" * 4000, {"feature": "chat", "user_tier": "free"}, "standard", None),
        ("I want a REFUND now", {}, "standard", "keywords"),
        ("my C++ build fails", {}, "standard", "keywords"),
        ("refunded", {}, "cheap", "short"),  # a keyword matches whole words only
        ("about INV-123456 please", {}, "standard", "invoice-number"),
        ("hi", {}, "cheap", "short"),
        ("hi", {"estimated_tokens": 50}, "standard", None),
    ],
)
def test_rule_router_first_match_wins(text, context, tier, rule):
    decision = ROUTER.route(text, **context)
    assert (decision.tier, decision.rule, decision.strategy, decision.version) == (
        tier,
        rule,
        "rules",
        "v3",
    )


def test_compiled_pattern_and_rule_without_conditions():
    router = RuleRouter(
        [Rule("premium", pattern=re.compile("urgent", re.I)), Rule("cheap")], default="standard"
    )
    assert router.route("URGENT: help").tier == "premium"
    assert router.route("hello").tier == "cheap"


def test_request_route_records_rule_decision(ledger):
    with ledger.request(customer_id="acme", feature="legal", user_tier="free") as req:
        decision = req.route(ROUTER, "review this contract")
        req.attempt("gpt-4o", decision.tier, 10, 5)
    assert req.intended_tier == "premium"
    assert req._event["router"]["strategy"] == "rules"
    assert req._event["router"]["version"] == "v3"
    assert req._event["router"]["latency_ms"] >= 0


class SlowClassifier:
    """A custom classifier: the Router protocol is just a route() method."""

    strategy = "classifier"
    version = "bert-7"

    def route(self, text, **context):
        time.sleep(0.02)
        return RouteDecision("premium" if "proof" in text else "cheap", confidence=0.83)


def test_custom_router_confidence_and_latency(ledger):
    assert isinstance(SlowClassifier(), Router)
    with ledger.request(customer_id="acme", feature="math") as req:
        decision = req.route(SlowClassifier(), "a proof of the lemma")
        req.attempt("claude-sonnet-4", decision.tier, 10, 5)
    router = req._event["router"]
    assert (req.intended_tier, router["strategy"], router["version"], router["confidence"]) == (
        "premium",
        "classifier",
        "bert-7",
        0.83,
    )
    assert router["latency_ms"] >= 20


def test_decision_passed_to_request(ledger):
    decision = RouteDecision("cheap", confidence=0.6, strategy="embedding", latency_ms=1.5)
    request = ledger.request(customer_id="acme", feature="chat", router=decision)
    assert request.intended_tier == "cheap"
    assert request._event["router"] == {
        "strategy": "embedding",
        "confidence": 0.6,
        "latency_ms": 1.5,
    }


def cascade_of(cheap, standard, premium=None, **options):
    tiers = [
        CascadeTier("cheap", "gpt-4o-mini", cheap, provider="openai"),
        CascadeTier("standard", "claude-sonnet-4", standard, provider="anthropic"),
    ]
    if premium is not None:
        tiers.append(CascadeTier("premium", "claude-opus-4", premium, provider="anthropic"))
    return Cascade(tiers, accept=lambda result: "unsure" not in answer_text(result), **options)


def statuses(request):
    return [(a["tier"], a["status"], a["reason"]) for a in request.attempts]


def test_cascade_accepts_the_cheap_answer(ledger):
    cascade = cascade_of(lambda q: openai_answer("42"), lambda q: anthropic_answer("42"))
    with ledger.request(customer_id="acme", feature="qa") as req:
        assert answer_text(cascade.run(req, "6 x 7?")) == "42"
    assert statuses(req) == [("cheap", "ok", None)]
    assert req.intended_tier == "cheap"
    assert req.attempts[0]["input_tokens"] == 100 and req.attempts[0]["latency_ms"] >= 0


def test_cascade_escalates_on_rejection_error_and_timeout(ledger):
    def failing(question):
        raise ConnectionError("provider down")

    def hanging(question):
        time.sleep(1)
        return anthropic_answer("late")

    cascade = Cascade(
        [
            CascadeTier(
                "cheap", "gpt-4o-mini", lambda q: openai_answer("unsure"), provider="openai"
            ),
            CascadeTier("cheap", "llama-3-8b", failing),
            CascadeTier("standard", "claude-sonnet-4", hanging, timeout=0.1),
            CascadeTier(
                "premium", "claude-opus-4", lambda q: anthropic_answer("sure", "claude-opus-4")
            ),
        ],
        accept=lambda result: "unsure" not in answer_text(result),
    )
    with ledger.request(customer_id="acme", feature="qa") as req:
        result = cascade.run(req, "hard question")
    assert answer_text(result) == "sure"
    assert statuses(req) == [
        ("cheap", "rejected", "quality_check"),
        ("cheap", "error", "ConnectionError"),
        ("standard", "timeout", "TimeoutError"),
        ("premium", "ok", None),
    ]
    assert 100 <= req.attempts[2]["latency_ms"] < 900
    assert req.attempts[3]["cache_read_tokens"] == 10


def test_cascade_reraises_when_every_tier_fails(ledger):
    def failing(question):
        raise ValueError(question)

    cascade = cascade_of(failing, failing)
    with pytest.raises(ValueError, match="boom"):
        with ledger.request(customer_id="acme", feature="qa") as req:
            cascade.run(req, "boom")
    assert statuses(req) == [("cheap", "error", "ValueError"), ("standard", "error", "ValueError")]


def test_cascade_starts_at_the_routed_tier(ledger):
    calls = []
    cascade = cascade_of(
        lambda q: calls.append("cheap"),
        lambda q: calls.append("standard") or anthropic_answer("unsure"),
        lambda q: calls.append("premium") or anthropic_answer("ok"),
    )
    with ledger.request(customer_id="acme", feature="qa", intended_tier="standard") as req:
        cascade.run(req, "q")
    assert calls == ["standard", "premium"]
    assert statuses(req) == [("standard", "rejected", "quality_check"), ("premium", "ok", None)]


def test_last_tier_is_served_as_is(ledger):
    cascade = cascade_of(lambda q: openai_answer("unsure"), lambda q: anthropic_answer("unsure"))
    with ledger.request(customer_id="acme", feature="qa") as req:
        cascade.run(req, "q")
    assert statuses(req) == [("cheap", "rejected", "quality_check"), ("standard", "ok", None)]


def run_many(ledger, cascade, count):
    served = []
    for _ in range(count):
        with ledger.request(customer_id="acme", feature="qa") as req:
            cascade.run(req, "q")
        served.append(statuses(req))
    return served


def test_escalation_cap_keeps_the_cheaper_answer(ledger):
    cascade = cascade_of(
        lambda q: openai_answer("unsure"),
        lambda q: anthropic_answer("ok"),
        max_escalation_share=0.2,
        window=10,
    )
    served = run_many(ledger, cascade, 15)
    escalated = [("cheap", "rejected", "quality_check"), ("standard", "ok", None)]
    kept = [("cheap", "ok", "escalation_cap")]
    # Two escalations fit in any 10 consecutive requests; the window slides after 10.
    assert served == [escalated] * 2 + [kept] * 8 + [escalated] * 2 + [kept] * 3


def test_escalation_cap_raises_when_configured(ledger):
    cascade = cascade_of(
        lambda q: openai_answer("unsure"),
        lambda q: anthropic_answer("ok"),
        max_escalation_share=0.1,
        window=10,
        on_cap="raise",
    )
    run_many(ledger, cascade, 1)
    with pytest.raises(EscalationCapReached) as raised:
        with ledger.request(customer_id="acme", feature="qa") as req:
            cascade.run(req, "q")
    assert answer_text(raised.value.result) == "unsure"
    assert statuses(req) == [("cheap", "rejected", "quality_check")]


def test_errors_fail_over_past_the_cap(ledger):
    def failing(question):
        raise TimeoutError

    cascade = cascade_of(
        failing, lambda q: anthropic_answer("ok"), max_escalation_share=0.0, window=10
    )
    with ledger.request(customer_id="acme", feature="qa") as req:
        cascade.run(req, "q")
    assert statuses(req) == [("cheap", "timeout", "TimeoutError"), ("standard", "ok", None)]


def test_timed_call_keeps_the_callers_context_variables(ledger):
    import contextvars

    trace = contextvars.ContextVar("trace", default=None)
    seen = []

    def call(question):
        seen.append((trace.get(), threading.current_thread().name))
        return openai_answer("ok")

    cascade = Cascade([CascadeTier("cheap", "gpt-4o-mini", call, timeout=5)], accept=lambda r: True)
    trace.set("trace-1")
    with ledger.request(customer_id="acme", feature="qa") as req:
        cascade.run(req, "q")
    assert seen == [("trace-1", "routeledger-cascade-call")]


def test_timed_attempt_records_errors_and_reraises(ledger):
    class APITimeoutError(Exception):  # named like the OpenAI and Anthropic timeouts
        pass

    with ledger.request(customer_id="acme", feature="qa") as req:
        with pytest.raises(APITimeoutError):
            with req.timed("gpt-4o-mini", "cheap", provider="openai"):
                raise APITimeoutError
        with req.timed("claude-sonnet-4", "standard") as call:
            call.set_response(anthropic_answer("ok"))
    assert statuses(req) == [("cheap", "timeout", "APITimeoutError"), ("standard", "ok", None)]
    assert req.attempts[1]["output_tokens"] == 40
