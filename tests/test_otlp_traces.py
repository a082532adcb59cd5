"""POST /v1/traces with the real clients on loopback: the official openai client,
instrumented by the OpenTelemetry project's opentelemetry-instrumentation-openai-v2 and by
OpenLLMetry, calling a fake OpenAI-compatible server, exporting through the real OTLP
protobuf and JSON exporters (configured by the environment variables the README gives) to a
real `routeledger api`. Everything is checked through the metrics API."""

from __future__ import annotations

import base64
import os
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import openai
import psycopg
import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.json.http.trace_exporter import (
    OTLPSpanExporter as JsonSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as ProtobufSpanExporter,
)
from opentelemetry.instrumentation.openai import OpenAIInstrumentor as OpenLLMetry
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OpenAIv2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.periods import utc_now
from app.services.traces import run_settle
from tests import otlp_spans
from tests.helpers import (
    CACHED_TOKENS,
    COMPLETION_TOKENS,
    DATE_SUFFIX,
    PROMPT_TOKENS,
    auth,
    by_model,
    make_project,
    metrics,
    set_price,
)

PROMPT = "what is the secret word of order 1234?"
MESSAGES = [{"role": "user", "content": PROMPT}]
INSTRUMENTATIONS = {"openai-v2": OpenAIv2, "openllmetry": OpenLLMetry}
EXPORTERS = {"protobuf": ProtobufSpanExporter, "json": JsonSpanExporter}


@pytest.fixture
def project(live_api):
    return make_project(baseline_model=None)


