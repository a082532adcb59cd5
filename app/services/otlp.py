"""OTLP GenAI traces (DESIGN.md "OTLP GenAI traces"): decode an export, keep from each span only
what assembly reads, and group the spans of a trace into requests. No database here:
app.services.traces stores, assembles and ingests.

Message content never leaves this module: a span is reduced to an allow-list of attributes
(model, usage, status, the `routeledger.*` fields and the identity fallbacks), so
`gen_ai.input.messages` and the like are dropped before anything is stored.
"""

from __future__ import annotations

import base64
import hashlib
import math
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status

from app.periods import MAX_FUTURE
from app.schemas import MAX_ATTEMPTS, MAX_STRING
from app.services.model_tiers import TierMap

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
UNATTRIBUTED = "(unattributed)"
MAX_TOKENS = 2**40  # the event schema's bound
# request_id = UUIDv5(this namespace, "<trace id hex>:<request span id hex>").
REQUEST_ID_NAMESPACE = uuid.UUID("5d0c3a57-5f0e-4a8e-9d7e-6f1c2b7a0e14")


class NotDecodable(ValueError):
    """400: the body is not an OTLP ExportTraceServiceRequest in its content type."""


class UnsupportedContentType(ValueError):
    """415: neither OTLP protobuf nor OTLP JSON."""


# --- decoding ---------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """The OTLP encoding named by a Content-Type header."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in (PROTOBUF, JSON):
        raise UnsupportedContentType(
            f"Content-Type must be {PROTOBUF} or {JSON} (OTLP/HTTP), not {kind or 'missing'!r}"
        )
    return kind


