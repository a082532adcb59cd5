"""Traces to requests: spans of POST /v1/traces wait in PostgreSQL until their request can be
assembled, then go through the one ingest path (app.services.ingest) as events.

Each call works trace by trace under a transaction-scoped advisory lock per (project, trace),
so two API processes receiving two exports of one trace, or the settle job beside them,
assemble it once. Assembly is idempotent besides: a request's id is the UUIDv5 of its trace
and request span, so assembling it again is a duplicate, stored once; only a call the stored
request lacks (reported after it was assembled) is added to it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Engine, text

from app.db import driver_cursor, insert_new
from app.periods import utc_now
from app.schemas import MAX_ATTEMPTS
from app.services.ingest import Batch, Overflow, add_late_attempts, ingest_in_transaction
from app.services.model_tiers import load_tier_map, set_model_tier
from app.services.otlp import (
    ONCE_PER_REQUEST,
    REQUEST_ATTRIBUTES,
    Draft,
    SpanRecord,
    due_drafts,
    extract_spans,
    report_fullness,
    request_id_of,
    without_once_fields,
)
from app.services.projects import ProjectContext, load_project_context
from app.settings import get_settings

log = logging.getLogger(__name__)

# A database lock held longer than this turns into a 503 with Retry-After, well within the
# OTLP exporters' 10 s timeout, so they retry instead of timing out.
LOCK_TIMEOUT = "3s"
# How long a model call's response id is remembered: two instrumentations of one call export
# it within seconds of each other (an exporter's retries included); an hour bounds the table
# to an hour of calls (and the calls of reports held for unmapped models).
RESPONSE_ID_MEMORY = timedelta(hours=1)
# How long a request span waits for its model calls when none came with it: a handler's span
# ends before the stream it returned is read, and the stream's call span comes when it is.
REQUEST_SPAN_MEMORY = timedelta(hours=1)
TRACES_PER_TRANSACTION = 200
_NONE: frozenset = frozenset()
_SPAN_COLUMNS = (
    "project_id, trace_id, span_id, parent_span_id, parent_is_remote, is_attempt, held, "
    "start_ns, end_ns, received_at, fields, resource"
)


@dataclass
class Outcome:
    """What one pass over some traces did."""

    requests: int = 0
    # Stored requests given calls reported after they were assembled.
    amended: int = 0
    duplicates: int = 0
    held: int = 0
    released: int = 0
    # Spans refused: of those received in this pass (what an export's answer counts), and of
    # those stored before (refused now, with their request).
    rejected_spans: int = 0
    refused_stored_spans: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.requests += other.requests
        self.amended += other.amended
        self.duplicates += other.duplicates
        self.held += other.held
        self.released += other.released
        self.rejected_spans += other.rejected_spans
        self.refused_stored_spans += other.refused_stored_spans
        self.errors += other.errors


def settle_seconds() -> float:
    return get_settings().routeledger_otlp_settle_seconds


# --- the three doors: an export, the settle job, a newly mapped model --------------------


def receive_export(
    engine: Engine, *, project_id: int, export, now: datetime | None = None
) -> Outcome:
    """Keeps the model-call spans of an OTLP export (refusing, by message, those that cannot be
    used) and assembles every request that is complete."""
    now = now or utc_now()
    # One transaction: the project's context is read in the one that assembles and stores.
    with engine.connect() as conn, conn.begin():
        project = load_project_context(conn, project_id=project_id)
        extracted = extract_spans(export, tier_ranks=project.tier_ranks, now=now)
        outcome = Outcome(rejected_spans=len(extracted.rejected), errors=list(extracted.rejected))
        by_trace: dict[bytes, list[SpanRecord]] = defaultdict(list)
        for record in extracted.records:
            by_trace[record.trace_id].append(record)
        if by_trace:
            outcome.add(_process(conn, project=project, new=by_trace, now=now))
    return outcome


@dataclass
class SettleSummary:
    traces: int
    requests: int
    amended: int
    duplicates: int
    held: int
    released: int
    rejected_spans: int
    forgotten_response_ids: int


def run_settle(engine: Engine, *, now: datetime | None = None) -> SettleSummary:
    """The periodic job: assembles the requests of traces where nothing arrived for the settle
    time, releases held requests whose models were mapped since, and forgets old response
    ids. Idempotent."""
    now = now or utc_now()
    cutoff = now - timedelta(seconds=settle_seconds())
    with engine.begin() as conn:
        due = conn.execute(
            text(
                """
                select project_id, trace_id from otlp_spans
                group by project_id, trace_id
                having (max(received_at) <= :cutoff and bool_or(is_attempt and not held))
                    or (max(received_at) <= :forget_before and not bool_or(is_attempt))
                union
                select h.project_id, h.trace_id from otlp_held_requests h
                where exists (select 1 from model_tiers m
                              where m.project_id = h.project_id and m.model = any(h.lookup_names))
                """
            ),
            {"cutoff": cutoff, "forget_before": now - REQUEST_SPAN_MEMORY},
        ).all()
        # A claim outlives the memory while a report of its call is held (released later,
        # it must still find its call counted); only those claims, whatever else is held.
        forgotten = conn.execute(
            text(
                """
                delete from otlp_response_ids c
                where c.claimed_at < :before
                  and not exists (
                      select 1 from otlp_spans s
                      where s.project_id = c.project_id and s.held and s.is_attempt
                        and s.fields -> 'attempt' ->> 'response_id' = c.response_id)
                """
            ),
            {"before": now - RESPONSE_ID_MEMORY},
        ).rowcount
    outcome = Outcome()
    by_project: dict[int, list[bytes]] = defaultdict(list)
    for project_id, trace_id in due:
        by_project[project_id].append(bytes(trace_id))
    for project_id, trace_ids in by_project.items():
        outcome.add(_process_traces(engine, project_id=project_id, trace_ids=trace_ids, now=now))
    for error in outcome.errors:
        log.warning("traces settle: %s", error)
    return SettleSummary(
        traces=len(due),
        requests=outcome.requests,
        amended=outcome.amended,
        duplicates=outcome.duplicates,
        held=outcome.held,
        released=outcome.released,
        rejected_spans=outcome.rejected_spans + outcome.refused_stored_spans,
        forgotten_response_ids=forgotten,
    )


def release_model(
    engine: Engine, *, project_id: int, model: str, now: datetime | None = None
) -> Outcome:
    """Assembles the held requests that `model` (now mapped) was holding."""
    with engine.connect() as conn:
        trace_ids = conn.scalars(
            text(
                "select distinct trace_id from otlp_held_requests "
                "where project_id = :project_id and :model = any(lookup_names)"
            ),
            {"project_id": project_id, "model": model},
        ).all()
    return _process_traces(
        engine, project_id=project_id, trace_ids=[bytes(t) for t in trace_ids], now=now
    )


def held_models(conn: Connection, *, project_id: int) -> tuple[int, list[dict]]:
    """How many requests are held, and per model to map, how many of them it holds."""
    total = conn.execute(
        text("select count(*) from otlp_held_requests where project_id = :project_id"),
        {"project_id": project_id},
    ).scalar_one()
    rows = conn.execute(
        text(
            """
            select model, count(*) as requests
            from otlp_held_requests, unnest(unmapped_models) as model
            where project_id = :project_id
            group by model order by requests desc, model
            """
        ),
        {"project_id": project_id},
    )
    return total, [{"model": r.model, "requests": r.requests} for r in rows]


# --- assembly ---------------------------------------------------------------------------


def _process_traces(
    engine: Engine, *, project_id: int, trace_ids: list[bytes], now: datetime | None
) -> Outcome:
    now = now or utc_now()
    outcome = Outcome()
    project = None
    with engine.connect() as conn:
        for start in range(0, len(trace_ids), TRACES_PER_TRANSACTION):
            chunk = {t: [] for t in trace_ids[start : start + TRACES_PER_TRANSACTION]}
            with conn.begin():
                if project is None:
                    project = load_project_context(conn, project_id=project_id)
                outcome.add(_process(conn, project=project, new=chunk, now=now))
    return outcome


def _lock_key(project_id: int, trace_id: bytes) -> int:
    digest = hashlib.blake2b(project_id.to_bytes(8, "big") + trace_id, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _process(
    conn: Connection,
    *,
    project: ProjectContext,
    new: dict[bytes, list[SpanRecord]],
    now: datetime,
) -> Outcome:
    """Assembles what is due in these traces (their stored spans plus `new` ones), ingests it,
    and stores what must still wait, in the caller's transaction, under the traces' locks."""
    project_id = project.project_id
    trace_ids = sorted(new)
    outcome = Outcome()
    with driver_cursor(conn) as cursor:
        # Arrays in binary: in text psycopg escapes each element in Python.
        cursor.execute(
            "select set_config('lock_timeout', %s, true), "
            "(select count(pg_advisory_xact_lock(k)) "
            " from (select k from unnest(%b::bigint[]) k order by k) as keys)",
            (LOCK_TIMEOUT, sorted(_lock_key(project_id, t) for t in trace_ids)),
        )
    stored = _stored_spans(conn, project_id=project_id, trace_ids=trace_ids)
    held_ids: set[uuid.UUID] = set()
    if stored:  # held requests keep their spans stored: with none stored, none is held
        held_ids = set(
            conn.scalars(
                text(
                    "select request_id from otlp_held_requests "
                    "where project_id = :project_id and trace_id = any(:trace_ids)"
                ),
                {"project_id": project_id, "trace_ids": trace_ids},
            )
        )
    quiet_before = now - timedelta(seconds=settle_seconds())
    drafts: list[Draft] = []
    spans_of: dict[bytes, dict[bytes, SpanRecord]] = {}
    for trace_id in trace_ids:
        spans = {s.span_id: s for s in new[trace_id]}
        if trace_id in stored:
            spans.update(stored[trace_id])  # a re-exported span: the stored copy
        spans_of[trace_id] = spans
        # New spans were received now: with a settle time, their trace is not quiet.
        quiet = (not new[trace_id] or quiet_before >= now) and all(
            s.received_at <= quiet_before for s in spans.values()
        )
        drafts += due_drafts(spans, quiet=quiet, held_request_ids=held_ids)

    names = {n for d in drafts for a in d.attempts
             for n in (a.attempt["model"], a.attempt["request_model"])}  # fmt: skip
    tier_map = load_tier_map(conn, project_id=project_id, models=names)
    ready, held = [], []
    for draft in drafts:
        (held if draft.unmapped(tier_map) else ready).append(draft)
    already_counted = _claim_response_ids(conn, project_id=project_id, drafts=ready, now=now)

    events: list[_Chunk] = []
    for draft in ready:
        counted = already_counted.get(draft.request_id, _NONE)
        chunks = draft.events(tier_map, already_counted=counted)
        if chunks:
            rest = [attempt for later in chunks[1:] for attempt in later["attempts"]]
            events.append(_Chunk(chunks[0], draft, 0, rest, chunks))
    # A request whose every call is counted already is a duplicate.
    with_events = {id(c.draft) for c in events}
    outcome.duplicates += sum(1 for d in ready if id(d) not in with_events)
    while events:  # then the calls that did not fit in their stored request, chunk by chunk
        events = _ingest_chunks(conn, project=project, chunks=events, outcome=outcome, new=new)

    consumed = {s for d in ready for s in d.span_ids}
    released = [d.request_id for d in ready if d.request_id in held_ids]
    outcome.released = len(released)
    outcome.held = len(held)
    _hold(conn, project_id=project_id, drafts=held, tier_map=tier_map, now=now)
    # A held request is always due: one not among the drafts has no call left, its calls
    # being another request's now (their request span arrived, under a marked span).
    moved = held_ids - {d.request_id for d in drafts}
    if released or moved:
        conn.execute(
            text(
                "delete from otlp_held_requests "
                "where project_id = :project_id and request_id = any(:ids)"
            ),
            {"project_id": project_id, "ids": [*released, *moved]},
        )
    _keep_waiting(
        conn,
        project_id=project_id,
        spans_of=spans_of,
        stored=stored,
        consumed=consumed,
        held_spans={s for d in held for s in d.span_ids},
        request_spans={d.request_span_id for d in drafts},
        forget_before=now - REQUEST_SPAN_MEMORY,
    )
    return outcome


@dataclass(frozen=True)
class _Chunk:
    """An event of a draft: its requests are its request span's chunks of at most
    MAX_ATTEMPTS calls, `chunk` counting from 0 (otlp.request_id_of), stored one after the
    other: `rest` are the draft's calls after this chunk's, `drafted` its events as drafted."""

    event: dict[str, Any]
    draft: Draft
    chunk: int
    rest: list[dict[str, Any]]
    drafted: list[dict[str, Any]]
    # The stored request's naming fields, once a chunk follows a stored one (ingest.LateAttempts)
    named: dict[str, Any] = field(default_factory=dict)
    # Whether it holds what its request counts once (revenue, quality): the first chunk does,
    # and a chunk after one that was refused with them.
    carries_once: bool = True


def _ingest_chunks(
    conn: Connection,
    *,
    project: ProjectContext,
    chunks: list[_Chunk],
    outcome: Outcome,
    new: dict[bytes, list[SpanRecord]],
) -> list[_Chunk]:
    """Ingests the chunks' events; returns the next chunk of each draft with calls left: its
    calls after these, behind those that joined a stored request (reported after it was
    assembled) beyond what it holds, so that each request keeps them in the order they
    ended."""
    # The clock of ingest is its own: `now` may be a settle time injected by a test.
    ingested = ingest_in_transaction(conn, project=project, batch=Batch([c.event for c in chunks]))
    result = ingested.result
    outcome.requests += result.accepted
    outcome.duplicates += result.duplicates
    refused = set()
    for error in result.errors:
        _refuse(outcome, chunks[error.index].draft, error.error, received=new)
        refused.add(error.index)
    overflow: dict[uuid.UUID, Overflow] = {}
    if ingested.stored_before:
        # Assembled before: a call that ended after its request span, or came from another
        # process, joins the stored request rather than being taken for a re-export.
        late = add_late_attempts(
            conn, project=project, events=ingested.stored_before, now=utc_now()
        )
        outcome.amended += len(late.amended)
        # Each was counted a duplicate: not so when given calls, refused, or its calls moved on.
        outcome.duplicates -= len(late.amended | late.errors.keys() | late.overflow.keys())
        of_request = {c.event["request_id"]: c for c in chunks}
        for request_id, error in late.errors.items():
            _refuse(outcome, of_request[request_id].draft, error, received=new)
        overflow = late.overflow
    following = []
    for index, stored in enumerate(chunks):
        spilled = overflow.get(stored.event["request_id"])
        calls = [*(spilled.attempts if spilled else ()), *stored.rest]
        if not calls:
            continue
        draft, chunk = stored.draft, stored.chunk + 1
        names = spilled.named if spilled else stored.named
        # The chunk as drafted, for its fields and time, when there was one.
        base = stored.drafted[chunk] if chunk < len(stored.drafted) else stored.event
        # Revenue and quality go on with the calls when the chunk that held them was refused.
        carries_once = stored.carries_once and index in refused
        carried = {k: v for k, v in stored.event.items() if k in ONCE_PER_REQUEST and carries_once}
        event = {
            **without_once_fields(base),
            **names,
            **carried,
            "request_id": request_id_of(draft.trace_id, draft.request_span_id, chunk),
            "attempts": calls[:MAX_ATTEMPTS],
        }
        following.append(
            _Chunk(event, draft, chunk, calls[MAX_ATTEMPTS:], stored.drafted, names, carries_once)
        )
    return following


def _refuse(
    outcome: Outcome, draft: Draft, error: str, *, received: dict[bytes, list[SpanRecord]]
) -> None:
    new = {span.span_id for span in received.get(draft.trace_id, ())}
    refused_now = sum(1 for span_id in draft.span_ids if span_id in new)
    outcome.rejected_spans += refused_now
    outcome.refused_stored_spans += len(draft.span_ids) - refused_now
    outcome.errors.append(f"request span {draft.request_span_id.hex()}: {error}")


def _stored_spans(
    conn: Connection, *, project_id: int, trace_ids: list[bytes]
) -> dict[bytes, dict[bytes, SpanRecord]]:
    stored: dict[bytes, dict[bytes, SpanRecord]] = defaultdict(dict)
    with driver_cursor(conn) as cursor:
        cursor.execute(
            "select trace_id, span_id, parent_span_id, parent_is_remote, start_ns, end_ns,"
            " fields, resource, received_at, held from otlp_spans"
            " where project_id = %s and trace_id = any(%b::bytea[])",
            (project_id, trace_ids),
        )
        for trace_id, span_id, parent_id, remote, start, end, fields, resource, at, held in cursor:
            stored[trace_id][span_id] = SpanRecord(
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=parent_id or None,
                parent_is_remote=remote,
                start_ns=start,
                end_ns=end,
                attempt=fields.get("attempt"),
                request_fields=fields.get("request", {}),
                resource=resource,
                received_at=at,
                held=held,
            )
    return stored


# Binary arrays: psycopg quotes a text array element by element in Python. The claims go in in
# the order of their ids, so two exports sharing ids never deadlock.
_CLAIM = (
    "insert into otlp_response_ids (project_id, response_id, request_id, claimed_at)"
    " select %s, c.id, c.request_id, %s"
    " from unnest(%b::text[], %b::uuid[]) as c(id, request_id) order by c.id"
)


def _claim_response_ids(
    conn: Connection, *, project_id: int, drafts: list[Draft], now: datetime
) -> dict[uuid.UUID, set[str]]:
    """Per request, the response ids of its calls that are counted already: by another
    request, or by this one when it was stored before (a second instrumentation's report of
    a call, arriving after the first report's request was assembled). The claims are rows of
    otlp_response_ids, inserted in this transaction: a concurrent claim of the same id waits
    for it, then finds it taken."""
    already_counted: dict[uuid.UUID, set[str]] = defaultdict(set)
    # Among this export's reports of a call, the fullest is counted (the first of equals).
    fullest: dict[str, tuple[tuple[bool, bool, bool], uuid.UUID]] = {}
    for draft in drafts:
        for span in draft.attempts:
            response_id = span.attempt["response_id"]
            if response_id is not None:
                fullness = report_fullness(span)
                known = fullest.get(response_id)
                if known is None or fullness > known[0]:
                    fullest[response_id] = (fullness, draft.request_id)
    if not fullest:
        return already_counted
    owner = {response_id: request_id for response_id, (_, request_id) in fullest.items()}
    for draft in drafts:
        for span in draft.attempts:
            response_id = span.attempt["response_id"]
            if response_id is not None and owner[response_id] != draft.request_id:
                already_counted[draft.request_id].add(response_id)
    ids = list(owner)
    with driver_cursor(conn) as cursor:
        new = insert_new(
            cursor,
            _CLAIM,
            (project_id, now, ids, list(owner.values())),
            returning="response_id",
            savepoint="claims",
        )
    if new is None:
        return already_counted  # every claim was new
    taken = [i for i in ids if i not in new]
    if taken:
        # A claim of the same request counts only once that request is stored: one whose
        # event was refused keeps its claims, and its calls are not counted anywhere.
        rows = conn.execute(
            text(
                "select c.response_id, c.request_id, k.request_id is not null as stored "
                "from otlp_response_ids c left join request_keys k "
                "on k.project_id = c.project_id and k.request_id = c.request_id "
                "where c.project_id = :project_id and c.response_id = any(:ids)"
            ),
            {"project_id": project_id, "ids": taken},
        )
        for response_id, request_id, stored in rows:
            if request_id != owner[response_id] or stored:
                already_counted[owner[response_id]].add(response_id)
    return already_counted


def _hold(
    conn: Connection, *, project_id: int, drafts: list[Draft], tier_map, now: datetime
) -> None:
    if not drafts:
        return
    rows = []
    for draft in drafts:
        unmapped = draft.unmapped(tier_map)
        rows.append(
            {
                "project_id": project_id,
                "request_id": draft.request_id,
                "trace_id": draft.trace_id,
                "unmapped_models": sorted({a.attempt["request_model"] for a in unmapped}),
                "lookup_names": sorted(
                    {n for a in unmapped for n in (a.attempt["model"], a.attempt["request_model"])}
                ),
                "now": now,
            }
        )
    conn.execute(
        text(
            """
            insert into otlp_held_requests
                (project_id, request_id, trace_id, unmapped_models, lookup_names, held_at)
            values (:project_id, :request_id, :trace_id, :unmapped_models, :lookup_names, :now)
            on conflict (project_id, request_id) do update
            set unmapped_models = excluded.unmapped_models, lookup_names = excluded.lookup_names
            """
        ),
        rows,
    )


def _keep_waiting(
    conn: Connection,
    *,
    project_id: int,
    spans_of: dict[bytes, dict[bytes, SpanRecord]],
    stored: dict[bytes, dict[bytes, SpanRecord]],
    consumed: set[bytes],
    held_spans: set[bytes],
    request_spans: set[bytes],
    forget_before: datetime,
) -> None:
    """Deletes the spans that were assembled, stores the new ones still waiting (and the
    trace's other spans beside them, possible request spans), and marks held attempts. A
    trace left with no attempt span keeps only the spans naming `routeledger.*` request
    fields that no request was assembled under yet (their model calls may come in a later
    export), until REQUEST_SPAN_MEMORY after they came; the settle job then forgets them."""
    delete_ids: list[tuple[bytes, bytes]] = []
    insert: list[SpanRecord] = []
    newly_held: list[tuple[bytes, bytes]] = []
    for trace_id, spans in spans_of.items():
        stored_here = stored.get(trace_id, {})
        waiting = [s for s in spans.values() if s.is_attempt and s.span_id not in consumed]
        # Spans naming request fields no request was assembled under yet: their calls may
        # come later (a span with only an identity attribute, as a web app's spans carry,
        # is not kept for them).
        awaiting_calls = {
            s.span_id
            for s in spans.values()
            if s.received_at > forget_before
            and not s.request_fields.keys().isdisjoint(REQUEST_ATTRIBUTES)
        } - request_spans
        if not (stored_here or waiting or awaiting_calls):
            continue  # assembled whole from this export, no request span left: nothing to do
        for span in spans.values():
            awaits_calls = span.span_id in awaiting_calls
            gone = span.span_id in consumed or not (waiting or awaits_calls)
            if span.span_id in stored_here:
                if gone:
                    delete_ids.append((trace_id, span.span_id))
                elif span.span_id in held_spans and not span.held:
                    newly_held.append((trace_id, span.span_id))
            elif not gone:
                span.held = span.span_id in held_spans
                insert.append(span)
    if delete_ids:
        _on_spans(conn, "delete from otlp_spans", project_id=project_id, spans=delete_ids)
    if newly_held:
        _on_spans(
            conn, "update otlp_spans set held = true", project_id=project_id, spans=newly_held
        )
    if insert:
        _insert_spans(conn, project_id=project_id, spans=insert)


def _on_spans(
    conn: Connection, statement: str, *, project_id: int, spans: list[tuple[bytes, bytes]]
) -> None:
    """`statement` (a delete or update of otlp_spans) on these (trace id, span id) pairs."""
    conn.execute(
        text(
            f"{statement} where project_id = :project_id and (trace_id, span_id) in "
            "(select * from unnest(cast(:traces as bytea[]), cast(:spans as bytea[])))"
        ),
        {"project_id": project_id, "traces": [t for t, _ in spans], "spans": [s for _, s in spans]},
    )


def _insert_spans(conn: Connection, *, project_id: int, spans: Iterable[SpanRecord]) -> None:
    with driver_cursor(conn) as cur:
        cur.executemany(
            f"insert into otlp_spans ({_SPAN_COLUMNS}) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
            [
                (
                    project_id,
                    s.trace_id,
                    s.span_id,
                    s.parent_span_id,
                    s.parent_is_remote,
                    s.is_attempt,
                    s.held,
                    s.start_ns,
                    s.end_ns,
                    s.received_at,
                    Jsonb(s.fields),
                    Jsonb(s.resource),
                )  # fmt: skip
                for s in spans
            ],
        )


@dataclass(frozen=True)
class MappedModel:
    model: str
    tier: str
    updated_at: datetime
    released_requests: int


def map_model(
    engine: Engine, *, project_id: int, model: str, tier: str, now: datetime | None = None
) -> MappedModel:
    """Maps `model` to `tier` in the project's map, then assembles the requests it held."""
    with engine.begin() as conn:
        updated_at = set_model_tier(conn, project_id=project_id, model=model, tier=tier)
    released = release_model(engine, project_id=project_id, model=model, now=now)
    return MappedModel(model, tier, updated_at, released.released)
