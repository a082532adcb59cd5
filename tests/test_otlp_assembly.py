"""Span-to-request assembly (DESIGN.md, OTLP GenAI traces) on hand-built spans: which span is
a request's, the order of its attempts, its fields and their fallbacks; then the
model-to-tier map's API."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from app.periods import HOUR, Period, floor_hour
from app.schemas import PriceIn
from app.services.metrics import routing_metrics
from app.services.model_tiers import TierMap
from app.services.otlp import REQUEST_ID_NAMESPACE, due_drafts, extract_spans
from app.services.pricing import add_prices
from app.services.rollups import run_rollup
from app.services.traces import receive_export, run_settle
from app.vocabulary import DEFAULT_TIERS
from tests.helpers import auth, make_project
from tests.otlp_spans import START, call, export, new_span_id, new_trace_id, span

TIERS = TierMap({"acme-small": "cheap", "acme-large": "premium"})


def drafts(*spans, quiet=False, **resource):
    extracted = extract_spans(export(*spans, **resource), tier_ranks=DEFAULT_TIERS, now=START)
    assert extracted.rejected == []
    return list(due_drafts({s.span_id: s for s in extracted.records}, quiet=quiet))


def events(*spans, **resource) -> list[dict]:
    return [e for d in drafts(*spans, **resource) for e in d.events(TIERS, already_counted=set())]


def test_sibling_calls_under_an_app_span_are_one_request_in_the_order_they_ended():
    trace, app, first, second = new_trace_id(), new_span_id(), new_span_id(), new_span_id()
    (event,) = events(
        span(trace, app, end_ms=900),
        call(trace, second, app, model="acme-large", start_ms=300, end_ms=800),
        call(trace, first, app, start_ms=10, end_ms=200, error=True, error__type="Overloaded"),
    )
    assert event["request_id"] == uuid.uuid5(REQUEST_ID_NAMESPACE, f"{trace.hex()}:{app.hex()}")
    assert [(a["model"], a["tier"], a["status"], a.get("reason")) for a in event["attempts"]] == [
        ("acme-small", "cheap", "error", "Overloaded"),
        ("acme-large", "premium", "ok", None),
    ]
    assert event["timestamp"] == START + timedelta(milliseconds=10)
    assert event["attempts"][0]["latency_ms"] == 190.0
    # No routeledger.* anywhere: the documented defaults.
    assert (event["customer_id"], event["feature"]) == ("(unattributed)", "support-bot")


def test_a_nested_call_belongs_to_its_outer_calls_request():
    trace, app, outer, inner = new_trace_id(), new_span_id(), new_span_id(), new_span_id()
    (draft,) = drafts(
        span(trace, app, end_ms=900),
        call(trace, outer, app, end_ms=500),
        call(trace, inner, outer, end_ms=400, model="acme-large"),
    )
    assert draft.request_span_id == app and len(draft.attempts) == 2


def test_a_wrapper_call_naming_the_request_and_the_client_call_inside_it_are_one_call():
    """A wrapper's instrumentation puts the request's customer and feature on its call span
    (README: "on a call's span"), the client's instrumentation reports the same call inside
    it with the usage: one request of one call, named by the wrapper, counted by the client's
    fuller report (the inner span took the wrapper for its request span, the wrapper the app
    span: two requests)."""
    trace, app, wrapper, client = new_trace_id(), new_span_id(), new_span_id(), new_span_id()
    (event,) = events(
        span(trace, app, end_ms=900),
        call(trace, wrapper, app, end_ms=500, gen_ai__usage__input_tokens=0,
             gen_ai__usage__output_tokens=0, routeledger__customer_id="acme",
             routeledger__feature="support-chat"),
        call(trace, client, wrapper, end_ms=400),
    )  # fmt: skip
    assert event["metadata"]["otel_span_id"] == app.hex()
    assert (event["customer_id"], event["feature"]) == ("acme", "support-chat")
    assert [(a["input_tokens"], a["output_tokens"]) for a in event["attempts"]] == [(1000, 500)]


def test_a_lone_root_call_is_its_own_request():
    trace, root = new_trace_id(), new_span_id()
    (draft,) = drafts(call(trace, root))
    assert draft.request_span_id == root


def test_the_nearest_marked_ancestor_is_the_request_span_and_names_it():
    trace, server, handler, step = new_trace_id(), new_span_id(), new_span_id(), new_span_id()
    (event,) = events(
        span(trace, server, end_ms=999),
        span(
            trace, handler, server, end_ms=990,
            routeledger__feature="support-chat", routeledger__customer_id="acme",
            routeledger__intended_tier="cheap", routeledger__revenue_usd="0.004",
            routeledger__router__confidence=0.9, routeledger__experiment__name="router-v4",
            routeledger__experiment__arm="treatment",
        ),
        span(trace, step, handler, end_ms=900, enduser__id="someone-else"),
        call(trace, new_span_id(), step, routeledger__quality__score=0.5),
    )  # fmt: skip
    assert event["metadata"]["otel_span_id"] == handler.hex()
    assert (event["customer_id"], event["feature"]) == ("acme", "support-chat")
    assert event["intended_tier"] == "cheap" and event["revenue_usd"] == "0.004"
    assert event["router"] == {"confidence": 0.9}  # what is not sent is left out
    assert event["experiment"] == {"name": "router-v4", "arm": "treatment"}
    assert event["quality"] == {"score": 0.5}  # from the attempt span


def test_customer_falls_back_to_enduser_then_user_and_the_resource():
    trace, root = new_trace_id(), new_span_id()
    (event,) = events(call(trace, root, user__id="u1"))
    assert event["customer_id"] == "u1"
    # The attribute decides first, then where it is: enduser.id, even on the resource, comes
    # before user.id; on the span before the resource.
    (event,) = events(call(new_trace_id(), new_span_id(), user__id="u1"), **{"enduser.id": "e1"})
    assert event["customer_id"] == "e1"
    (event,) = events(call(new_trace_id(), new_span_id(), enduser__id="e2"), **{"enduser.id": "e1"})
    assert event["customer_id"] == "e2"
    (event,) = events(call(new_trace_id(), new_span_id()), **{"routeledger.feature": "env-feature"})
    assert event["feature"] == "env-feature"


def test_a_request_waits_for_its_request_span_unless_the_trace_is_quiet():
    trace, app = new_trace_id(), new_span_id()
    child = call(trace, new_span_id(), app)
    assert drafts(child) == []
    (draft,) = drafts(child, quiet=True)
    assert draft.request_span_id == app and draft.request_span is None


def test_one_call_reported_twice_in_a_request_counts_once():
    trace, app = new_trace_id(), new_span_id()
    (draft,) = drafts(
        span(trace, app, end_ms=900),
        call(trace, new_span_id(), app, end_ms=300, gen_ai__response__id="r1"),
        call(trace, new_span_id(), app, end_ms=310, gen_ai__response__id="r1"),
    )
    assert len(draft.attempts) == 1 and len(draft.span_ids) == 2


def test_one_call_under_two_nested_instrumentations_counts_once_by_its_fullest_report():
    """A wrapper's instrumentation (OpenLLMetry) nests the client's (openai-v2) around one
    call: a failed call has no response id, a streamed one may lack it on one side; the call
    is still one attempt, reported by the span that says most."""
    trace, app = new_trace_id(), new_span_id()
    outer_fail, outer_stream, outer_cached = new_span_id(), new_span_id(), new_span_id()
    (draft,) = drafts(
        span(trace, app, end_ms=900),
        # A failed call: both spans ERROR, no response id.
        call(trace, outer_fail, app, end_ms=110, error=True, error__type="InternalServerError"),
        call(trace, new_span_id(), outer_fail, end_ms=100, error=True, error__type="500"),
        # A stream: the outer span without id or usage, the inner with both.
        call(trace, outer_stream, app, start_ms=120, end_ms=400,
             gen_ai__usage__input_tokens=0, gen_ai__usage__output_tokens=0),
        call(trace, new_span_id(), outer_stream, start_ms=120, end_ms=390,
             gen_ai__response__id="r-stream"),
        # One id on both, the outer alone counting the cached tokens.
        call(trace, outer_cached, app, start_ms=410, end_ms=600, gen_ai__response__id="r-c",
             gen_ai__usage__cache_read__input_tokens=400),
        call(trace, new_span_id(), outer_cached, start_ms=410, end_ms=590,
             gen_ai__response__id="r-c"),
    )  # fmt: skip
    calls = [(a.attempt["status"], a.attempt["input_tokens"], a.attempt["cache_read_tokens"],
              a.attempt["response_id"]) for a in draft.attempts]  # fmt: skip
    assert calls == [("error", 1000, 0, None), ("ok", 1000, 0, "r-stream"), ("ok", 600, 400, "r-c")]
    assert len(draft.span_ids) == 6


def test_calls_of_one_model_inside_a_span_of_that_model_stay_calls_of_their_own():
    trace, app, wrapper = new_trace_id(), new_span_id(), new_span_id()
    (draft,) = drafts(
        span(trace, app, end_ms=900),
        call(trace, wrapper, app, end_ms=500),
        call(trace, new_span_id(), wrapper, end_ms=100, error=True),
        call(trace, new_span_id(), wrapper, end_ms=400),
    )
    assert len(draft.attempts) == 3


def test_more_calls_than_an_event_holds_become_consecutive_requests():
    """The request's revenue and quality go on the first only: one request, counted once."""
    trace, app = new_trace_id(), new_span_id()
    calls = [call(trace, new_span_id(), app, end_ms=10 + n) for n in range(25)]
    request_span = span(
        trace, app, end_ms=900, routeledger__revenue_usd="1.00", routeledger__quality__score=0.8,
        routeledger__customer_id="acme",
    )  # fmt: skip
    first, second = events(request_span, *calls)
    assert len(first["attempts"]) == 20 and len(second["attempts"]) == 5
    assert (first["revenue_usd"], first["quality"]) == ("1.00", {"score": 0.8})
    assert "revenue_usd" not in second and "quality" not in second
    assert first["customer_id"] == second["customer_id"] == "acme"
    name = f"{trace.hex()}:{app.hex()}"
    assert (first["request_id"], second["request_id"]) == (
        uuid.uuid5(REQUEST_ID_NAMESPACE, name),
        uuid.uuid5(REQUEST_ID_NAMESPACE, f"{name}:1"),
    )


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"gen_ai__usage__output_tokens": -1}, "gen_ai.usage.output_tokens: -1 is out of range"),
        ({"gen_ai__usage__input_tokens": "many"}, "gen_ai.usage.input_tokens: must be an integer"),
        ({"gen_ai__usage__cache_read__input_tokens": 2000}, "exceed gen_ai.usage.input_tokens"),
        ({"routeledger__tier": "gold"}, "routeledger.tier: unknown tier 'gold'"),
        ({"routeledger__quality__score": 1.5}, "routeledger.quality.score: must be a number in"),
        ({"routeledger__revenue_usd": "lots"}, "routeledger.revenue_usd: must be a non-negative"),
        ({"routeledger__experiment__name": "x"}, "go together"),
        ({"gen_ai__request__model": "m" * 201}, "gen_ai.request.model: must be a non-empty"),
    ],
)
def test_an_unusable_span_is_refused_by_name(attributes, message):
    bad = call(new_trace_id(), new_span_id(), **attributes)
    good = call(new_trace_id(), new_span_id())
    extracted = extract_spans(export(bad, good), tier_ranks=DEFAULT_TIERS, now=START)
    assert len(extracted.records) == 1 and len(extracted.rejected) == 1
    assert message in extracted.rejected[0]