def decode_export(body: bytes, kind: str) -> ExportTraceServiceRequest:
    export = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            export.ParseFromString(body)
        except DecodeError as error:
            raise NotDecodable(f"body is not an OTLP protobuf trace export: {error}") from None
        return export
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise NotDecodable(f"body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise NotDecodable('body must be an OTLP/JSON object {"resourceSpans": [...]}')
    try:
        json_format.ParseDict(_ids_as_base64(value), export, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as error:
        raise NotDecodable(f"body is not an OTLP/JSON trace export: {error}") from None
    return export


_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _ids_as_base64(export: dict) -> dict:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping reads bytes as
    base64. Rewrites the ids of spans and their links in place."""
    for r, resource_spans in enumerate(_items(export, "resourceSpans", "resource_spans")):
        for s, scope_spans in enumerate(_items(resource_spans, "scopeSpans", "scope_spans")):
            for n, span in enumerate(_items(scope_spans, "spans")):
                where = f"resourceSpans[{r}].scopeSpans[{s}].spans[{n}]"
                _rewrite_ids(span, where)
                for k, link in enumerate(_items(span, "links")):
                    _rewrite_ids(link, f"{where}.links[{k}]")
    return export


def _items(parent: Any, *keys: str) -> list:
    if not isinstance(parent, dict):
        return []
    for key in keys:
        value = parent.get(key)
        if isinstance(value, list):
            return value
    return []


def _rewrite_ids(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        return
    for key in _ID_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value:
            try:
                item[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise NotDecodable(f"{where}.{key}: {value!r} is not hex") from None


def encode_response(kind: str, *, rejected_spans: int, error_message: str) -> bytes:
    """The ExportTraceServiceResponse, in the encoding of the request."""
    response = ExportTraceServiceResponse()
    if rejected_spans or error_message:
        response.partial_success.rejected_spans = rejected_spans
        response.partial_success.error_message = error_message
    if kind == PROTOBUF:
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()


# --- spans ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeRule:
    """How a `routeledger.*` (or identity) attribute is checked: `kind` is text, tier, score,
    millis or money."""

    kind: str
    required_text: bool = False


# The request fields an app can set, on the request span, an attempt span or the resource.
REQUEST_ATTRIBUTES: dict[str, AttributeRule] = {
    "routeledger.customer_id": AttributeRule("text", required_text=True),
    "routeledger.feature": AttributeRule("text", required_text=True),
    "routeledger.intended_tier": AttributeRule("tier"),
    "routeledger.user_tier": AttributeRule("text"),
    "routeledger.task_type": AttributeRule("text"),
    "routeledger.experiment.name": AttributeRule("text", required_text=True),
    "routeledger.experiment.arm": AttributeRule("text", required_text=True),
    "routeledger.router.strategy": AttributeRule("text"),
    "routeledger.router.version": AttributeRule("text"),
    "routeledger.router.confidence": AttributeRule("score"),
    "routeledger.router.latency_ms": AttributeRule("millis"),
    "routeledger.quality.score": AttributeRule("score"),
    "routeledger.revenue_usd": AttributeRule("money"),
}
# Standard identity attributes, customer fallbacks: not addressed to us, so a value that is
# not a usable id is passed over rather than refusing the span.
IDENTITY_ATTRIBUTES = ("enduser.id", "user.id")
REQUEST_MARKERS = ("routeledger.feature", "routeledger.customer_id")
ROUTER_FIELDS = tuple(
    (key, f"routeledger.router.{key}")
    for key in ("strategy", "version", "confidence", "latency_ms")
)
# Event fields that are a request field as it is.
PLAIN_FIELDS = tuple(
    (key, f"routeledger.{key}")
    for key in ("user_tier", "task_type", "intended_tier", "revenue_usd")
)

MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
PROVIDERS = ("gen_ai.provider.name", "gen_ai.system")
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
RESPONSE_ID = "gen_ai.response.id"
ERROR_TYPE = "error.type"
TIER = "routeledger.tier"
SERVICE_NAME = "service.name"

TOKEN_ATTRIBUTES = (INPUT_TOKENS, OUTPUT_TOKENS, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS)
# Identity and service name: fallbacks for customer and feature, not addressed to us.
FALLBACK_ATTRIBUTES = frozenset({*IDENTITY_ATTRIBUTES, SERVICE_NAME})
ATTEMPT_ATTRIBUTES = frozenset(
    {MODEL, RESPONSE_MODEL, *PROVIDERS, INPUT_TOKENS, OUTPUT_TOKENS, CACHE_READ_TOKENS,
     CACHE_WRITE_TOKENS, RESPONSE_ID, ERROR_TYPE, TIER}
)  # fmt: skip
SPAN_ATTRIBUTES = ATTEMPT_ATTRIBUTES | set(REQUEST_ATTRIBUTES) | set(IDENTITY_ATTRIBUTES)
# What a request field can come from: also all a resource is read for.
REQUEST_FIELD_NAMES = FALLBACK_ATTRIBUTES | frozenset(REQUEST_ATTRIBUTES)
_UNSUPPORTED = object()  # an array, key-value list or bytes value: never one of ours
_SCALARS = {"string_value", "bool_value", "int_value", "double_value"}
# The kind each attribute read is sent as when it is what we expect. _wanted reads that kind
# at once and asks the value which kind it holds only when the read finds nothing (an empty
# or zero value, or another kind): one call into upb per attribute instead of three.
_KINDS = {"tier": "string_value", "text": "string_value", "money": "string_value",
          "score": "double_value", "millis": "double_value"}  # fmt: skip
SPAN_KINDS = {
    **dict.fromkeys(SPAN_ATTRIBUTES, "string_value"),
    **dict.fromkeys(TOKEN_ATTRIBUTES, "int_value"),
    **{name: _KINDS[rule.kind] for name, rule in REQUEST_ATTRIBUTES.items()},
}  # fmt: skip
RESOURCE_KINDS = {name: SPAN_KINDS.get(name, "string_value") for name in REQUEST_FIELD_NAMES}


@dataclass(slots=True)
class SpanRecord:
    """What assembly needs of one span: its checked request fields and, for a model call, its
    attempt (`fields` is both, as stored while the span waits)."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    parent_is_remote: bool
    start_ns: int
    end_ns: int
    attempt: dict[str, Any] | None
    request_fields: dict[str, Any]
    resource: dict[str, Any]
    received_at: datetime
    held: bool = False
    is_attempt: bool = field(init=False)
    marks_request: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_attempt = self.attempt is not None
        self.marks_request = not self.request_fields.keys().isdisjoint(REQUEST_MARKERS)

    @property
    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"request": self.request_fields} if self.request_fields else {}
        if self.attempt is not None:
            fields["attempt"] = self.attempt
        return fields


class SpanRejected(ValueError):
    """A span that is a model call, or carries `routeledger.*` fields, and cannot be used."""


@dataclass
class ExtractedSpans:
    records: list[SpanRecord] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def extract_spans(
    export: ExportTraceServiceRequest, *, tier_ranks: Mapping[str, int], now: datetime
) -> ExtractedSpans:
    """Every span with usable ids as a SpanRecord, except those refused (each with a message
    that names the span and the attribute). Spans that are not model calls are kept as
    possible request spans; they are never refused for what they do not carry."""
    result = ExtractedSpans()
    latest_start_ns = _ns(now + MAX_FUTURE)
    for resource_spans in export.resource_spans:
        resource_error = None
        try:
            resource = _checked_fields(
                _wanted(resource_spans.resource.attributes, RESOURCE_KINDS), tier_ranks
            )
        except SpanRejected as error:
            resource, resource_error = {}, f"resource: {error}"
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                try:
                    record = _record(span, resource, tier_ranks, now, latest_start_ns)
                except SpanRejected as error:
                    result.rejected.append(f"span {span.span_id.hex() or '?'}: {error}")
                    continue
                if record is None:
                    continue
                if resource_error is not None and (record.is_attempt or record.request_fields):
                    result.rejected.append(f"span {span.span_id.hex()}: {resource_error}")
                    continue
                result.records.append(record)
    return result


_NO_TRACE, _NO_SPAN = bytes(16), bytes(8)
_REMOTE_PARENT = (
    SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
)


def _record(span, resource, tier_ranks, now, latest_start_ns) -> SpanRecord | None:
    attributes = _wanted(span.attributes, SPAN_KINDS)
    is_attempt = MODEL in attributes
    trace_id, span_id, parent_id = span.trace_id, span.span_id, span.parent_span_id
    valid_ids = (
        len(trace_id) == 16
        and trace_id != _NO_TRACE
        and len(span_id) == 8
        and span_id != _NO_SPAN
        and len(parent_id) in (0, 8)
    )
    request_fields = _checked_fields(attributes, tier_ranks)
    if not valid_ids:
        if is_attempt or request_fields:
            raise SpanRejected("trace_id must be 16 bytes and span_id 8 bytes, not all zero")
        return None
    start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
    attempt = None
    if is_attempt:
        if start_ns == 0 or end_ns < start_ns:
            raise SpanRejected("a model call span needs a start time and an end after it")
        if start_ns > latest_start_ns:
            raise SpanRejected("starts more than a day in the future")
        attempt = _attempt(span, attributes, tier_ranks, end_ns - start_ns)
    return SpanRecord(  # positionally: a third cheaper than by keyword, for every span
        trace_id,
        span_id,
        parent_id or None,
        span.flags & _REMOTE_PARENT == _REMOTE_PARENT,
        start_ns,
        end_ns,
        attempt,
        request_fields,
        resource,
        now,
    )


def _wanted(attributes, kinds: Mapping[str, str]) -> dict[str, Any]:
    """The values of the attributes named in `kinds`, whatever kind each was sent as."""
    found = {}
    for attribute in attributes:
        key = attribute.key
        kind = kinds.get(key)
        if kind is None:
            continue
        value = attribute.value
        read = getattr(value, kind)
        if not read:
            kind = value.WhichOneof("value")
            if kind is None:
                continue
            read = getattr(value, kind) if kind in _SCALARS else _UNSUPPORTED
        found[key] = read
    return found


def _attempt(
    span, attributes: dict[str, Any], tier_ranks: Mapping[str, int], duration_ns: int
) -> dict[str, Any]:
    get = attributes.get
    request_model = _text(attributes, MODEL, required=True)
    input_tokens = _tokens(INPUT_TOKENS, get(INPUT_TOKENS, 0))
    cache_read = _tokens(CACHE_READ_TOKENS, get(CACHE_READ_TOKENS, 0))
    cache_write = _tokens(CACHE_WRITE_TOKENS, get(CACHE_WRITE_TOKENS, 0))
    # OTel counts cached tokens inside the input tokens; the event counts them apart.
    if cache_read + cache_write > input_tokens:
        raise SpanRejected(
            f"{CACHE_READ_TOKENS} + {CACHE_WRITE_TOKENS} ({cache_read + cache_write}) exceed "
            f"{INPUT_TOKENS} ({input_tokens}), which include them"
        )
    error_type = get(ERROR_TYPE)
    reason = error_type[:MAX_STRING] if isinstance(error_type, str) and error_type else None
    if span.status.code == Status.STATUS_CODE_ERROR:
        status = "timeout" if reason and "timeout" in reason.lower() else "error"
    else:
        status = "ok"
    response_id = get(RESPONSE_ID)
    tier = get(TIER)
    if tier is not None:
        tier = _tier(TIER, tier, tier_ranks)
    provider_name = PROVIDERS[0] if PROVIDERS[0] in attributes else PROVIDERS[1]
    return {
        "request_model": request_model,
        "model": _text(attributes, RESPONSE_MODEL) or request_model,
        "provider": _text(attributes, provider_name),
        "input_tokens": input_tokens - cache_read - cache_write,
        "output_tokens": _tokens(OUTPUT_TOKENS, get(OUTPUT_TOKENS, 0)),
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "latency_ms": duration_ns / 1e6,
        "status": status,
        "reason": reason,
        # A blank id names no call: two calls reporting one are two calls.
        "response_id": (
            response_id if isinstance(response_id, str) and response_id.strip() else None
        ),
        "tier": tier,
    }


def _text(attributes: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = attributes.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or (required and not value) or len(value) > MAX_STRING:
        raise SpanRejected(
            f"{name}: must be a{' non-empty' if required else ''} string of at most "
            f"{MAX_STRING} characters"
        )
    return value or None


def _tokens(name: str, value: Any) -> int:
    if type(value) is not int:
        raise SpanRejected(f"{name}: must be an integer")
    if not 0 <= value <= MAX_TOKENS:
        raise SpanRejected(f"{name}: {value} is out of range (0 to {MAX_TOKENS})")
    return value


def _tier(name: str, value: Any, tier_ranks: Mapping[str, int]) -> str:
    if value not in tier_ranks:
        known = ", ".join(sorted(tier_ranks))
        raise SpanRejected(f"{name}: unknown tier {value!r} (known: {known})")
    return value


def _checked_fields(attributes: dict[str, Any], tier_ranks: Mapping[str, int]) -> dict[str, Any]:
    """The request fields among `attributes`, checked like the event's fields; identity
    attributes that are not usable ids are passed over."""
    if attributes.keys().isdisjoint(REQUEST_FIELD_NAMES):
        return {}
    fields: dict[str, Any] = {}
    for name, value in attributes.items():
        rule = REQUEST_ATTRIBUTES.get(name)
        if rule is not None:
            if rule.kind == "text" and type(value) is str and 0 < len(value) <= MAX_STRING:
                fields[name] = value  # the common case, without a call
            else:
                fields[name] = _checked(name, value, rule, tier_ranks)
        elif name in FALLBACK_ATTRIBUTES:
            if isinstance(value, str) and 0 < len(value) <= MAX_STRING:
                fields[name] = value
    if ("routeledger.experiment.name" in fields) != ("routeledger.experiment.arm" in fields):
        raise SpanRejected("routeledger.experiment.name and routeledger.experiment.arm go together")
    return fields


def _checked(name: str, value: Any, rule: AttributeRule, tier_ranks: Mapping[str, int]) -> Any:
    if rule.kind == "text":
        if not isinstance(value, str) or len(value) > MAX_STRING:
            raise SpanRejected(f"{name}: must be a string of at most {MAX_STRING} characters")
        if rule.required_text and not value:
            raise SpanRejected(f"{name}: must not be empty")
        return value
    if rule.kind == "tier":
        return _tier(name, value, tier_ranks)
    if rule.kind == "money":
        try:
            amount = Decimal(value) if isinstance(value, str | int) else Decimal(repr(value))
        except (InvalidOperation, TypeError):
            amount = None
        if isinstance(value, bool) or amount is None or not amount.is_finite() or amount < 0:
            raise SpanRejected(f"{name}: must be a non-negative decimal string or number")
        return str(amount)
    number_ok = isinstance(value, int | float) and not isinstance(value, bool)
    if (
        not number_ok
        or not math.isfinite(value)
        or value < 0
        or (rule.kind == "score" and value > 1)
    ):
        bounds = "a number in [0, 1]" if rule.kind == "score" else "a non-negative number"
        raise SpanRejected(f"{name}: must be {bounds}")
    return value


def _ns(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000_000 + at.microsecond * 1000


# --- assembly ---------------------------------------------------------------------------


_NAMESPACE_BYTES = REQUEST_ID_NAMESPACE.bytes


def request_id_of(trace_id: bytes, request_span_id: bytes, chunk: int = 0) -> uuid.UUID:
    name = f"{trace_id.hex()}:{request_span_id.hex()}" + (f":{chunk}" if chunk else "")
    # uuid.uuid5's own steps, the namespace's bytes taken once: uuid5 imports hashlib and
    # converts its namespace on every call, a third of its time (once per request here).
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


@dataclass
class Draft:
    """The attempt spans of one request, in the order they ended, under its request span."""

    trace_id: bytes
    request_span_id: bytes
    request_span: SpanRecord | None
    attempts: list[SpanRecord]
    # Every attempt span it accounts for, also those reporting a call already counted: the
    # request fields of each count (a wrapper's report names the request, the client's
    # inside it has the usage).
    reports: list[SpanRecord]
    request_id: uuid.UUID

    @property
    def span_ids(self) -> list[bytes]:
        return [report.span_id for report in self.reports]

    def unmapped(self, tier_map: TierMap) -> list[SpanRecord]:
        return [a for a in self.attempts if _tier_of(a, tier_map) is None]

    def events(self, tier_map: TierMap, *, already_counted: set[str]) -> list[dict[str, Any]]:
        """The request as events of the event schema: one, or one per 20 attempts when the
        request span holds more model calls than an event may (UUIDv5 ids suffixed by the
        chunk). Attempts whose response id is counted already (app.services.traces) are left out."""
        attempts = self.attempts
        if already_counted:
            attempts = [a for a in attempts if a.attempt["response_id"] not in already_counted]
        if len(attempts) <= MAX_ATTEMPTS:  # one event, or none
            return [self._event(0, attempts, tier_map)] if attempts else []
        return [
            self._event(chunk, attempts[start : start + MAX_ATTEMPTS], tier_map)
            for chunk, start in enumerate(range(0, len(attempts), MAX_ATTEMPTS))
        ]

    def _event(self, chunk: int, attempts: list[SpanRecord], tier_map: TierMap) -> dict:
        # The request span's fields, then its attempts', then the resource's: the first
        # source that has a field gives it (so they are laid over each other in reverse).
        fields = dict((self.request_span or attempts[0]).resource)
        for report in reversed(self.reports):
            fields.update(report.request_fields)
        if self.request_span is not None:
            fields.update(self.request_span.request_fields)
        get = fields.get
        request_id = (
            self.request_id
            if chunk == 0
            else request_id_of(self.trace_id, self.request_span_id, chunk)
        )
        # Text fields are never empty once checked (_checked_fields), so `or` picks the
        # first source present. Fields without a value are left out, as an app leaves them
        # out of its events (validation takes a quarter less time than over nulls).
        event = {
            "request_id": request_id,  # a UUID as it is: no text to format and parse again
            "timestamp": _utc(min(a.start_ns for a in attempts)),
            "customer_id": (
                get("routeledger.customer_id") or get("enduser.id") or get("user.id")
                or UNATTRIBUTED
            ),
            "feature": get("routeledger.feature") or get(SERVICE_NAME) or UNATTRIBUTED,
            "attempts": [_event_attempt(a, tier_map) for a in attempts],
            "metadata": {
                "otel_trace_id": self.trace_id.hex(),
                "otel_span_id": self.request_span_id.hex(),
            },
        }  # fmt: skip
        for key, name in PLAIN_FIELDS:
            if name in fields:
                event[key] = fields[name]
        router = {key: fields[name] for key, name in ROUTER_FIELDS if name in fields}
        if router:
            event["router"] = router
        if "routeledger.experiment.name" in fields:
            event["experiment"] = {
                "name": fields["routeledger.experiment.name"],
                "arm": get("routeledger.experiment.arm"),
            }
        if "routeledger.quality.score" in fields:
            event["quality"] = {"score": fields["routeledger.quality.score"]}
        return without_once_fields(event) if chunk else event


# What a request counts once, however many consecutive requests hold its calls: its revenue
# (summed per customer) and its quality score (a mean over requests) go on its first only.
ONCE_PER_REQUEST = ("revenue_usd", "quality")


def without_once_fields(event: dict[str, Any]) -> dict[str, Any]:
    """The event of a request's later chunk: without what its first chunk counts."""
    return {key: value for key, value in event.items() if key not in ONCE_PER_REQUEST}


def _tier_of(span: SpanRecord, tier_map: TierMap) -> str | None:
    attempt = span.attempt
    return attempt["tier"] or tier_map.tier_of(attempt["model"], attempt["request_model"])


def _event_attempt(span: SpanRecord, tier_map: TierMap) -> dict[str, Any]:
    a = span.attempt
    attempt = {
        "model": a["model"],
        "tier": _tier_of(span, tier_map),
        "input_tokens": a["input_tokens"],
        "output_tokens": a["output_tokens"],
        "cache_read_tokens": a["cache_read_tokens"],
        "cache_write_tokens": a["cache_write_tokens"],
        "latency_ms": a["latency_ms"],
        "status": a["status"],
    }
    if a["provider"] is not None:
        attempt["provider"] = a["provider"]
    if a["reason"] is not None:
        attempt["reason"] = a["reason"]
    return attempt


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def due_drafts(
    spans: Mapping[bytes, SpanRecord],
    *,
    quiet: bool,
    held_request_ids: set[uuid.UUID] = frozenset(),
) -> Iterator[Draft]:
    """The requests of one trace (its spans by id) that can be assembled now: those whose
    request span has arrived (or is known to be the last local one), those already held, and
    every one when the trace is `quiet` (nothing arrived for the settle time)."""
    groups: dict[bytes, list[SpanRecord]] = {}
    undecided: set[bytes] = set()
    for span in spans.values():
        if span.is_attempt:
            request_span_id, decided = _request_span_of(span, spans)
            groups.setdefault(request_span_id, []).append(span)
            if not decided:
                undecided.add(request_span_id)
    for request_span_id, attempts in groups.items():
        trace_id = attempts[0].trace_id
        request_id = request_id_of(trace_id, request_span_id)
        if not (quiet or request_span_id not in undecided or request_id in held_request_ids):
            continue
        counted = attempts
        if len(attempts) > 1:
            attempts.sort(key=_END_ORDER)
            counted = _one_report_per_call(attempts)
        # Positionally, in the order of its fields: by keyword it costs twice as much.
        yield Draft(
            trace_id,
            request_span_id,
            spans.get(request_span_id),
            counted,
            attempts,
            request_id,
        )


def _one_report_per_call(attempts: list[SpanRecord]) -> list[SpanRecord]:
    """The attempts (in the order they ended) with one report per model call. Two
    instrumentations report one call as two spans: with the same `gen_ai.response.id`, or (a
    failed call has none, nor has every streamed one) the one nested right inside the other,
    of the same model, as a wrapper's instrumentation nests the client's. Each call counts
    once, by its fullest report (a response id, then usage, then cache counts)."""
    order = {a.span_id: position for position, a in enumerate(attempts)}
    response_ids = [a.attempt["response_id"] for a in attempts if a.attempt["response_id"]]
    if len(set(response_ids)) == len(response_ids) and not any(
        a.parent_span_id in order for a in attempts
    ):
        return attempts  # the usual case: calls side by side, each reported once
    call_of = {a.span_id: a.span_id for a in attempts}  # span id: its call's first report

    def call(span_id: bytes) -> bytes:
        while call_of[span_id] != span_id:
            span_id = call_of[span_id]
        return span_id

    def same_call(one: SpanRecord, other: SpanRecord) -> None:
        first, second = sorted((call(one.span_id), call(other.span_id)), key=order.__getitem__)
        call_of[second] = first

    by_response: dict[str, SpanRecord] = {}
    nested: dict[bytes, list[SpanRecord]] = {}
    for span in attempts:
        response_id = span.attempt["response_id"]
        if response_id is not None:
            same_call(by_response.setdefault(response_id, span), span)
        if span.parent_span_id in order:
            nested.setdefault(span.parent_span_id, []).append(span)
    for parent_id, children in nested.items():
        parent = attempts[order[parent_id]]
        same_model = [
            c for c in children if c.attempt["request_model"] == parent.attempt["request_model"]
        ]
        if len(same_model) == 1:  # a wrapper of one call; around several, a call of its own
            same_call(parent, same_model[0])
    reports: dict[bytes, list[SpanRecord]] = {}
    for span in attempts:
        reports.setdefault(call(span.span_id), []).append(span)
    return [max(group, key=report_fullness) for group in reports.values()]


def report_fullness(span: SpanRecord) -> tuple[bool, bool, bool]:
    """How full a report of a call is, to pick one of two: a response id, then usage, then
    cache counts."""
    a = span.attempt
    cached = a["cache_read_tokens"] + a["cache_write_tokens"]
    return (
        a["response_id"] is not None,
        a["input_tokens"] + a["output_tokens"] + cached > 0,
        cached > 0,
    )


_END_ORDER = attrgetter("end_ns", "span_id")


def _request_span_of(span: SpanRecord, by_id: Mapping[bytes, SpanRecord]) -> tuple[bytes, bool]:
    """The id of the attempt's request span, and whether that is decided: the nearest
    ancestor marked with routeledger.feature or .customer_id that is not a model call itself;
    without one, the parent of the outermost attempt span (a root attempt is its own
    request). Undecided while an ancestor
    has not arrived, or when the outermost attempt's parent is in another process."""
    parent = by_id.get(span.parent_span_id) if not span.parent_is_remote else None
    if parent is not None and parent.marks_request and not parent.is_attempt:
        return span.parent_span_id, True  # the usual case: a call right under its request
    outermost = current = span
    visited = {span.span_id}
    while True:
        parent_id = current.parent_span_id
        if parent_id is None or current.parent_is_remote:
            decided = not (current is outermost and current.parent_is_remote)
            return outermost.parent_span_id or outermost.span_id, decided
        parent = by_id.get(parent_id)
        if parent is None or parent_id in visited:
            return outermost.parent_span_id or outermost.span_id, False
        visited.add(parent_id)
        if parent.is_attempt:
            # A call around this one, even one naming the request (a wrapper's report of
            # the same call): its request is this one's.
            outermost = parent
        elif parent.marks_request:
            return parent_id, True
        current = parent
