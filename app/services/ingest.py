"""Ingest: validate a batch of events, derive and price each request, store it once.

A batch is split into good and bad events; the good ones are stored in one transaction and
the bad ones answered by index with an error that names the field. A request_id already
stored in the project is a duplicate, whatever else the copy says: the request_keys
primary key decides, so two batches racing on two connections store it once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
from psycopg import postgres
from psycopg.types.array import ListBinaryDumper
from psycopg.types.json import Jsonb
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    Numeric,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from app.db import driver_cursor, insert_new
from app.models import attempts, requests
from app.periods import EARLIEST, MAX_FUTURE, utc_now
from app.schemas import (
    EVENT,
    INGEST_BATCH,
    MAX_ATTEMPTS,
    MAX_METADATA_BYTES,
    Event,
    IngestResult,
    ItemError,
    describe_errors,
)
from app.services.batches import (
    Batch,
    bad_text_error,
    read_batch,
    request_id_of,
    validate_item,
)
from app.services.feedback import apply_held
from app.services.partitions import ensure_partitions, month_start
from app.services.pricing import PriceBook
from app.services.projects import ProjectContext, load_project_context
from app.services.request_facts import attempt_cost, baseline_cost, request_cost, request_facts
from app.services.rollups import ROLLUP_JOB, mark_written, record_pending
from app.settings import get_settings
from app.vocabulary import SERVED_STATUS

_events_adapter = TypeAdapter(list[Event])


# --- validation ------------------------------------------------------------------------


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
        if isinstance(raw_event, dict):
            found = validate_item(Event, raw_event, whole="event", check_text=batch.has_bad_text)
            if not isinstance(found, str):
                valid.append((index, found))
                continue
            message = found
        else:
            bad_text = bad_text_error(raw_event, whole="event") if batch.has_bad_text else None
            message = bad_text or "event: must be a JSON object"
        errors.append(ItemError(index=index, request_id=request_id_of(raw_event), error=message))
    return valid, errors


@dataclass(frozen=True)
class TimeWindow:
    """The timestamps events may carry when received at `now`: at most a day ahead, and no
    older than events are kept (ROUTELEDGER_MAX_EVENT_AGE_DAYS)."""

    earliest: datetime
    latest: datetime
    max_age_days: int

    @classmethod
    def at(cls, now: datetime) -> TimeWindow:
        max_age = get_settings().routeledger_max_event_age_days
        # No earlier than the schema's first instant (a huge setting would overflow).
        oldest = now - min(timedelta(days=max_age), now - EARLIEST)
        return cls(oldest, now + MAX_FUTURE, max_age)


def check_event(event: Event, *, tier_ranks: dict[str, int], window: TimeWindow) -> str | None:
    """The rules a schema cannot say: known tiers, a time within the window, metadata size."""
    if event.timestamp > window.latest:
        return f"timestamp: {event.timestamp.isoformat()} is more than a day in the future"
    if event.timestamp < window.earliest:
        return (
            f"timestamp: {event.timestamp.isoformat()} is more than {window.max_age_days} days "
            "in the past (ROUTELEDGER_MAX_EVENT_AGE_DAYS)"
        )
    if event.intended_tier is not None and event.intended_tier not in tier_ranks:
        return _unknown_tier("intended_tier", event.intended_tier, tier_ranks)
    for position, attempt in enumerate(event.attempts):
        if attempt.tier not in tier_ranks:
            return _unknown_tier(f"attempts[{position}].tier", attempt.tier, tier_ranks)
    if event.metadata is not None:
        size = len(orjson.dumps(event.metadata))
        if size > MAX_METADATA_BYTES:
            return f"metadata: {size} bytes, at most {MAX_METADATA_BYTES}"
    return None


def _unknown_tier(field: str, tier: str, tier_ranks: dict[str, int]) -> str:
    # The known tiers are listed only for an event that needs them (not once per event).
    return f"{field}: unknown tier {tier!r} (known: {', '.join(sorted(tier_ranks))})"


# --- derivation and pricing --------------------------------------------------------------


# The rows go to COPY as tuples, their values in the order of these columns (a dict per row
# looked up by name cost a tenth of deriving). A request's keys lead both its row and each
# of its attempts' rows, which carry them for the rollups (they never change).
KEY_COLUMNS = (
    "project_id", "ts", "request_id", "feature", "customer_id", "experiment_name",
    "experiment_arm",
)  # fmt: skip
REQUEST_COLUMNS = (
    *KEY_COLUMNS, "received_at", "user_tier", "task_type", "intended_tier", "served_tier",
    "served_model", "served_provider", "attempt_count", "is_fallback", "is_escalation",
    "is_failover", "is_failed", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "latency_ms", "cost_usd", "unpriced_attempts", "is_unpriced",
    "baseline_cost_usd", "baseline_price_id", "quality_score", "quality_source", "revenue_usd",
    "router_strategy", "router_version", "router_confidence", "router_latency_ms", "metadata",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    *KEY_COLUMNS, "position", "model", "provider", "tier", "status", "reason", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "latency_ms", "cost_usd",
    "cost_source", "price_id",
)  # fmt: skip


class StoredRequest(NamedTuple):
    """One request as stored: its requests row and its attempts rows (REQUEST_COLUMNS and
    ATTEMPT_COLUMNS)."""

    request_id: uuid.UUID
    ts: datetime
    request_row: tuple
    attempt_rows: list[tuple]


def derive(
    event: Event, *, project: ProjectContext, prices: PriceBook, received_at: datetime
) -> StoredRequest:
    """The rows of an event: its facts and costs (app.services.request_facts) beside what
    it says."""
    ts = event.timestamp  # in UTC (app.schemas.Timestamp)
    attempts = event.attempts
    facts = request_facts(
        attempts, intended_tier=event.intended_tier, tier_ranks=project.tier_ranks
    )
    experiment = event.experiment
    keys = (
        project.project_id,
        ts,
        event.request_id,
        event.feature,
        event.customer_id,
        experiment.name if experiment else None,
        experiment.arm if experiment else None,
    )
    attempt_rows = []
    costs = []
    # The request's token and latency totals, summed in the same pass.
    input_tokens = output_tokens = cache_read = cache_write = 0
    latency = None
    for position, attempt in enumerate(attempts):
        cost = attempt_cost(attempt, client_cost=attempt.cost_usd, prices=prices, at=ts)
        costs.append(cost.cost_usd)
        input_tokens += attempt.input_tokens
        output_tokens += attempt.output_tokens
        cache_read += attempt.cache_read_tokens
        cache_write += attempt.cache_write_tokens
        if attempt.latency_ms is not None:
            latency = attempt.latency_ms + (latency or 0)
        attempt_rows.append(
            (
                *keys,
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
                *cost,  # cost_usd, cost_source, price_id
            )
        )
    cost = request_cost(costs)
    served = facts.served
    baseline, baseline_price_id = baseline_cost(
        served, baseline=project.baseline, prices=prices, at=ts
    )
    router, quality, metadata = event.router, event.quality, event.metadata
    request_row = (
        *keys,
        received_at,
        event.user_tier,
        event.task_type,
        facts.intended_tier,
        served.tier if served else None,
        served.model if served else None,
        served.provider if served else None,
        facts.attempt_count,
        facts.is_fallback,
        facts.is_escalation,
        facts.is_failover,
        facts.is_failed,
        input_tokens,
        output_tokens,
        cache_read,
        cache_write,
        latency,
        cost.known_usd,
        cost.unpriced_attempts,
        cost.is_unpriced,
        baseline,
        baseline_price_id,
        quality.score if quality else None,
        quality.source if quality else None,
        event.revenue_usd,
        router.strategy if router else None,
        router.version if router else None,
        router.confidence if router else None,
        router.latency_ms if router else None,
        # orjson: the same JSON as json.dumps for jsonb, in a fraction of the time.
        Jsonb(metadata, dumps=orjson.dumps) if metadata is not None else None,
    )
    return StoredRequest(event.request_id, ts, request_row, attempt_rows)


# PostgreSQL's names of the column types, for COPY in binary (a subclass before its base).
_COPY_TYPE_NAMES = (
    (BigInteger, "int8"), (SmallInteger, "int2"), (Integer, "int4"), (Boolean, "bool"),
    (DateTime, "timestamptz"), (UUID, "uuid"), (Text, "text"), (Float, "float8"),
    (Numeric, "numeric"), (JSONB, "jsonb"),
)  # fmt: skip


def _copy_type_oid(column_type) -> int:
    # As an oid: by name, psycopg would look the type up again on every COPY.
    name = next(pg for sa_type, pg in _COPY_TYPE_NAMES if isinstance(column_type, sa_type))
    return postgres.types.get_oid(name)


@dataclass(frozen=True)
class CopyLayout:
    """How rows of a table go through COPY: its columns in the rows' order, their types."""

    statement: str
    type_oids: tuple[int, ...]

    @classmethod
    def of(cls, table: Table, columns: tuple[str, ...]) -> CopyLayout:
        if sorted(columns) != sorted(table.columns.keys()):
            raise ValueError(f"COPY of {table.name}: {columns} are not its columns")
        return cls(
            f"copy {table.name} ({', '.join(columns)}) from stdin (format binary)",
            tuple(_copy_type_oid(table.c[name].type) for name in columns),
        )

    def write(self, cursor, rows: Iterable[tuple]) -> None:
        with cursor.copy(self.statement) as copy:
            copy.set_types(self.type_oids)
            for row in rows:
                copy.write_row(row)