def test_spans_that_are_not_model_calls_are_ignored_not_refused():
    extracted = extract_spans(
        export(span(new_trace_id(), new_span_id(), http__route="/x")),
        tier_ranks=DEFAULT_TIERS,
        now=START,
    )
    assert extracted.rejected == [] and not extracted.records[0].is_attempt


def test_one_call_in_two_traces_counts_once(engine):

    project = make_project(baseline_model=None)
    first = call(
        new_trace_id(), new_span_id(), routeledger__tier="cheap", gen_ai__response__id="r9"
    )
    second = call(
        new_trace_id(), new_span_id(), routeledger__tier="cheap", gen_ai__response__id="r9"
    )
    receive_export(engine, project_id=project.id, export=export(first), now=START)
    outcome = receive_export(engine, project_id=project.id, export=export(second), now=START)
    assert outcome.duplicates == 1 and outcome.requests == 0
    assert project.count_requests() == 1


@pytest.mark.parametrize("blank", ["", "  "])
def test_calls_with_a_blank_response_id_are_not_one_call(engine, blank):
    project = make_project(baseline_model=None)
    calls = [
        call(new_trace_id(), new_span_id(), routeledger__tier="cheap", gen_ai__response__id=blank)
        for _ in range(2)
    ]
    for reported in calls:
        outcome = receive_export(engine, project_id=project.id, export=export(reported), now=START)
        assert (outcome.requests, outcome.duplicates) == (1, 0)
    assert project.count_requests() == 2


