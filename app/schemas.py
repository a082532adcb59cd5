"""Pydantic models of the HTTP contract (DESIGN.md): request bodies and answers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from app.periods import EARLIEST, LATEST
from app.vocabulary import (
    ALERT_METRICS,
    ALERT_STATES,
    ATTEMPT_STATUSES,
    EVIDENCE_SOURCES,
    KEY_SCOPES,
)

MAX_STRING = 200
MAX_ATTEMPTS = 20
MAX_BATCH_EVENTS = 1000
MAX_METADATA_BYTES = 8 * 1024
# Deeper than anyone's metadata needs; JSON encoders stop far deeper (orjson at 255).
MAX_METADATA_DEPTH = 32
# Money: at most this many USD, and this many decimal places (PostgreSQL's NUMERIC and any
# spreadsheet hold them; an exponent of thousands would not).
MAX_USD = Decimal(10) ** 12
MAX_DECIMAL_PLACES = 30
MAX_INT4 = 2**31 - 1
MAX_ID = 2**63 - 1


# PostgreSQL's text (and jsonb) cannot hold a NUL.
_NUL_MESSAGE = "must not contain a NUL character"


# Checked as patterns, in pydantic's compiled core (a Python validator on every text field
# of every event cost ingest about a tenth of its time); describe_errors words a mismatch.
NO_NUL = r"^[^\x00]*$"
# Control characters, C0 and C1, and the Unicode line and paragraph separators: Python's
# email package takes U+0085, U+2028 and U+2029 for line breaks too.
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
_PATTERN_MEANINGS = {
    NO_NUL: _NUL_MESSAGE,
    NO_CONTROL: "must not contain control characters (line breaks, tabs, NUL)",
}
Text = Annotated[StrictStr, Field(max_length=MAX_STRING, pattern=NO_NUL)]
RequiredText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_STRING, pattern=NO_NUL)]
# A name (a feature, a model) and a stored row's id as the API takes them in its paths: the
# dashboard's forms take them alike.
NAME_VALUE = TypeAdapter(RequiredText)
ID_VALUE = TypeAdapter(Annotated[StrictInt, Field(ge=1, le=MAX_ID)])
# A name shown in emails (rule names, scopes): printable text only. Names reach email
# headers and subjects, where a line break would start a new header.
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_STRING, pattern=NO_CONTROL)]
TokenCount = Annotated[StrictInt, Field(ge=0, le=2**40)]
# A latency: at most about eleven days. NaN and infinities are refused by the models that use
# these (Strict's allow_inf_nan=False). A strict float takes a JSON integer too (as a float)
# and answers a wrong type as a union of StrictFloat and StrictInt did; its range is checked
# in pydantic's core, where the union's was a Python call per value.
Millis = Annotated[float, Field(strict=True, ge=0, le=10**9)]
Score = Annotated[float, Field(strict=True, ge=0, le=1)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT4)]


def _decimal_input(value: Any) -> Any:
    # A decimal string or a JSON number; never a bool.
    if isinstance(value, bool):
        raise ValueError("must be a decimal string or a number")
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def _money_input(value: Any) -> Any:
    # Money is a decimal string (DESIGN.md), or a whole number. A JSON number with a fraction
    # has been read as a binary float, whose digits past the fifteenth need not be the ones
    # sent: taking it would store a figure the client never sent.
    if isinstance(value, bool | float):
        raise ValueError(
            'must be a decimal string, e.g. "0.0042" (a number with a fraction is read as a '
            "binary float, which does not keep every digit)"
        )
    # Decimal() would also read "1_000" and " 1 ": not how an amount is written.
    if isinstance(value, str) and ("_" in value or value != value.strip()):
        raise ValueError('must be a decimal string, e.g. "0.0042", without spaces or "_"')
    return value


# Normalizing in this context never rounds (the default context keeps 28 digits, so a longer
# amount would be judged by a rounded copy of itself).
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _bounded(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value.copy_abs() >= MAX_USD:
        raise ValueError(f"must be less than {MAX_USD:,} in size")
    if -value.normalize(_EXACT).as_tuple().exponent > MAX_DECIMAL_PLACES:
        raise ValueError(f"must have at most {MAX_DECIMAL_PLACES} decimal places")
    return value


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must not be negative")
    return value


# USD, refunds (negative amounts) included.
SignedMoney = Annotated[Decimal, BeforeValidator(_money_input), AfterValidator(_bounded)]
Money = Annotated[SignedMoney, AfterValidator(_non_negative)]
MoneyOrNone = Money | None


def _timestamp_text(value: Any) -> Any:
    # A datetime comes only from the service's own callers (the OTLP door): JSON has none.
    # A string starts with its date: pydantic would also read digits alone as Unix time.
    if (isinstance(value, str) and value[4:5] == "-") or isinstance(value, datetime):
        return value
    raise ValueError("must be an RFC 3339 string with an offset, e.g. 2026-11-22T10:15:30Z")


def _in_range(value: datetime) -> datetime:
    try:
        at = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not EARLIEST <= at < LATEST:
        raise ValueError(f"must be from {EARLIEST:%Y} to before {LATEST:%Y}")
    return at


Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text), AfterValidator(_in_range)]


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    """At most MAX_METADATA_DEPTH levels, no NUL in any string, only finite numbers; walked
    without recursion, so any depth the parser accepted is judged. An integer beyond 64 bits
    becomes a float, as orjson reads one, whichever parser read the body."""
    pending = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
        children = node.items() if isinstance(node, dict) else enumerate(node)
        # Text first and NUL looked for inline: most metadata is a flat object of strings,
        # walked for every event.
        for key, child in children:
            if isinstance(key, str) and "\x00" in key:
                raise ValueError(_NUL_MESSAGE)
            if isinstance(child, str):
                if "\x00" in child:
                    raise ValueError(_NUL_MESSAGE)
            elif isinstance(child, dict | list):
                pending.append((child, depth + 1))
            elif isinstance(child, float) and not math.isfinite(child):
                raise ValueError("must hold finite numbers only")
            elif isinstance(child, int) and not MIN_JSON_INT <= child <= MAX_JSON_INT:
                node[key] = _as_float(child)
    return value


# The integers orjson reads as integers; it reads any other as a float.
MIN_JSON_INT, MAX_JSON_INT = -(2**63), 2**64 - 1


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError("must hold finite numbers only") from None


Metadata = Annotated[dict[str, Any], AfterValidator(_metadata)]


def field_path(loc: Iterable[Any], *, whole: str) -> str:
    """`attempts[0].tier`: a validation error's location; `whole` names an empty one."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or whole