@pytest.fixture
def exporter_env(monkeypatch, live_api, project):
    """The README's configuration of an OTel-instrumented app, pointed at the live API."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{live_api.url}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{project.ingest_key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")


@contextmanager
def traced(
    *instrumentations: str,
    exporter: str = "protobuf",
    batch: bool = True,
    capture: InMemorySpanExporter | None = None,
):
    """A tracer provider exporting to RouteLedger (and to `capture`, to see what was sent),
    with the openai client instrumented."""
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    span_exporter = EXPORTERS[exporter]()
    provider.add_span_processor(
        BatchSpanProcessor(span_exporter) if batch else SimpleSpanProcessor(span_exporter)
    )
    if capture is not None:
        provider.add_span_processor(SimpleSpanProcessor(capture))
    instrumentors = [INSTRUMENTATIONS[name]() for name in instrumentations]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider
    finally:
        for instrumentor in reversed(instrumentors):
            instrumentor.uninstrument()
        provider.shutdown()


def client(fake_openai, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_openai.url, api_key="test", max_retries=max_retries)


def map_tiers(http, project, tiers: dict[str, str]) -> None:
    for model, tier in tiers.items():
        response = http.put(
            f"/v1/model-tiers/{model}", json={"tier": tier}, headers=auth(project.admin_key)
        )
        assert response.status_code == 200, response.text


def stored_spans(project) -> list[str]:
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "select fields::text || resource::text from otlp_spans where project_id = %s",
            (project.id,),
        )
        return [r[0] for r in rows]


# --- the real clients ---------------------------------------------------------------------


def test_app_fallback_under_an_app_span_is_one_fallback_request(
    http, engine, fake_openai, project, exporter_env
):
    map_tiers(http, project, {"gpt-4o-mini-fail": "cheap", "gpt-4o": "standard"})
    with traced("openai-v2", exporter="protobuf") as provider:
        tracer = provider.get_tracer("support-bot")
        app_span = {"routeledger.customer_id": "acme", "routeledger.feature": "support-chat",
                    "routeledger.intended_tier": "cheap"}  # fmt: skip
        with tracer.start_as_current_span("answer", attributes=app_span):
            with pytest.raises(openai.InternalServerError):
                client(fake_openai).chat.completions.create(
                    model="gpt-4o-mini-fail", messages=MESSAGES
                )
            client(fake_openai).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert provider.force_flush()

    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["attempts"] == 2
    assert body["fallback_rate"] == 1.0 and body["failover_rate"] == 1.0
    assert body["escalation_rate"] == 1.0
    assert body["intended_split"] == {"cheap": 1.0}
    assert body["served_split"] == {"standard": 1.0}
    models = by_model(body)
    served = models["gpt-4o" + DATE_SUFFIX]  # the response model, mapped by the request model
    assert (served["tier"], served["attempts"], served["served"]) == ("standard", 1, 1)
    failed = models["gpt-4o-mini-fail"]  # no response: the request model
    assert (failed["tier"], failed["attempts"], failed["served"]) == ("cheap", 1, 0)
    customers = metrics(http, engine, project, "customers")["customers"]
    assert [(c["customer_id"], c["requests"]) for c in customers] == [("acme", 1)]
    assert metrics(http, engine, project, feature="support-chat")["requests"] == 1
    assert stored_spans(project) == []  # assembled at once: nothing waits


def test_a_call_failing_after_the_clients_retries_is_one_failover_attempt(
    http, engine, fake_openai, project, exporter_env
):
    map_tiers(http, project, {"gpt-4o-mini-fail": "cheap"})
    calls_before = len(fake_openai.calls)
    with traced("openllmetry", exporter="json") as provider:
        with pytest.raises(openai.InternalServerError):
            client(fake_openai, max_retries=2).chat.completions.create(
                model="gpt-4o-mini-fail", messages=MESSAGES
            )
        assert provider.force_flush()
    assert len(fake_openai.calls) - calls_before == 3  # the client tried three times

    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["attempts"] == 1  # one span for the whole call
    assert body["failover_rate"] == 1.0 and body["failed"] == 1
    assert body["served_split"] == {}
    # No customer on a lone root call: the documented default, visible as such; the feature
    # is the service's name.
    customers = metrics(http, engine, project, "customers")["customers"]
    assert [(c["customer_id"], c["requests"]) for c in customers] == [("(unattributed)", 1)]
    assert metrics(http, engine, project, feature="support-bot")["requests"] == 1


def test_openllmetry_tokens_count_cached_tokens_apart(
    http, engine, fake_openai, project, exporter_env
):
    map_tiers(http, project, {"gpt-4o-mini": "cheap"})
    set_price(http, project, "gpt-4o-mini" + DATE_SUFFIX)
    with traced("openllmetry", exporter="protobuf") as provider:
        client(fake_openai).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert provider.force_flush()

    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["unpriced_requests"] == 0
    # 42 input tokens of which 10 cached: 32 at $1, 10 at $0.5, 7 output at $2 per million.
    uncached = PROMPT_TOKENS - CACHED_TOKENS
    expected = (uncached * 1 + CACHED_TOKENS * Decimal("0.5") + COMPLETION_TOKENS * 2) / 10**6
    assert Decimal(body["cost_usd"]) == expected


def test_streaming_with_usage_is_counted(http, engine, fake_openai, project, exporter_env):
    map_tiers(http, project, {"gpt-4o-mini": "cheap"})
    set_price(http, project, "gpt-4o-mini" + DATE_SUFFIX)
    with traced("openai-v2", exporter="json") as provider:
        stream = client(fake_openai).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert [c for c in stream]
        assert provider.force_flush()

    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["unpriced_requests"] == 0
    # openai-v2 reports no cached part: all 42 input tokens at $1, 7 output at $2.
    assert Decimal(body["cost_usd"]) == Decimal(PROMPT_TOKENS + COMPLETION_TOKENS * 2) / 10**6


def test_a_request_split_across_exports_is_one_request(
    http, engine, fake_openai, project, exporter_env
):
    map_tiers(http, project, {"gpt-4o-mini-fail": "cheap", "gpt-4o": "standard"})
    # One export per span, as each ends: the calls reach the API before their app span.
    with traced("openai-v2", exporter="protobuf", batch=False) as provider:
        tracer = provider.get_tracer("support-bot")
        with tracer.start_as_current_span("answer", attributes={"routeledger.feature": "chat"}):
            with pytest.raises(openai.InternalServerError):
                client(fake_openai).chat.completions.create(
                    model="gpt-4o-mini-fail", messages=MESSAGES
                )
            client(fake_openai).chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert len(stored_spans(project)) == 2  # waiting for their request span
            assert project.count_requests() == 0

    assert stored_spans(project) == []
    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["attempts"] == 2 and body["fallback_rate"] == 1.0


def test_re_exported_spans_are_counted_once(http, engine, fake_openai, project, live_api):
    map_tiers(http, project, {"gpt-4o-mini": "cheap"})
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    captured = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(captured))
    instrumentor = OpenAIv2()
    instrumentor.instrument(tracer_provider=provider)
    try:
        tracer = provider.get_tracer("support-bot")
        with tracer.start_as_current_span("answer"):
            client(fake_openai).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        instrumentor.uninstrument()
    call, app = captured.get_finished_spans()
    exporter = ProtobufSpanExporter(
        endpoint=f"{live_api.url}/v1/traces",
        headers={"Authorization": f"Bearer {project.ingest_key}"},
    )
    # The call alone twice (a retried export), then everything twice.
    for spans in ([call], [call], [call, app], [call, app]):
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()

    assert project.count_requests() == 1 and project.count_attempts() == 1
    assert metrics(http, engine, project)["requests"] == 1


def test_one_call_seen_by_two_instrumentations_counts_once(
    http, engine, fake_openai, project, exporter_env
):
    map_tiers(http, project, {"gpt-4o-mini": "cheap"})
    captured = InMemorySpanExporter()
    with traced("openai-v2", "openllmetry", capture=captured) as provider:
        tracer = provider.get_tracer("support-bot")
        with tracer.start_as_current_span("answer"):
            client(fake_openai).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert provider.force_flush()
    calls = [s for s in captured.get_finished_spans() if "gen_ai.request.model" in s.attributes]
    assert len(calls) == 2  # one call, two spans with one response id
    assert len({s.attributes["gen_ai.response.id"] for s in calls}) == 1

    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["attempts"] == 1


def test_an_unmapped_model_is_held_then_released_by_mapping_it(
    http, engine, fake_openai, project, exporter_env
):
    with traced("openllmetry") as provider:  # OpenLLMetry records the prompt by default
        tracer = provider.get_tracer("support-bot")
        with tracer.start_as_current_span("answer", attributes={"routeledger.feature": "chat"}):
            client(fake_openai).chat.completions.create(model="acme-mystery", messages=MESSAGES)
        assert provider.force_flush()

    held = http.get("/v1/model-tiers", params={"unmapped": "true"}, headers=auth(project.read_key))
    assert held.status_code == 200, held.text
    assert held.json() == {
        "held_requests": 1,
        "unmapped": [{"model": "acme-mystery", "requests": 1}],
    }
    assert project.count_requests() == 0
    spans = stored_spans(project)
    assert spans and not any(PROMPT in s or "gen_ai.input.messages" in s for s in spans)

    mapped = http.put(
        "/v1/model-tiers/acme-mystery", json={"tier": "premium"}, headers=auth(project.admin_key)
    )
    assert mapped.status_code == 200, mapped.text
    assert mapped.json()["released_requests"] == 1
    assert stored_spans(project) == []
    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["served_split"] == {"premium": 1.0}
    held = http.get("/v1/model-tiers", params={"unmapped": "true"}, headers=auth(project.read_key))
    assert held.json() == {"held_requests": 0, "unmapped": []}


def test_a_request_whose_parent_never_arrives_is_assembled_once_settled(
    http, engine, fake_openai, project, exporter_env
):
    map_tiers(http, project, {"gpt-4o-mini": "cheap"})
    with traced("openai-v2") as provider:
        tracer = provider.get_tracer("support-bot")
        app_span = tracer.start_span("answer")  # never ends, so never exported
        with trace.use_span(app_span, end_on_exit=False):
            client(fake_openai).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            client(fake_openai).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert provider.force_flush()
        assert len(stored_spans(project)) == 2 and project.count_requests() == 0

        run_settle(engine, now=utc_now() + timedelta(seconds=5))
        assert project.count_requests() == 0  # not quiet for long enough yet
        summary = run_settle(engine, now=utc_now() + timedelta(seconds=31))
        assert summary.requests >= 1

    assert stored_spans(project) == []
    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["attempts"] == 2


# --- what is refused --------------------------------------------------------------------


def post_traces(http, key: str, body: bytes, content_type: str = "application/x-protobuf"):
    return http.post(
        "/v1/traces", content=body, headers={**auth(key), "Content-Type": content_type}
    )


def test_refusals_are_clear_and_lose_nothing_else(http, project):
    key = project.ingest_key
    trace_id = otlp_spans.new_trace_id()
    good = otlp_spans.call(trace_id, otlp_spans.new_span_id(), routeledger__tier="cheap")
    absurd = otlp_spans.call(
        trace_id, otlp_spans.new_span_id(), routeledger__tier="cheap",
        gen_ai__usage__input_tokens=10**15,
    )  # fmt: skip

    response = post_traces(http, key, b"\x0a\xff\xff\xff")
    assert response.status_code == 400 and "protobuf" in response.json()["detail"]
    response = post_traces(http, key, b"{}", "text/plain")
    assert response.status_code == 415 and "application/x-protobuf" in response.json()["detail"]
    response = post_traces(http, key, b"\0" * (6 * 1024 * 1024))
    assert response.status_code == 413
    response = post_traces(http, key, otlp_spans.export(absurd).SerializeToString())
    assert response.status_code == 400
    assert "gen_ai.usage.input_tokens: 1000000000000000 is out of range" in response.text
    assert post_traces(http, "rl_unknown", b"").status_code == 401
    assert post_traces(http, project.read_key, b"").status_code == 403
    assert project.count_requests() == 0

    # The absurd span beside a good one: 200, the good one stored, the other counted.
    response = post_traces(http, key, otlp_spans.export(good, absurd).SerializeToString())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "gen_ai.usage.input_tokens" in answer.partial_success.error_message
    assert project.count_requests() == 1


def test_a_database_that_cannot_store_now_answers_503_with_retry_after(http, project):
    export = otlp_spans.export(
        otlp_spans.call(
            otlp_spans.new_trace_id(), otlp_spans.new_span_id(), routeledger__tier="cheap"
        )
    ).SerializeToString()
    with psycopg.connect(os.environ["DATABASE_URL"]) as blocker:
        blocker.execute("lock table otlp_spans in access exclusive mode")
        response = post_traces(http, project.ingest_key, export)
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0
    # The exporter's retry, once the database can take it.
    assert post_traces(http, project.ingest_key, export).status_code == 200
    assert project.count_requests() == 1


def test_otlp_json_is_read_like_protobuf(http, project):
    trace_id, app_id = otlp_spans.new_trace_id(), otlp_spans.new_span_id()
    export = otlp_spans.export(
        otlp_spans.span(trace_id, app_id, routeledger__customer_id="globex", end_ms=900),
        otlp_spans.call(trace_id, otlp_spans.new_span_id(), app_id, routeledger__tier="cheap"),
    )
    # OTLP/JSON: hex ids, int64 as strings (json_format writes them so too).
    body = json_format.MessageToDict(export)
    for span in body["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64decode(span[key]).hex()
    response = http.post("/v1/traces", json=body, headers=auth(project.ingest_key))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert project.count_requests() == 1 and project.count_attempts() == 1
    bad = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "not hex"}]}]}]}
    response = http.post("/v1/traces", json=bad, headers=auth(project.ingest_key))
    assert response.status_code == 400 and "traceId" in response.json()["detail"]