def test_a_request_span_that_arrives_before_its_calls_waits_for_them(engine):
    # A request span ends after its calls, yet another process (or a retried export) can
    # deliver it first: it is kept, and the calls of a later export are assembled under it.
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__customer_id="acme")
    first = receive_export(engine, project_id=project.id, export=export(app), now=START)
    assert (first.requests, first.duplicates) == (0, 0)
    calls = [call(trace_id, new_span_id(), app_id, routeledger__tier="cheap") for _ in range(2)]
    second = receive_export(engine, project_id=project.id, export=export(*calls), now=START)
    assert second.requests == 1
    assert request_rows(engine, project.id, "feature, customer_id, attempt_count") == [
        ("search", "acme", 2)
    ]
    with engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "select count(*) from otlp_spans where project_id = %s", (project.id,)
        ).scalar_one()
    assert waiting == 0


def request_rows(engine, project_id: int, columns: str, *, order: str | None = None) -> list:
    """The project's requests as tuples of `columns` (SQL), in `order` when given."""
    ordered = f" order by {order}" if order else ""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"select {columns} from requests where project_id = %s{ordered}", (project_id,)
        ).all()
    return [tuple(row) for row in rows]


def stored_calls(engine, project_id: int) -> list[tuple]:
    """Per request: its customer, attempt count, served model, cost, and its attempts' models
    in order."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "select r.customer_id, r.attempt_count, r.served_model, r.cost_usd, r.is_fallback,"
            " array_agg(a.model order by a.position) from requests r join attempts a"
            " using (project_id, ts, request_id) where r.project_id = %s"
            " group by r.customer_id, r.attempt_count, r.served_model, r.cost_usd, r.is_fallback",
            (project_id,),
        ).all()
    return [tuple(row) for row in rows]


def figures(engine, project_id: int, within: Period, now) -> tuple:
    """Requests, attempts, fallback rate and cost as the metrics read them, rolled up at `now`."""
    run_rollup(engine, now=now)
    with engine.connect() as conn:
        m = routing_metrics(conn, project_id=project_id, within=within)
    return (m.requests, m.attempts, m.fallback_rate, str(m.cost_usd))


def test_a_call_that_arrives_after_its_request_was_assembled_joins_it(engine):
    """The request span came with the first call (so the request was assembled), the second
    call in a later export (it ended after its request span, or came from another process):
    it waits for the settle time, then joins the stored request as its next attempt, and the
    request's figures follow. Exported again, nothing changes."""
    project = make_project(baseline_model=None)
    with engine.begin() as conn:
        add_prices(conn, project_id=project.id, prices=[
            PriceIn(model=model, input_per_mtok=price_in, output_per_mtok=price_out,
                    effective_from="2026-01-01T00:00:00Z")
            for model, price_in, price_out in (("acme-small", "1", "2"), ("acme-large", "10", "30"))
        ])  # fmt: skip
    trace_id, app_id, first_id, second_id = (new_trace_id(), new_span_id(), new_span_id(),
                                             new_span_id())  # fmt: skip
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__customer_id="acme")
    first = call(trace_id, first_id, app_id, end_ms=50, routeledger__tier="cheap", error=True)
    second = call(trace_id, second_id, app_id, model="acme-large", start_ms=60, end_ms=400,
                  routeledger__tier="premium", gen_ai__usage__input_tokens=2000)  # fmt: skip
    assembled = receive_export(engine, project_id=project.id, export=export(app, first), now=START)
    assert assembled.requests == 1
    within, later = Period(floor_hour(START), floor_hour(START) + HOUR), START + timedelta(hours=2)
    assert figures(engine, project.id, within, later) == (1, 1, 0.0, "0.002")
    late = receive_export(engine, project_id=project.id, export=export(second), now=START)
    assert (late.requests, late.amended, late.duplicates) == (0, 0, 0)  # waiting
    settled = run_settle(engine, now=START + timedelta(minutes=5))
    assert (settled.requests, settled.amended, settled.duplicates) == (0, 1, 0)
    # The hour was rolled up with one attempt: it is rolled again with two.
    assert figures(engine, project.id, within, later) == (1, 2, 1.0, "0.037")
    [(customer, count, served, cost, fallback, models)] = stored_calls(engine, project.id)
    assert (customer, count, served, fallback) == ("acme", 2, "acme-large", True)
    # (1000 * $1 + 500 * $2) + (2000 * $10 + 500 * $30), per million tokens.
    assert cost == Decimal("0.002") + Decimal("0.035")
    assert models == ["acme-small", "acme-large"]
    again = receive_export(
        engine, project_id=project.id, export=export(app, first, second), now=START
    )
    assert (again.requests, again.amended, again.duplicates) == (0, 0, 1)
    assert stored_calls(engine, project.id) == [(customer, count, served, cost, fallback, models)]