_REQUEST_PARTS = ("body", "path", "query", "header", "cookie")


def describe_errors(errors: Iterable[dict], *, whole: str) -> str:
    """`field: message; ...` for pydantic's errors, each field named by its path (without
    FastAPI's `body`, `path` or `query` at its root, or validators' names); `whole` names the
    thing validated."""
    parts = []
    for item in errors:
        loc = list(item["loc"])
        if loc and loc[0] in _REQUEST_PARTS:
            loc = loc[1:]
        loc = [p for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
        # A model's extra field, and a dataclass's (the event's parts).
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = "unknown field"
        elif item["type"] in ("model_type", "dataclass_type"):
            message = "must be a JSON object"  # pydantic's names the Python class
        else:
            pattern = (item.get("ctx") or {}).get("pattern")
            message = _PATTERN_MEANINGS.get(pattern, item["msg"])
        parts.append(f"{field_path(loc, whole=whole)}: {message}")
    return "; ".join(parts)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# The event's parts are pydantic dataclasses with slots, not models: ingest builds four or
# five per event, and a model instance costs twice as much to validate (about a fifth of
# ingest's own time); each is validated through a TypeAdapter (EVENT, INGEST_BATCH).
_event_part = pydantic_dataclass(
    config=ConfigDict(extra="forbid", allow_inf_nan=False), frozen=True, slots=True, kw_only=True
)


@_event_part
class Router:
    strategy: Text | None = None
    version: Text | None = None
    confidence: Score | None = None
    latency_ms: Millis | None = None


@_event_part
class Experiment:
    name: RequiredText
    arm: RequiredText


@_event_part
class Attempt:
    model: RequiredText
    provider: Text | None = None
    tier: RequiredText
    input_tokens: TokenCount
    output_tokens: TokenCount
    cache_read_tokens: TokenCount = 0
    cache_write_tokens: TokenCount = 0
    cost_usd: MoneyOrNone = None
    latency_ms: Millis | None = None
    status: Literal[ATTEMPT_STATUSES]
    reason: Text | None = None


@_event_part
class Quality:
    score: Score
    source: Text | None = None


@_event_part
class Event:
    """One routed request, event schema v1."""

    request_id: UUID
    timestamp: Timestamp
    customer_id: RequiredText
    feature: RequiredText
    user_tier: Text | None = None
    task_type: Text | None = None
    intended_tier: Text | None = None
    router: Router | None = None
    experiment: Experiment | None = None
    attempts: Annotated[list[Attempt], Field(min_length=1, max_length=MAX_ATTEMPTS)]
    quality: Quality | None = None
    revenue_usd: MoneyOrNone = None
    metadata: Metadata | None = None


@_event_part
class IngestBatch:
    requests: Annotated[list[Event], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


EVENT = TypeAdapter(Event)
INGEST_BATCH = TypeAdapter(IngestBatch)


class ItemError(BaseModel):
    index: int
    request_id: str | None = None
    error: str


class IngestResult(BaseModel):
    accepted: int
    duplicates: int
    errors: list[ItemError]


class FeedbackItem(Strict):
    request_id: UUID
    score: Score
    source: Text | None = None
    comment: Annotated[StrictStr, Field(max_length=2000, pattern=NO_NUL)] | None = None


class FeedbackBatch(Strict):
    feedback: Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class FeedbackResult(BaseModel):
    accepted: int = Field(description="items stored now")
    held: int = Field(
        0, description="items whose request is not stored yet: applied when it arrives"
    )
    duplicates: int = Field(0, description="items stored (or held) before: stored once")
    errors: list[ItemError]


class HeldFeedback(BaseModel):
    held: int = Field(description="feedback items waiting for their request")
    oldest_received_at: datetime | None
    hold_days: int = Field(description="how long an item waits before it is dropped")
    hold_max: int = Field(description="how many items the project may have waiting")


PricePerMtok = Money


class PriceIn(Strict):
    model: RequiredText
    provider: Text | None = None
    input_per_mtok: PricePerMtok
    output_per_mtok: PricePerMtok
    cache_read_per_mtok: PricePerMtok | None = None
    cache_write_per_mtok: PricePerMtok | None = None
    effective_from: Timestamp


class PricesIn(Strict):
    prices: Annotated[list[PriceIn], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class PriceOut(BaseModel):
    id: int
    model: str
    provider: str | None
    input_per_mtok: str
    output_per_mtok: str
    cache_read_per_mtok: str | None
    cache_write_per_mtok: str | None
    effective_from: datetime
    source: str
    scope: Literal["project", "catalog"]


class PriceList(BaseModel):
    prices: list[PriceOut]
    catalog_version: str | None = Field(description="genai-prices version of the newest snapshot")


class PolicyIn(Strict):
    split: dict[str, Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)]]
    effective_from: Timestamp | None = None


class PolicyOut(BaseModel):
    feature: str
    split: dict[str, float]
    effective_from: datetime
    history: list[PolicyHistoryEntry] = []


class PolicyHistoryEntry(BaseModel):
    split: dict[str, float]
    effective_from: datetime


class RevenueRecordIn(Strict):
    customer_id: RequiredText
    period_start: Timestamp
    period_end: Timestamp
    amount_usd: SignedMoney
    record_id: RequiredText | None = Field(
        default=None,
        description="your id of the record (an invoice number, say): a record with an id "
        "already stored is a duplicate, stored once, so a retried call never counts twice",
    )


class RevenueIn(Strict):
    records: Annotated[list[RevenueRecordIn], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class RevenueResult(BaseModel):
    accepted: int
    duplicates: int = Field(description="records whose record_id was stored before")


class KeyIn(Strict):
    name: RequiredText
    scopes: Annotated[list[Literal[KEY_SCOPES]], Field(min_length=1)]
    rate_limit_per_second: Annotated[StrictFloat | StrictInt, Field(gt=0, le=10**6)] | None = None


class KeyOut(BaseModel):
    id: int
    name: str
    display_prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret, shown once")


class ErrorBody(BaseModel):
    detail: str


PolicyOut.model_rebuild()


# --- metrics (issue 4) ---------------------------------------------------------------------

MoneyText = Annotated[str, Field(description="USD as a decimal string, full precision")]


class ModelFiguresOut(BaseModel):
    model: str
    tier: str
    attempts: int = Field(description="attempts on this model and tier")
    served: int = Field(description="requests this model and tier served")
    cost_usd: MoneyText | None = Field(
        description="sum of the known costs of its attempts; null when none has a price"
    )
    unpriced_attempts: int
    mean_quality: float | None


class RoutingMetricsOut(BaseModel):
    start: datetime
    end: datetime
    requests: int
    attempts: int
    failed: int
    fallback_rate: float | None
    escalation_rate: float | None
    failover_rate: float | None
    intended_split: dict[str, float]
    served_split: dict[str, float] = Field(description="over requests that did not fail")
    policy_split: dict[str, float] | None = Field(
        description="the policies the requests were held to (each request to its feature's "
        "policy in force at its time), weighted by requests"
    )
    policy_deviation: float | None
    cost_usd: MoneyText
    cost_is_lower_bound: bool = Field(description="true while some requests are unpriced")
    baseline_cost_usd: MoneyText | None
    savings_usd: MoneyText | None = Field(description="null while a baseline cost is unknown")
    savings_pct: float | None
    unpriced_requests: int
    baseline_unknown_requests: int
    input_tokens: int
    output_tokens: int
    mean_quality: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    by_model: list[ModelFiguresOut]


class CustomerOut(BaseModel):
    customer_id: str
    requests: int
    cost_usd: MoneyText
    cost_is_lower_bound: bool = Field(
        description="true while some of its requests are unpriced: the margin is then at most"
    )
    revenue_usd: MoneyText
    margin_usd: MoneyText
    margin_pct: float | None = Field(description="margin / revenue; null when revenue is 0")
    unpriced_requests: int


class CustomersOut(BaseModel):
    start: datetime
    end: datetime
    customers: list[CustomerOut] = Field(description="negative margins first")


# --- alert rules and alerts (issue 4) ----------------------------------------------------------

AlertMetric = Literal[ALERT_METRICS]
# One address, local@domain: no display name, no list (a comma would make two recipients).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EmailAddress = Annotated[
    StrictStr,
    Field(
        pattern=rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{_LABEL}(?:\.{_LABEL})+$",
        max_length=MAX_STRING,
    ),
]


class AlertScope(Strict):
    """Empty: the whole project; otherwise one feature, customer or (served) model."""

    feature: Name | None = None
    customer_id: Name | None = None
    model: Name | None = None


class AlertRuleChanges(Strict):
    # Each field may be left out (kept as it is); only threshold and baseline_multiplier may
    # be null, to remove one. The others' default is no value, never one a client can send:
    # a null is refused by their type, naming the field.
    name: Name = None
    metric: AlertMetric = None
    scope: AlertScope = None
    window_minutes: Annotated[StrictInt, Field(ge=1, le=7 * 24 * 60)] = None
    threshold: Annotated[StrictFloat | StrictInt, Field(ge=0, le=10**12)] | None = None
    baseline_multiplier: Annotated[StrictFloat | StrictInt, Field(gt=0, le=10**6)] | None = None
    min_requests: Count = None
    cooldown_minutes: Annotated[StrictInt, Field(ge=1, le=7 * 24 * 60)] = None
    recipients: Annotated[list[EmailAddress], Field(min_length=1, max_length=50)] = None
    enabled: StrictBool = None


class AlertRuleIn(AlertRuleChanges):
    name: Name
    metric: AlertMetric
    scope: AlertScope = AlertScope()
    window_minutes: Annotated[StrictInt, Field(ge=1, le=7 * 24 * 60)] = 15
    min_requests: Count = 0
    cooldown_minutes: Annotated[StrictInt, Field(ge=1, le=7 * 24 * 60)] = 60
    recipients: Annotated[list[EmailAddress], Field(min_length=1, max_length=50)]
    enabled: StrictBool = True


class AlertRuleOut(BaseModel):
    id: int
    name: str
    metric: str
    scope: dict[str, str]
    window_minutes: int
    threshold: float | None
    baseline_multiplier: float | None
    min_requests: int
    cooldown_minutes: int
    recipients: list[str]
    enabled: bool
    created_at: datetime
    updated_at: datetime


class AlertOut(BaseModel):
    id: int
    rule_id: int
    rule_name: str
    metric: str
    state: Literal[ALERT_STATES]
    fired_at: datetime
    resolved_at: datetime | None
    value: float = Field(description="the value when it fired")
    value_is_lower_bound: bool = Field(
        description="a cost figure over a window with unpriced requests (their cost unknown)"
    )
    limit_value: float = Field(description="the limit it was above")
    last_value: float
    requests: int
    window_start: datetime
    window_end: datetime


# --- the model-to-tier map (issue 14) ----------------------------------------------------


class ModelTierIn(Strict):
    tier: RequiredText


class ModelTierOut(BaseModel):
    model: str
    tier: str
    updated_at: datetime
    released_requests: int | None = Field(
        default=None, description="on PUT: held requests assembled because of this mapping"
    )


class ModelTierList(BaseModel):
    model_tiers: list[ModelTierOut]


class UnmappedModel(BaseModel):
    model: str
    requests: int = Field(description="held requests waiting on this model's tier")


class UnmappedModels(BaseModel):
    held_requests: int
    unmapped: list[UnmappedModel]


# --- routing advice (issue 15) -------------------------------------------------------------

# A pass score has at most two decimals: the scored requests are kept to the hundredth.
PassScore = Annotated[Decimal, BeforeValidator(_decimal_input), Field(ge=0, le=1, decimal_places=2)]
Target = Annotated[Decimal, BeforeValidator(_decimal_input), Field(gt=0, le=1)]


class QualityFloorIn(Strict):
    """A feature's quality floor, or one task type's within it."""

    task_type: Text | None = Field(
        default=None, description="the task type it applies to; null: the whole feature"
    )
    pass_score: PassScore = Field(
        default=Decimal("0.7"), description="a case passes from this score on (two decimals)"
    )
    target: Target = Field(
        default=Decimal("0.95"),
        description="the share of the reference tier's pass rate a cheaper tier must reach",
    )


class QualityFloorOut(BaseModel):
    feature: str
    task_type: str | None
    pass_score: float
    target: float
    updated_at: datetime | None = Field(description="null: the defaults, never set")


class QualityFloorList(BaseModel):
    quality_floors: list[QualityFloorOut]


class EvalResultIn(Strict):
    """One model's score on one evaluation item."""

    item_id: RequiredText
    model: RequiredText
    score: Score
    feature: RequiredText
    task_type: Text | None = None
    tier: RequiredText | None = Field(
        default=None, description="default: the model's tier in the project's model-to-tier map"
    )


class EvalBatch(Strict):
    results: Annotated[list[EvalResultIn], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class EvalError(BaseModel):
    index: int
    item_id: str | None = None
    error: str


class EvalsResult(BaseModel):
    accepted: int = Field(description="results stored; an item and model sent again replaces")
    errors: list[EvalError]


class IntervalOut(BaseModel):
    value: float | None
    low: float | None
    high: float | None


class TierAdviceOut(BaseModel):
    tier: str
    model: str
    cases: int = Field(
        description="offline: the items the reference passed that this tier was scored on; "
        "online: this tier's scored requests"
    )
    relative_pass_rate: float | None
    low: float | None = Field(description="95% interval of the relative pass rate")
    high: float | None
    cost_per_request_usd: MoneyText | None = Field(
        description="the segment's served tokens of the traffic window at this tier's model, "
        "priced at the end of the period, per request; null when the model has no price"
    )
    pass_rate: IntervalOut = Field(description="this tier's own pass rate, Wilson interval")
    meets_target: bool


class SegmentAdviceOut(BaseModel):
    feature: str
    task_type: str | None
    evidence: Literal[EVIDENCE_SOURCES] | None
    pass_score: float
    target: float
    reference_tier: str | None
    recommended_tier: str = Field(description="a tier, or insufficient_evidence")
    projected_savings_usd: MoneyText | None = Field(
        description="the segment's cost over the traffic window minus its cost at the "
        "recommended tier (per 30 days)"
    )
    expected_pass_rate: IntervalOut = Field(description="at the recommended tier")
    requests: int = Field(description="in the traffic window")
    cost_usd: MoneyText = Field(description="what the traffic window cost")
    cost_is_lower_bound: bool
    tiers: list[TierAdviceOut]


class AdviceOut(BaseModel):
    start: datetime = Field(description="online evidence: scored requests in [start, end)")
    end: datetime
    traffic_start: datetime = Field(description="the 30 days of traffic that costs are from")
    traffic_end: datetime
    segments: list[SegmentAdviceOut]


class WhatIfIn(Strict):
    """A candidate for a feature over a period of its real traffic: shares per tier for
    every segment of the feature, or one segment (task_type) moved to one tier."""

    feature: RequiredText
    start: StrictStr | None = Field(
        default=None, description="whole UTC hour; default: end - 30 days"
    )
    end: StrictStr | None = Field(
        default=None, description="whole UTC hour; default: the next hour"
    )
    shares: dict[str, Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)]] | None = None
    task_type: Text | None = Field(default=None, description="with move_to: the segment moved")
    move_to: RequiredText | None = None

    @model_validator(mode="after")
    def _one_candidate(self) -> WhatIfIn:
        if (self.shares is None) == (self.move_to is None):
            raise ValueError("give shares (per tier) or move_to (a tier), not both")
        if self.shares is not None and "task_type" in self.model_fields_set:
            raise ValueError("task_type goes with move_to; shares apply to every segment")
        return self


class WhatIfSegmentOut(BaseModel):
    task_type: str | None
    evidence: Literal[EVIDENCE_SOURCES] | None
    requests: int
    shares: dict[str, float] = Field(description="the candidate's shares of this segment")
    current_cost_usd: MoneyText
    projected_cost_usd: MoneyText | None
    savings_usd: MoneyText | None
    expected_pass_rate: IntervalOut


class WhatIfOut(BaseModel):
    feature: str
    start: datetime
    end: datetime
    requests: int
    current_cost_usd: MoneyText
    cost_is_lower_bound: bool
    projected_cost_usd: MoneyText | None = Field(
        description="every request's served tokens at its candidate tier's model, priced at end"
    )
    savings_usd: MoneyText | None
    expected_pass_rate: IntervalOut = Field(
        description="the candidate's pass rate, weighted by requests, 95% interval (MOVER)"
    )
    segments: list[WhatIfSegmentOut]