REQUESTS_COPY = CopyLayout.of(requests, REQUEST_COLUMNS)
ATTEMPTS_COPY = CopyLayout.of(attempts, ATTEMPT_COLUMNS)


# --- the whole batch -------------------------------------------------------------------


def ingest_body(
    engine: Engine, *, project_id: int, body: bytes, now: datetime | None = None
) -> IngestResult:
    """A JSON body `{"requests": [...]}` as sent to POST /v1/requests; raises BodyNotJson,
    NotABatch or BatchTooLarge (app.services.batches) when it is not a batch."""
    try:
        # Parsed and validated in one pass of pydantic's core, straight from the bytes: a
        # third of the time of parsing first and validating the parsed objects.
        events = INGEST_BATCH.validate_json(body).requests
    except ValidationError:
        # Some event is bad, or the body is no batch: read it leniently, event by event.
        return ingest_batch(
            engine, project_id=project_id, batch=read_batch(body, key="requests"), now=now
        )
    valid = list(enumerate(events))
    return _ingest_valid(engine, project_id=project_id, valid=valid, errors=[], now=now)


def ingest_batch(
    engine: Engine, *, project_id: int, batch: Batch, now: datetime | None = None
) -> IngestResult:
    valid, errors = validate_events(batch)
    return _ingest_valid(engine, project_id=project_id, valid=valid, errors=errors, now=now)