def stored_costs(engine, project_id: int) -> tuple:
    """The request's cost and baseline, and per attempt its cost and price id, in order."""
    with engine.connect() as conn:
        request = conn.exec_driver_sql(
            "select cost_usd, baseline_cost_usd, baseline_price_id from requests"
            " where project_id = %s",
            (project_id,),
        ).one()
        attempts = conn.exec_driver_sql(
            "select cost_usd, price_id from attempts where project_id = %s order by position",
            (project_id,),
        ).all()
    return tuple(request), [tuple(a) for a in attempts]


@pytest.mark.parametrize("late_call_served", [False, True])
def test_a_late_call_leaves_the_stored_calls_costs_as_they_were_priced(engine, late_call_served):
    """Prices posted after a request was stored, back-dated to before it, do not re-price it
    when a late call joins it (only an explicit re-pricing does): its stored call keeps its
    cost and price, and its baseline stays while that call serves it; the late call is priced
    at the prices in force now, and so is the baseline when the late call serves the request."""
    project = make_project(baseline_model="acme-base")

    def post(*prices, since: str) -> None:
        with engine.begin() as conn:
            add_prices(conn, project_id=project.id, prices=[
                PriceIn(model=model, input_per_mtok=price_in, output_per_mtok=price_out,
                        effective_from=since)
                for model, price_in, price_out in prices
            ])  # fmt: skip

    post(("acme-small", "1", "2"), ("acme-large", "10", "30"), ("acme-base", "100", "100"),
         since="2026-01-01T00:00:00Z")  # fmt: skip
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__customer_id="acme")
    first = call(trace_id, new_span_id(), app_id, end_ms=50, routeledger__tier="cheap")
    receive_export(engine, project_id=project.id, export=export(app, first), now=START)
    (cost, baseline, baseline_price), [(first_cost, first_price)] = stored_costs(engine, project.id)
    assert (cost, baseline) == (Decimal("0.002"), Decimal("0.15"))  # 1,500 tokens at $100
    # Back-dated to before the request: the prices in force at its time are these now.
    post(("acme-small", "10", "20"), ("acme-base", "200", "200"), since="2026-11-01T00:00:00Z")
    second = call(trace_id, new_span_id(), app_id, model="acme-large", start_ms=60, end_ms=400,
                  routeledger__tier="premium", error=not late_call_served)  # fmt: skip
    outcome = receive_export(
        engine, project_id=project.id, export=export(app, first, second), now=START
    )
    assert outcome.amended == 1
    (cost, baseline, price), attempts = stored_costs(engine, project.id)
    assert attempts[0] == (first_cost, first_price)
    assert attempts[1][0] == Decimal("0.025")  # 1,000 * $10 + 500 * $30 per million
    assert cost == first_cost + Decimal("0.025")
    if late_call_served:
        assert (baseline, price) != (Decimal("0.15"), baseline_price)
        assert baseline == Decimal("0.3")  # its 1,500 tokens at the $200 in force now
    else:
        assert (baseline, price) == (Decimal("0.15"), baseline_price)


