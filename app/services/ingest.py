"""Ingest: validate a batch of events, derive and price each request, store it once.

A batch is split into good and bad events; the good ones are stored in one transaction and
the bad ones answered by index with an error that names the field. A request_id already
stored in the project is a duplicate, whatever else the copy says: the request_keys
primary key decides, so two batches racing on two connections store it once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from psycopg.types.json import Jsonb
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, Engine

from app.schemas import MAX_BATCH_EVENTS, MAX_METADATA_BYTES, Event, IngestResult, ItemError
from app.services.partitions import ensure_partitions, month_start
from app.services.pricing import PriceBook
from app.services.projects import project_baseline, project_tiers

MAX_FUTURE = timedelta(days=1)
_events_adapter = TypeAdapter(list[Event])


class BodyNotJson(ValueError):
    """400: the body cannot be parsed as JSON."""


class NotABatch(ValueError):
    """422: JSON, but not {"requests": [event, ...]} with at least one event."""


class BatchTooLarge(ValueError):
    """413: more events than a batch may hold."""


# --- parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    items: list[Any]
    # True when the body held invalid UTF-8 (or lone surrogates): the strings that carry
    # it are found item by item, so only those items are refused.
    has_bad_text: bool = False


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError as strict_error:
        # orjson refuses the whole body for one bad byte; decode leniently to find out
        # whether it is otherwise JSON, so the good events beside the bad one survive.
        try:
            return json.loads(raw.decode("utf-8", errors="surrogateescape")), True
        except (ValueError, RecursionError):
            raise BodyNotJson(f"body is not valid JSON: {strict_error}") from None


def read_batch(raw: bytes, *, key: str) -> Batch:
    """The items of a `{key: [...]}` body of 1 to 1000 items."""
    value, has_bad_text = _parse_json(raw)
    if not isinstance(value, dict) or not isinstance(value.get(key), list):
        raise NotABatch(f'body must be a JSON object {{"{key}": [...]}}')
    unknown = sorted(set(value) - {key})
    if unknown:
        raise NotABatch(f"unknown field {unknown[0]!r} in the batch; only {key!r} is allowed")
    items = value[key]
    if not items:
        raise NotABatch(f"{key!r} must hold at least one item")
    if len(items) > MAX_BATCH_EVENTS:
        raise BatchTooLarge(f"{len(items)} items in {key!r}; at most {MAX_BATCH_EVENTS} per batch")
    return Batch(items, has_bad_text)


# --- validation ------------------------------------------------------------------------


def field_path(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "event"


def describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        loc = [p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{field_path(loc)}: {message}")
    return "; ".join(parts)


def find_bad_text(value: Any, loc: tuple = ()) -> tuple | None:
    """The path of the first string holding invalid UTF-8 (a lone surrogate), if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return loc
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = find_bad_text(k, loc) or find_bad_text(v, (*loc, k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find_bad_text(v, (*loc, i))
            if found is not None:
                return found
    return None


def request_id_of(raw_event: Any) -> str | None:
    if isinstance(raw_event, dict) and isinstance(raw_event.get("request_id"), str):
        return raw_event["request_id"]
    return None


def validate_events(batch: Batch) -> tuple[list[tuple[int, Event]], list[ItemError]]:
    raw_events = batch.items
    if not batch.has_bad_text:
        try:
            return list(enumerate(_events_adapter.validate_python(raw_events))), []
        except ValidationError:
            pass  # find out which events are bad, one by one
    valid: list[tuple[int, Event]] = []
    errors: list[ItemError] = []
    for index, raw_event in enumerate(raw_events):
        bad_text = find_bad_text(raw_event) if batch.has_bad_text else None
        if bad_text is not None:
            message = f"{field_path(bad_text)}: not valid UTF-8"
        elif not isinstance(raw_event, dict):
            message = "event: must be a JSON object"
        else:
            try:
                valid.append((index, Event.model_validate(raw_event)))
                continue
            except ValidationError as error:
                message = describe_validation_error(error)
        errors.append(ItemError(index=index, request_id=_safe_id(raw_event), error=message))
    return valid, errors


def _safe_id(raw_event: Any) -> str | None:
    found = request_id_of(raw_event)
    return found if found is not None and find_bad_text(found) is None else None


def check_event(event: Event, *, tier_ranks: dict[str, int], now: datetime) -> str | None:
    """The rules a schema cannot say: known tiers, no far-future time, metadata size."""
    if event.timestamp - now > MAX_FUTURE:
        return f"timestamp: {event.timestamp.isoformat()} is more than a day in the future"
    known = ", ".join(sorted(tier_ranks))
    if event.intended_tier is not None and event.intended_tier not in tier_ranks:
        return f"intended_tier: unknown tier {event.intended_tier!r} (known: {known})"
    for position, attempt in enumerate(event.attempts):
        if attempt.tier not in tier_ranks:
            return f"attempts[{position}].tier: unknown tier {attempt.tier!r} (known: {known})"
    if event.metadata is not None:
        size = len(orjson.dumps(event.metadata))
        if size > MAX_METADATA_BYTES:
            return f"metadata: {size} bytes, at most {MAX_METADATA_BYTES}"
    return None


# --- derivation and pricing --------------------------------------------------------------


@dataclass
class StoredRequest:
    request_row: tuple
    attempt_rows: list[tuple]


REQUEST_COLUMNS = (
    "project_id", "ts", "request_id", "received_at", "customer_id", "feature", "user_tier",
    "task_type", "intended_tier", "served_tier", "served_model", "served_provider",
    "attempt_count", "is_fallback", "is_escalation", "is_failover", "is_failed",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "latency_ms",
    "cost_usd", "unpriced_attempts", "is_unpriced", "baseline_cost_usd", "baseline_price_id",
    "quality_score", "quality_source", "revenue_usd", "router_strategy", "router_version",
    "router_confidence", "router_latency_ms", "experiment_name", "experiment_arm", "metadata",
)  # fmt: skip
REQUEST_TYPES = (
    "int8", "timestamptz", "uuid", "timestamptz", "text", "text", "text",
    "text", "text", "text", "text", "text",
    "int2", "bool", "bool", "bool", "bool",
    "int8", "int8", "int8", "int8", "float8",
    "numeric", "int2", "bool", "numeric", "int8",
    "float8", "text", "numeric", "text", "text",
    "float8", "float8", "text", "text", "jsonb",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "project_id", "ts", "request_id", "position", "model", "provider", "tier", "status",
    "reason", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "latency_ms", "cost_usd", "cost_source", "price_id", "feature", "customer_id",
    "experiment_name", "experiment_arm",
)  # fmt: skip
ATTEMPT_TYPES = (
    "int8", "timestamptz", "uuid", "int2", "text", "text", "text", "text",
    "text", "int8", "int8", "int8", "int8",
    "float8", "numeric", "text", "int8", "text", "text",
    "text", "text",
)  # fmt: skip


@dataclass(frozen=True)
class ProjectContext:
    project_id: int
    tier_ranks: dict[str, int]
    baseline_model: str | None
    baseline_provider: str | None


def served_attempt(attempts):
    """The served attempt: the last one whose status is ok (None when the request failed)."""
    return next((a for a in reversed(attempts) if a.status == "ok"), None)


def derive(
    event: Event, *, project: ProjectContext, prices: PriceBook, received_at: datetime
) -> StoredRequest:
    ts = event.timestamp.astimezone(UTC)
    attempts = event.attempts
    intended = event.intended_tier or attempts[0].tier
    served = served_attempt(attempts)
    ranks = project.tier_ranks
    experiment = event.experiment
    experiment_name = experiment.name if experiment else None
    experiment_arm = experiment.arm if experiment else None

    cost = Decimal(0)
    unpriced = 0
    attempt_rows = []
    latency_total = None
    for position, attempt in enumerate(attempts):
        if attempt.cost_usd is not None:
            attempt_cost, cost_source, price_id = attempt.cost_usd, "client", None
        else:
            attempt_cost, price_id = prices.cost_at(attempt.model, attempt.provider, ts, attempt)
            cost_source = "price" if price_id is not None else None
        if attempt_cost is None:
            unpriced += 1
        else:
            cost += attempt_cost
        if attempt.latency_ms is not None:
            latency_total = (latency_total or 0.0) + attempt.latency_ms
        attempt_rows.append(
            (
                project.project_id,
                ts,
                event.request_id,
                position,
                attempt.model,
                attempt.provider,
                attempt.tier,
                attempt.status,
                attempt.reason,
                attempt.input_tokens,
                attempt.output_tokens,
                attempt.cache_read_tokens,
                attempt.cache_write_tokens,
                attempt.latency_ms,
                attempt_cost,
                cost_source,
                price_id,
                event.feature,
                event.customer_id,
                experiment_name,
                experiment_arm,
            )  # fmt: skip
        )

    baseline, baseline_price_id = baseline_cost(served, project=project, prices=prices, ts=ts)
    router = event.router
    quality = event.quality
    request_row = (
        project.project_id, ts, event.request_id, received_at, event.customer_id, event.feature,
        event.user_tier, event.task_type, intended,
        served.tier if served else None, served.model if served else None,
        served.provider if served else None,
        len(attempts), len(attempts) >= 2,
        served is not None and ranks[served.tier] > ranks[intended],
        any(a.status in ("error", "timeout") for a in attempts),
        served is None,
        sum(a.input_tokens for a in attempts), sum(a.output_tokens for a in attempts),
        sum(a.cache_read_tokens for a in attempts), sum(a.cache_write_tokens for a in attempts),
        latency_total, cost, unpriced, unpriced > 0, baseline, baseline_price_id,
        quality.score if quality else None, quality.source if quality else None,
        event.revenue_usd,
        router.strategy if router else None, router.version if router else None,
        router.confidence if router else None, router.latency_ms if router else None,
        experiment_name, experiment_arm,
        Jsonb(event.metadata) if event.metadata is not None else None,
    )  # fmt: skip
    return StoredRequest(request_row, attempt_rows)


def baseline_cost(
    served, *, project: ProjectContext, prices: PriceBook, ts: datetime
) -> tuple[Decimal | None, int | None]:
    """The served attempt's tokens at the baseline model's price; 0 for a failed request,
    None (unknown) when the project has no baseline model or it has no price."""
    if served is None:
        return Decimal(0), None
    if project.baseline_model is None:
        return None, None
    return prices.cost_at(project.baseline_model, project.baseline_provider, ts, served)


# --- the whole batch -------------------------------------------------------------------


def load_project_context(conn: Connection, *, project_id: int) -> ProjectContext:
    baseline_model, baseline_provider = project_baseline(conn, project_id=project_id)
    return ProjectContext(
        project_id=project_id,
        tier_ranks=project_tiers(conn, project_id=project_id),
        baseline_model=baseline_model,
        baseline_provider=baseline_provider,
    )


def ingest_batch(
    engine: Engine, *, project_id: int, batch: Batch, now: datetime | None = None
) -> IngestResult:
    now = now or datetime.now(UTC)
    valid, errors = validate_events(batch)

    with engine.connect() as conn:
        project = load_project_context(conn, project_id=project_id)
        checked: list[Event] = []
        for index, event in valid:
            problem = check_event(event, tier_ranks=project.tier_ranks, now=now)
            if problem is None:
                checked.append(event)
            else:
                errors.append(
                    ItemError(index=index, request_id=str(event.request_id), error=problem)
                )
        errors.sort(key=lambda e: e.index)

        # The first copy of a request_id in the batch wins; later copies are duplicates.
        unique: dict[uuid.UUID, Event] = {}
        for event in checked:
            unique.setdefault(event.request_id, event)
        duplicates_in_batch = len(checked) - len(unique)
        if not unique:
            return IngestResult(accepted=0, duplicates=duplicates_in_batch, errors=errors)

        ensure_partitions(engine, {month_start(e.timestamp) for e in unique.values()})
        models = {(a.model, a.provider) for e in unique.values() for a in e.attempts}
        if project.baseline_model:
            models.add((project.baseline_model, project.baseline_provider))
        prices = PriceBook.load(conn, project_id=project_id, models=models)
        derived = {
            rid: derive(event, project=project, prices=prices, received_at=now)
            for rid, event in unique.items()
        }
        conn.rollback()  # end the read transaction; the write below is its own
        with conn.begin():
            stored = _store(conn, project_id=project_id, derived=derived)
    return IngestResult(
        accepted=len(stored),
        duplicates=duplicates_in_batch + len(derived) - len(stored),
        errors=errors,
    )


def _store(
    conn: Connection, *, project_id: int, derived: dict[uuid.UUID, StoredRequest]
) -> set[uuid.UUID]:
    # Sorted ids: two batches sharing ids lock them in the same order and never deadlock.
    ids = sorted(derived)
    timestamps = [derived[i].request_row[1] for i in ids]
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        cur.execute(
            "insert into request_keys (project_id, request_id, ts) "
            "select %s, k.id, k.ts from unnest(%s::uuid[], %s::timestamptz[]) as k(id, ts) "
            "order by k.id on conflict do nothing returning request_id",
            (project_id, ids, timestamps),
        )
        new_ids = {row[0] for row in cur.fetchall()}
        if not new_ids:
            return new_ids
        with cur.copy(
            f"copy requests ({', '.join(REQUEST_COLUMNS)}) from stdin (format binary)"
        ) as copy:
            copy.set_types(REQUEST_TYPES)
            for rid in ids:
                if rid in new_ids:
                    copy.write_row(derived[rid].request_row)
        with cur.copy(
            f"copy attempts ({', '.join(ATTEMPT_COLUMNS)}) from stdin (format binary)"
        ) as copy:
            copy.set_types(ATTEMPT_TYPES)
            for rid in ids:
                if rid in new_ids:
                    for row in derived[rid].attempt_rows:
                        copy.write_row(row)
    return new_ids