@dataclass(frozen=True)
class Ingested:
    """What ingest_in_transaction did: the batch's result, and the valid events whose request
    was stored before (duplicates, as POST /v1/requests counts them)."""

    result: IngestResult
    stored_before: list[Event]


def ingest_in_transaction(
    conn: Connection, *, project: ProjectContext, batch: Batch, now: datetime | None = None
) -> Ingested:
    """ingest_batch within the caller's transaction, with its project context already read:
    the traces' door stores its requests in the transaction that holds their traces' locks."""
    valid, errors = validate_events(batch)
    prepared = _prepare(conn, project=project, valid=valid, errors=errors, now=now or utc_now())
    if not prepared.derived:
        return Ingested(prepared.result(0), [])
    stored = _store(conn, project_id=project.project_id, derived=prepared.derived)
    stored_ids = {request.request_id for request in stored}
    before = [e for e in prepared.events if e.request_id not in stored_ids]
    return Ingested(prepared.result(len(stored)), before)


@dataclass
class _Prepared:
    """A batch checked, its repeats counted and its new requests derived (`derived`, from
    `events` in the same order), not yet stored."""

    events: list[Event]
    derived: list[StoredRequest]
    duplicates_in_batch: int
    errors: list[ItemError]

    def result(self, stored: int) -> IngestResult:
        return IngestResult(
            accepted=stored,
            duplicates=self.duplicates_in_batch + len(self.derived) - stored,
            errors=self.errors,
        )


def _ingest_valid(
    engine: Engine,
    *,
    project_id: int,
    valid: list[tuple[int, Event]],
    errors: list[ItemError],
    now: datetime | None,
) -> IngestResult:
    """Stores the events that passed the schema (by their index in the batch) once each,
    beside the errors of those that did not."""
    with engine.connect() as conn:
        project = load_project_context(conn, project_id=project_id)
        prepared = _prepare(conn, project=project, valid=valid, errors=errors, now=now or utc_now())
        if not prepared.derived:
            return prepared.result(0)
        conn.rollback()  # end the read transaction; the write below is its own
        with conn.begin():
            stored = _store(conn, project_id=project_id, derived=prepared.derived)
            return prepared.result(len(stored))