def test_a_request_span_waits_past_the_settle_time_for_a_stream_read_later(engine):
    """A handler's span ends, and is exported, before the stream it returned is read: its
    model call comes minutes later, past the settle time, and is still its request's (its
    customer and feature). A request span no call ever comes for is forgotten after an hour."""
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__customer_id="acme")
    receive_export(engine, project_id=project.id, export=export(app), now=START)
    run_settle(engine, now=START + timedelta(minutes=5))
    stream = call(trace_id, new_span_id(), app_id, routeledger__tier="cheap")
    later = START + timedelta(minutes=6)
    outcome = receive_export(engine, project_id=project.id, export=export(stream), now=later)
    assert outcome.requests == 1
    [(customer, count, _, _, _, _)] = stored_calls(engine, project.id)
    assert (customer, count) == ("acme", 1)

    lone = span(new_trace_id(), new_span_id(), routeledger__feature="search")
    receive_export(engine, project_id=project.id, export=export(lone), now=START)
    assert waiting_spans(engine, project.id) == 1
    run_settle(engine, now=START + timedelta(minutes=59))
    assert waiting_spans(engine, project.id) == 1
    run_settle(engine, now=START + timedelta(minutes=61))
    assert waiting_spans(engine, project.id) == 0


def waiting_spans(engine, project_id: int) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "select count(*) from otlp_spans where project_id = %s", (project_id,)
        ).scalar_one()


def test_a_late_call_exported_with_its_request_span_again_joins_at_once(engine):
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__customer_id="acme")
    first = call(trace_id, new_span_id(), app_id, end_ms=50, routeledger__tier="cheap")
    second = call(trace_id, new_span_id(), app_id, end_ms=80, routeledger__tier="cheap")
    receive_export(engine, project_id=project.id, export=export(app, first), now=START)
    outcome = receive_export(
        engine, project_id=project.id, export=export(app, first, second), now=START
    )
    assert (outcome.requests, outcome.amended, outcome.duplicates) == (0, 1, 0)
    [(_, count, _, _, _, models)] = stored_calls(engine, project.id)
    assert (count, models) == (2, ["acme-small", "acme-small"])


def stored_before_a_rule(engine, project):
    """A request of one call stored before a rule of the event schema existed (a customer id
    longer than it allows, written by SQL): its request span, that call, and a later call."""
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__customer_id="acme")
    first = call(trace_id, new_span_id(), app_id, end_ms=50, routeledger__tier="cheap")
    receive_export(engine, project_id=project.id, export=export(app, first), now=START)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "update requests set customer_id = repeat('c', 300) where project_id = %s",
            (project.id,),
        )
    return app, first, call(trace_id, new_span_id(), app_id, end_ms=80, routeledger__tier="cheap")


def test_a_late_call_for_a_request_the_schema_refuses_now_is_refused_by_name(engine):
    """A request stored before a rule of the event schema existed (here: a customer id longer
    than it allows, written by SQL) cannot be derived again: its late call is refused by name,
    and the export is answered, not failed."""
    project = make_project(baseline_model=None)
    app, first, second = stored_before_a_rule(engine, project)
    outcome = receive_export(
        engine, project_id=project.id, export=export(app, first, second), now=START
    )
    assert (outcome.amended, outcome.rejected_spans) == (0, 2)
    assert "customer_id: String should have at most 200 characters" in outcome.errors[0]


