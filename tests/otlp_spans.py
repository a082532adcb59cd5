"""Hand-built OTLP exports, for what real clients do not send (absurd counts, two traces
reporting one call, spans in a chosen order)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

START = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


def new_trace_id() -> bytes:
    return os.urandom(16)


def new_span_id() -> bytes:
    return os.urandom(8)


def _value(value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def span(
    trace_id: bytes,
    span_id: bytes,
    parent: bytes | None = None,
    *,
    start_ms: int = 0,
    end_ms: int = 100,
    error: bool = False,
    at: datetime = START,
    **attributes,
) -> Span:
    """A span; attribute names use "__" for "." (gen_ai__request__model)."""
    origin = int(at.timestamp()) * 1_000_000_000
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent or b"",
        name="span",
        start_time_unix_nano=origin + start_ms * 1_000_000,
        end_time_unix_nano=origin + end_ms * 1_000_000,
        attributes=[
            KeyValue(key=name.replace("__", "."), value=_value(value))
            for name, value in attributes.items()
        ],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def call(trace_id, span_id, parent=None, *, model="acme-small", **attributes) -> Span:
    """A model-call span with usage."""
    defaults = {
        "gen_ai__request__model": model,
        "gen_ai__provider__name": "acme",
        "gen_ai__usage__input_tokens": 1000,
        "gen_ai__usage__output_tokens": 500,
    }
    return span(trace_id, span_id, parent, **{**defaults, **attributes})


def export(*spans: Span, **resource) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    for name, value in {"service.name": "support-bot", **resource}.items():
        resource_spans.resource.attributes.add(key=name, value=_value(value))
    resource_spans.scope_spans.add().spans.extend(spans)
    return request