def _prepare(
    conn: Connection,
    *,
    project: ProjectContext,
    valid: list[tuple[int, Event]],
    errors: list[ItemError],
    now: datetime,
) -> _Prepared:
    checked: list[Event] = []
    window = TimeWindow.at(now)
    for index, event in valid:
        problem = check_event(event, tier_ranks=project.tier_ranks, window=window)
        if problem is None:
            checked.append(event)
        else:
            errors.append(ItemError(index=index, request_id=str(event.request_id), error=problem))
    errors.sort(key=lambda e: e.index)

    # The first copy of a request_id in the batch wins; later copies are duplicates.
    unique: dict[uuid.UUID, Event] = {}
    for event in checked:
        unique.setdefault(event.request_id, event)
    duplicates_in_batch = len(checked) - len(unique)
    if not unique:
        return _Prepared([], [], duplicates_in_batch=duplicates_in_batch, errors=errors)

    ensure_partitions(conn.engine, {month_start(e.timestamp) for e in unique.values()})
    events = list(unique.values())
    prices = _price_book(conn, project=project, events=events)
    derived = [derive(event, project=project, prices=prices, received_at=now) for event in events]
    return _Prepared(events, derived, duplicates_in_batch=duplicates_in_batch, errors=errors)


def _price_book(conn: Connection, *, project: ProjectContext, events: Iterable[Event]) -> PriceBook:
    """The prices of the events' models, and of the project's baseline model."""
    models = {(a.model, a.provider) for e in events for a in e.attempts}
    if project.baseline:
        models.add((project.baseline.model, project.baseline.provider))
    return PriceBook.load(conn, project_id=project.project_id, models=models)


def _store(
    conn: Connection, *, project_id: int, derived: list[StoredRequest]
) -> list[StoredRequest]:
    """Stores the requests not stored before; returns them."""
    with driver_cursor(conn) as cur:
        # Arrays in binary, both ways: in text each element is formatted, quoted and parsed
        # in Python (a tenth of ingest's own time).
        cur.adapters.register_dumper(list, ListBinaryDumper)
        # The request_keys primary key decides what is new. The keys go in in the order of
        # their ids, so two batches sharing ids lock them in the same order and never
        # deadlock.
        new_ids = insert_new(
            cur,
            "insert into request_keys (project_id, request_id, ts) "
            "select %s, k.id, k.ts from unnest(%s::uuid[], %s::timestamptz[]) as k(id, ts) "
            "order by k.id",
            (project_id, [r.request_id for r in derived], [r.ts for r in derived]),
            returning="request_id",
            savepoint="request_keys",
            binary=True,
        )
        stored = derived if new_ids is None else [r for r in derived if r.request_id in new_ids]
        if not stored:
            return []
        REQUESTS_COPY.write(cur, (request.request_row for request in stored))
        ATTEMPTS_COPY.write(cur, (row for request in stored for row in request.attempt_rows))
        record_pending(cur, project_id=project_id, keys=[(r.ts, r.request_id) for r in stored])
    apply_held(conn, project_id=project_id, stored={r.request_id: r.ts for r in stored})
    return stored


# --- calls reported after their request -----------------------------------------------------

# The columns of a request's row that follow from its attempts: those a further attempt
# changes (its fields, feedback's quality among them, stay as stored).
ATTEMPT_DERIVED_COLUMNS = (
    "served_tier", "served_model", "served_provider", "attempt_count", "is_fallback",
    "is_escalation", "is_failover", "is_failed", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "latency_ms", "cost_usd", "unpriced_attempts",
    "is_unpriced", "baseline_cost_usd", "baseline_price_id",
)  # fmt: skip
_DERIVED_POSITIONS = tuple(REQUEST_COLUMNS.index(name) for name in ATTEMPT_DERIVED_COLUMNS)
# What tells one model call from another in a request, whatever tier the map gives it now.
_CALL_FIELDS = (
    "model", "provider", "status", "reason", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "latency_ms",
)  # fmt: skip