def test_late_calls_beyond_what_a_request_holds_make_its_next_consecutive_request(engine):
    """A request holds 20 calls; calls reported after it was stored fill it up, and those
    beyond go to the consecutive request of the same request span, as if they had come with
    the others (they were refused, and lost)."""
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search")
    calls = [call(trace_id, new_span_id(), app_id, end_ms=10 + n, routeledger__tier="cheap")
             for n in range(23)]  # fmt: skip
    receive_export(engine, project_id=project.id, export=export(app, *calls[:18]), now=START)
    # With the request span: at once.
    late = receive_export(
        engine, project_id=project.id, export=export(app, *calls[18:22]), now=START
    )
    assert (late.requests, late.amended, late.duplicates, late.rejected_spans) == (1, 1, 0, 0)
    # Alone, after the settle time.
    receive_export(engine, project_id=project.id, export=export(calls[22]), now=START)
    settled = run_settle(engine, now=START + timedelta(minutes=5))
    assert (settled.requests, settled.amended, settled.rejected_spans) == (0, 1, 0)
    assert sorted(count for _, count, *_ in stored_calls(engine, project.id)) == [3, 20]


def test_a_second_part_of_a_request_of_more_than_20_calls_exported_again_is_a_duplicate(engine):
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search")
    calls = [call(trace_id, new_span_id(), app_id, end_ms=10 + n, routeledger__tier="cheap")
             for n in range(25)]  # fmt: skip
    first = receive_export(engine, project_id=project.id, export=export(app, *calls), now=START)
    assert first.requests == 2
    again = receive_export(
        engine, project_id=project.id, export=export(app, *calls[20:]), now=START
    )
    assert (again.requests, again.amended, again.duplicates, again.rejected_spans) == (0, 0, 1, 0)
    assert sorted(count for _, count, *_ in stored_calls(engine, project.id)) == [5, 20]


# --- the map's API ----------------------------------------------------------------------


def test_model_tiers_map_models_whose_names_hold_slashes(http, live_api):

    project = make_project()
    admin, read = auth(project.admin_key), auth(project.read_key)
    assert http.put("/v1/model-tiers/openrouter/anthropic/claude-sonnet-4",
                    json={"tier": "standard"}, headers=admin).status_code == 200  # fmt: skip
    assert http.put("/v1/model-tiers/azure%2Fgpt-4o-mini", json={"tier": "cheap"},
                    headers=admin).status_code == 200  # fmt: skip
    listed = http.get("/v1/model-tiers", headers=read).json()["model_tiers"]
    assert [(m["model"], m["tier"]) for m in listed] == [
        ("azure/gpt-4o-mini", "cheap"),
        ("openrouter/anthropic/claude-sonnet-4", "standard"),
    ]
    response = http.put("/v1/model-tiers/x", json={"tier": "gold"}, headers=admin)
    assert response.status_code == 422 and "unknown tier 'gold'" in response.json()["detail"]
    assert http.put("/v1/model-tiers/x", json={"tier": "cheap"}, headers=read).status_code == 403
    assert http.delete("/v1/model-tiers/azure%2Fgpt-4o-mini", headers=admin).status_code == 204
    assert http.delete("/v1/model-tiers/azure/gpt-4o-mini", headers=admin).status_code == 404
    listed = http.get("/v1/model-tiers", headers=read).json()["model_tiers"]
    assert [m["model"] for m in listed] == ["openrouter/anthropic/claude-sonnet-4"]
    # Another project sees its own map only.
    other = make_project()
    assert http.get("/v1/model-tiers", headers=auth(other.read_key)).json() == {"model_tiers": []}


def test_a_second_report_of_a_stored_call_arriving_later_counts_once(engine):
    """A second instrumentation reports a call (its response id) after the first report's
    request was assembled, a little differently (its own duration, cache detail): the call
    is counted once, not added as a further attempt of its own request. Another request's
    calls with new ids still join their requests."""
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__customer_id="acme")
    first = call(trace_id, new_span_id(), app_id, end_ms=100, routeledger__tier="cheap",
                 gen_ai__response__id="chatcmpl-1")  # fmt: skip
    again = call(trace_id, new_span_id(), app_id, end_ms=104, routeledger__tier="cheap",
                 gen_ai__response__id="chatcmpl-1",
                 gen_ai__usage__cache_read__input_tokens=100)  # fmt: skip
    late = call(trace_id, new_span_id(), app_id, start_ms=110, end_ms=200,
                routeledger__tier="cheap", gen_ai__response__id="chatcmpl-2")  # fmt: skip
    assert (
        receive_export(engine, project_id=project.id, export=export(app, first), now=START).requests
        == 1
    )
    second = receive_export(engine, project_id=project.id, export=export(app, again), now=START)
    assert (second.requests, second.amended, second.duplicates) == (0, 0, 1)
    third = receive_export(engine, project_id=project.id, export=export(app, late), now=START)
    assert (third.requests, third.amended) == (0, 1)
    [(customer, count, _served, _cost, fallback, models)] = stored_calls(engine, project.id)
    assert (customer, count, fallback, models) == ("acme", 2, True, ["acme-small"] * 2)


def test_a_held_report_of_a_counted_call_stays_a_duplicate_when_released_hours_later(engine):
    """One call reported in two traces, the second report held for its unmapped model: its
    claim is kept while the report is held, however long, so mapping the model hours later
    releases a duplicate, not a second copy of the call."""
    from app.services.traces import map_model

    project = make_project(baseline_model=None)
    counted = call(new_trace_id(), new_span_id(), routeledger__tier="cheap",
                   gen_ai__response__id="chatcmpl-9")  # fmt: skip
    held = call(new_trace_id(), new_span_id(), model="acme-unmapped",
                gen_ai__response__id="chatcmpl-9")  # fmt: skip
    assert (
        receive_export(engine, project_id=project.id, export=export(counted), now=START).requests
        == 1
    )
    assert receive_export(engine, project_id=project.id, export=export(held), now=START).held == 1
    other = call(new_trace_id(), new_span_id(), routeledger__tier="cheap",
                 gen_ai__response__id="chatcmpl-other")  # fmt: skip
    receive_export(engine, project_id=project.id, export=export(other), now=START)
    run_settle(engine, now=START + timedelta(hours=3))
    with engine.connect() as conn:
        kept = (
            conn.exec_driver_sql(
                "select response_id from otlp_response_ids where project_id = %s", (project.id,)
            )
            .scalars()
            .all()
        )
    assert kept == ["chatcmpl-9"]  # only the claims a held report needs outlive the hour
    released = map_model(engine, project_id=project.id, model="acme-unmapped", tier="cheap",
                         now=START + timedelta(hours=3))  # fmt: skip
    assert released.released_requests == 1
    assert project.count_requests() == 2


@pytest.mark.parametrize("thin_first", [True, False])
def test_one_call_in_two_traces_of_one_export_counts_by_its_fullest_report(engine, thin_first):
    """Two traces of one export report one call: the report with usage is the one counted,
    whichever trace comes first."""
    project = make_project(baseline_model=None)
    low, high = bytes(15) + b"\x01", b"\xff" * 16
    thin_trace, full_trace = (low, high) if thin_first else (high, low)
    thin = call(thin_trace, new_span_id(), routeledger__tier="cheap", gen_ai__response__id="r1",
                gen_ai__usage__input_tokens=0, gen_ai__usage__output_tokens=0,
                routeledger__customer_id="thin")  # fmt: skip
    full = call(full_trace, new_span_id(), routeledger__tier="cheap", gen_ai__response__id="r1",
                routeledger__customer_id="full")  # fmt: skip
    outcome = receive_export(engine, project_id=project.id, export=export(thin, full), now=START)
    assert (outcome.requests, outcome.duplicates) == (1, 1)
    assert request_rows(engine, project.id, "customer_id, input_tokens, output_tokens") == [
        ("full", 1000, 500)
    ]


def test_a_request_span_without_feature_or_customer_that_comes_first_keeps_its_fields(engine):
    """A parent span naming the intended tier, an experiment, revenue and the end user (but
    no routeledger.feature or .customer_id) arrives alone, its call later: the request still
    takes its fields."""
    project = make_project(baseline_model=None)
    trace_id, parent_id = new_trace_id(), new_span_id()
    parent = span(trace_id, parent_id, routeledger__intended_tier="premium",
                  routeledger__experiment__name="router-v4", routeledger__experiment__arm="b",
                  routeledger__revenue_usd="0.01", enduser__id="acme")  # fmt: skip
    child = call(trace_id, new_span_id(), parent_id, routeledger__tier="cheap")
    receive_export(engine, project_id=project.id, export=export(parent), now=START)
    receive_export(engine, project_id=project.id, export=export(child), now=START)
    run_settle(engine, now=START + timedelta(minutes=5))
    columns = "customer_id, intended_tier, experiment_name, experiment_arm, revenue_usd"
    assert request_rows(engine, project.id, columns) == [
        ("acme", "premium", "router-v4", "b", Decimal("0.01"))
    ]


def test_a_held_request_whose_calls_move_under_a_later_request_span_is_held_once(engine):
    """A call of an unmapped model waits for its parent, the trace goes quiet and the call is
    held under that parent; then the parent arrives under a marked span: the call's request
    is the marked span's now, held once (the first hold stayed: two held for one request,
    one of them never released, its trace settled again on every run)."""
    from app.services.traces import held_models, map_model

    project = make_project(baseline_model=None)
    trace_id, marked_id, parent_id = new_trace_id(), new_span_id(), new_span_id()
    lone = call(trace_id, new_span_id(), parent_id, model="acme-unmapped")
    receive_export(engine, project_id=project.id, export=export(lone), now=START)
    assert run_settle(engine, now=START + timedelta(minutes=5)).held == 1
    marked = span(
        trace_id, marked_id, routeledger__feature="search", routeledger__customer_id="acme"
    )
    parent = span(trace_id, parent_id, marked_id)
    later = START + timedelta(minutes=6)
    assert (
        receive_export(engine, project_id=project.id, export=export(parent, marked), now=later).held
        == 1
    )
    with engine.connect() as conn:
        assert held_models(conn, project_id=project.id)[0] == 1
    released = map_model(
        engine, project_id=project.id, model="acme-unmapped", tier="cheap", now=later
    )
    assert released.released_requests == 1
    with engine.connect() as conn:
        assert held_models(conn, project_id=project.id)[0] == 0
    assert request_rows(engine, project.id, "customer_id, feature") == [("acme", "search")]
    assert run_settle(engine, now=later + timedelta(hours=2)).traces == 0