@dataclass
class LateAttempts:
    """What add_late_attempts did: the requests it gave further attempts; per request id why
    the attempts it was given could not be added; and per request id the new attempts beyond
    what the request holds (MAX_ATTEMPTS), in order, for the caller to store elsewhere."""

    amended: set[uuid.UUID] = field(default_factory=set)
    errors: dict[uuid.UUID, str] = field(default_factory=dict)
    overflow: dict[uuid.UUID, Overflow] = field(default_factory=dict)


class Overflow(NamedTuple):
    """The new attempts beyond what a stored request holds, and its customer, feature,
    intended tier and experiment: those attempts are its request's, whatever else they say."""

    named: dict[str, Any]
    attempts: list[dict[str, Any]]


def add_late_attempts(
    conn: Connection, *, project: ProjectContext, events: list[Event], now: datetime
) -> LateAttempts:
    """Adds to stored requests the attempts that later copies of them (`events`) carry and
    they lack: model calls reported after their request was assembled (the OTLP door; for
    POST /v1/requests a copy is a duplicate, whatever it says), as many as the request holds
    (the rest are returned, `overflow`). A call already stored is
    recognised by what it reported (model, provider, status, reason, tokens, latency), so a
    re-export adds nothing. The new calls follow the stored ones, and the request is derived
    again as if it had arrived whole: its attempts are written again, the new ones priced as
    ingest prices them, the figures that follow from them are updated, and its hour is marked
    for the rollups. The stored calls keep the costs they were stored with, and the request
    its baseline cost while a stored call still serves it: only an explicit re-pricing
    changes a stored cost (app.services.reprice), whatever prices were posted since."""
    outcome = LateAttempts()
    stored = _stored_calls(conn, project_id=project.project_id, events=events)
    window = TimeWindow.at(now)
    whole: list[Event] = []
    for event in events:
        request = stored.get(event.request_id)
        if request is None:
            continue  # its rows were deleted outside the service: a duplicate still
        unseen = Counter(_call(a) for a in request["attempts"])
        new = []
        for attempt in (asdict(a) for a in event.attempts):
            call = _call(attempt)
            if unseen[call] > 0:
                unseen[call] -= 1
            else:
                new.append(attempt)
        if not new:
            continue  # a re-export: every call is stored
        room = max(MAX_ATTEMPTS - len(request["attempts"]), 0)
        if len(new) > room:
            named = {
                name: value
                for name, value in request["fields"].items()
                if name in _NAMING_FIELDS and value is not None
            }
            outcome.overflow[event.request_id] = Overflow(named, new[room:])
            new = new[:room]
            if not new:
                continue
        attempts = [*request["attempts"], *new]
        try:
            amended = EVENT.validate_python({**request["fields"], "attempts": attempts})
        except ValidationError as error:  # stored before a rule the schema has now
            outcome.errors[event.request_id] = describe_errors(
                error.errors(include_url=False), whole="event"
            )
            continue
        problem = check_event(amended, tier_ranks=project.tier_ranks, window=window)
        if problem is not None:
            outcome.errors[event.request_id] = problem
            continue
        whole.append(amended)
    if whole:
        prices = _price_book(conn, project=project, events=whole)
        derived = [
            _with_stored_costs(
                derive(e, project=project, prices=prices, received_at=now), stored[e.request_id]
            )
            for e in whole
        ]
        _replace_attempts(conn, project_id=project.project_id, derived=derived)
        outcome.amended = {request.request_id for request in derived}
    return outcome


# What names a request (who, which feature, what was intended, which arm), as stored.
_NAMING_FIELDS = frozenset({"customer_id", "feature", "intended_tier", "experiment"})
# An attempt row ends with its cost, the cost's source and its price (ATTEMPT_COLUMNS).
_COST_AT = ATTEMPT_COLUMNS.index("cost_usd")
_STATUS_AT = ATTEMPT_COLUMNS.index("status")
_REQUEST_AT = {name: REQUEST_COLUMNS.index(name) for name in REQUEST_COLUMNS}


def _with_stored_costs(request: StoredRequest, stored: dict[str, Any]) -> StoredRequest:
    """`request` derived again, with its stored attempts' costs as stored, its cost summed from
    them and the new ones', and its stored baseline cost while a stored attempt serves it."""
    kept = stored["costs"]  # per stored attempt, in order: (cost_usd, source, price_id)
    rows = [
        row[:_COST_AT] + kept[position] if position < len(kept) else row
        for position, row in enumerate(request.attempt_rows)
    ]
    values = list(request.request_row)
    cost = request_cost(row[_COST_AT] for row in rows)
    values[_REQUEST_AT["cost_usd"]] = cost.known_usd
    values[_REQUEST_AT["unpriced_attempts"]] = cost.unpriced_attempts
    values[_REQUEST_AT["is_unpriced"]] = cost.is_unpriced
    served = [position for position, row in enumerate(rows) if row[_STATUS_AT] == SERVED_STATUS]
    if served and served[-1] < len(kept):
        baseline_cost_usd, baseline_price_id = stored["baseline"]
        values[_REQUEST_AT["baseline_cost_usd"]] = baseline_cost_usd
        values[_REQUEST_AT["baseline_price_id"]] = baseline_price_id
    return request._replace(request_row=tuple(values), attempt_rows=rows)


def _call(attempt: dict[str, Any]) -> tuple:
    return tuple(attempt[name] for name in _CALL_FIELDS)


def _stored_calls(
    conn: Connection, *, project_id: int, events: list[Event]
) -> dict[uuid.UUID, dict[str, Any]]:
    """Per request id, the stored fields an event needs to be derived again (its keys and
    intended tier), its attempts, in order, as event attempts (a client's cost kept), their
    stored costs (cost, source, price id) and its stored baseline (cost, price id)."""
    ids = [event.request_id for event in events]
    # By request_keys: its key gives each request's timestamp, and so its partition.
    found: dict[uuid.UUID, dict[str, Any]] = {}
    for row in conn.execute(
        text(
            "select r.request_id, r.ts, r.customer_id, r.feature, r.intended_tier, "
            "r.experiment_name, r.experiment_arm, r.baseline_cost_usd, r.baseline_price_id "
            "from request_keys k join requests r "
            "on r.project_id = k.project_id and r.ts = k.ts and r.request_id = k.request_id "
            "where k.project_id = :project_id and k.request_id = any(:ids)"
        ),
        {"project_id": project_id, "ids": ids},
    ).mappings():
        fields = {
            "request_id": row["request_id"],
            "timestamp": row["ts"],
            "customer_id": row["customer_id"],
            "feature": row["feature"],
            "intended_tier": row["intended_tier"],
        }
        if row["experiment_name"] is not None:
            fields["experiment"] = {"name": row["experiment_name"], "arm": row["experiment_arm"]}
        found[row["request_id"]] = {
            "fields": fields,
            "attempts": [],
            "costs": [],
            "baseline": (row["baseline_cost_usd"], row["baseline_price_id"]),
        }
    for row in conn.execute(
        text(
            f"select a.request_id, {', '.join(f'a.{name}' for name in _CALL_FIELDS)}, a.tier, "
            "a.cost_usd, a.cost_source, a.price_id from request_keys k join attempts a "
            "on a.project_id = k.project_id and a.ts = k.ts and a.request_id = k.request_id "
            "where k.project_id = :project_id and k.request_id = any(:ids) "
            "order by a.request_id, a.position"
        ),
        {"project_id": project_id, "ids": ids},
    ).mappings():
        attempt = {name: row[name] for name in (*_CALL_FIELDS, "tier")}
        attempt["cost_usd"] = row["cost_usd"] if row["cost_source"] == "client" else None
        request = found[row["request_id"]]
        request["attempts"].append(attempt)
        request["costs"].append((row["cost_usd"], row["cost_source"], row["price_id"]))
    return found


def _replace_attempts(conn: Connection, *, project_id: int, derived: list[StoredRequest]) -> None:
    keys = [(project_id, request.ts, request.request_id) for request in derived]
    with driver_cursor(conn) as cur:
        cur.executemany(
            "delete from attempts where project_id = %s and ts = %s and request_id = %s", keys
        )
        ATTEMPTS_COPY.write(cur, (row for request in derived for row in request.attempt_rows))
        assignments = ", ".join(f"{name} = %s" for name in ATTEMPT_DERIVED_COLUMNS)
        cur.executemany(
            f"update requests set {assignments} "
            "where project_id = %s and ts = %s and request_id = %s",
            [
                (*(r.request_row[i] for i in _DERIVED_POSITIONS), *key)
                for r, key in zip(derived, keys, strict=True)
            ],
        )
    mark_written(conn, job=ROLLUP_JOB, project_id=project_id, hours=[r.ts for r in derived])