def test_an_export_is_answered_for_its_own_spans_not_those_stored_before(engine):
    """A request is stored, a late call of it waits, then an export brings its request span
    again and one unrelated span: the waiting call is refused (its request, stored before a
    rule the schema has now, cannot take it), but none of this export's spans was (it was
    answered 400, "every span was refused", counting the stored one)."""
    project = make_project(baseline_model=None)
    app, _first, second = stored_before_a_rule(engine, project)
    waiting = receive_export(engine, project_id=project.id, export=export(second), now=START)
    assert (waiting.requests, waiting.rejected_spans) == (0, 0)
    unrelated = span(app.trace_id, new_span_id())
    again = receive_export(engine, project_id=project.id, export=export(app, unrelated), now=START)
    assert again.rejected_spans == 0 and again.refused_stored_spans == 1
    assert "customer_id: String should have at most 200 characters" in again.errors[0]


def test_many_late_calls_fill_a_request_then_its_next_one_in_the_order_they_ended(engine):
    """15 calls stored, 25 more reported later with the request span: the first 5 fill the
    stored request, the other 20 make the next one, each in the order the calls ended (the
    next one was stored with the last 5 first)."""
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__revenue_usd="1.00")
    calls = [call(trace_id, new_span_id(), app_id, end_ms=10 + n, routeledger__tier="cheap")
             for n in range(40)]  # fmt: skip
    receive_export(engine, project_id=project.id, export=export(app, *calls[:15]), now=START)
    late = receive_export(engine, project_id=project.id, export=export(app, *calls[15:]), now=START)
    assert (late.requests, late.amended, late.rejected_spans) == (1, 1, 0)
    # The request's revenue is counted once: on one of its two requests.
    assert sorted(request_rows(engine, project.id, "revenue_usd"), key=str) == [
        (Decimal("1.00"),), (None,)
    ]  # fmt: skip
    with engine.connect() as conn:
        rows = (
            conn.exec_driver_sql(
                "select array_agg(a.latency_ms order by a.position) from requests r join attempts a"
                " using (project_id, ts, request_id) where r.project_id = %s group by r.request_id",
                (project.id,),
            )
            .scalars()
            .all()
        )
    assert sorted(rows) == [[10.0 + n for n in range(20)], [30.0 + n for n in range(20)]]


def test_a_request_whose_first_twenty_calls_are_refused_keeps_its_revenue_on_the_next(engine):
    """The first of its consecutive requests is refused (a call's error type holds a NUL):
    the next one stored carries the request's revenue and quality, counted once still."""
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__revenue_usd="1.00",
               routeledger__quality__score=0.8)  # fmt: skip
    unstorable = call(trace_id, new_span_id(), app_id, end_ms=10, error=True,
                      routeledger__tier="cheap", error__type="bad\x00type")  # fmt: skip
    calls = [call(trace_id, new_span_id(), app_id, end_ms=11 + n, routeledger__tier="cheap")
             for n in range(24)]  # fmt: skip
    outcome = receive_export(
        engine, project_id=project.id, export=export(app, unstorable, *calls), now=START
    )
    assert outcome.requests == 1 and outcome.rejected_spans > 0
    assert request_rows(engine, project.id, "attempt_count, revenue_usd, quality_score") == [
        (5, Decimal("1.00"), 0.8)
    ]


def test_late_calls_alone_beyond_a_full_request_make_a_next_request_named_like_it(engine):
    """Two calls arrive after their request of 20 was stored, without their request span:
    the next consecutive request they make is the stored request's customer and feature (it
    was unattributed, named after the resource)."""
    project = make_project(baseline_model=None)
    trace_id, app_id = new_trace_id(), new_span_id()
    app = span(trace_id, app_id, routeledger__feature="search", routeledger__customer_id="acme",
               routeledger__intended_tier="cheap")  # fmt: skip
    calls = [call(trace_id, new_span_id(), app_id, end_ms=10 + n, routeledger__tier="cheap")
             for n in range(22)]  # fmt: skip
    receive_export(engine, project_id=project.id, export=export(app, *calls[:20]), now=START)
    receive_export(engine, project_id=project.id, export=export(*calls[20:]), now=START)
    settled = run_settle(engine, now=START + timedelta(minutes=5))
    assert (settled.requests, settled.rejected_spans) == (1, 0)
    columns = "customer_id, feature, intended_tier, attempt_count"
    assert request_rows(engine, project.id, columns, order="attempt_count") == [
        ("acme", "search", "cheap", 2),
        ("acme", "search", "cheap", 20),
    ]
