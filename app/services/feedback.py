"""Quality that arrives after the request: stored as history, latest score on the request.

An item (request, score, source, comment) is stored once per project: the same item posted
again is a duplicate. Feedback for a request not stored yet (it may be on its way, or spooled
in an SDK) is held, up to ROUTELEDGER_FEEDBACK_HOLD_MAX items per project for
ROUTELEDGER_FEEDBACK_HOLD_DAYS, and applied by ingest in the transaction that stores the
request; `held_summary` shows what waits, and the `feedback` job applies what is held for a
request stored since (held while the request's transaction was open) and drops (and counts)
what waited too long.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.db import driver_cursor
from app.models import feedback, held_feedback, request_keys, requests
from app.periods import utc_now
from app.schemas import FeedbackItem, FeedbackResult, HeldFeedback, ItemError
from app.services.batches import Batch, request_id_of, validate_item
from app.services.rollups import ROLLUP_JOB, mark_written
from app.settings import get_settings


def record_feedback(
    conn: Connection, *, project_id: int, batch: Batch, now: datetime | None = None
) -> FeedbackResult:
    """Stores feedback for requests of this project, holds it for requests not stored yet.
    An invalid item is an error for that item only; the latest score becomes the request's."""
    now = now or utc_now()
    items: list[tuple[int, FeedbackItem]] = []
    errors: list[ItemError] = []
    for index, raw in enumerate(batch.items):
        found = validate_item(FeedbackItem, raw, whole="item", check_text=batch.has_bad_text)
        if isinstance(found, str):
            errors.append(ItemError(index=index, request_id=request_id_of(raw), error=found))
        else:
            items.append((index, found))
    ids = sorted({item.request_id for _, item in items})
    known = dict(
        conn.execute(
            select(request_keys.c.request_id, request_keys.c.ts).where(
                request_keys.c.project_id == project_id, request_keys.c.request_id.in_(ids)
            )
        ).all()
    )
    for_known = [item for _, item in items if item.request_id in known]
    waiting = [(index, item) for index, item in items if item.request_id not in known]
    # Items held already, or repeated in the batch, take no room: the first of each new item
    # is held while there is room, and its repeats share its fate (a duplicate, or refused).
    new_waiting = _not_held_yet(conn, project_id=project_id, waiting=waiting)
    room = get_settings().routeledger_feedback_hold_max - _held_count(conn, project_id=project_id)
    refused = {_item_order(_fields(item)) for _, item in new_waiting[max(room, 0) :]}
    refused_items = [(i, item) for i, item in waiting if _item_order(_fields(item)) in refused]
    for index, item in refused_items:
        errors.append(
            ItemError(
                index=index,
                request_id=str(item.request_id),
                error="request_id: no such request in this project, and the project's held "
                "feedback is full (ROUTELEDGER_FEEDBACK_HOLD_MAX)",
            )
        )
    # Every other waiting item is held now, or a duplicate.
    not_refused = len(waiting) - len(refused_items)
    to_hold = new_waiting[: max(room, 0)]
    stored = _store(
        conn, project_id=project_id, items=[(item, now) for item in for_known], known=known
    )
    held = _insert_once(
        held_feedback,
        conn,
        [{**_fields(item), "project_id": project_id, "received_at": now} for _, item in to_hold],
    )
    return FeedbackResult(
        accepted=len(stored),
        held=len(held),
        duplicates=len(for_known) - len(stored) + not_refused - len(held),
        errors=sorted(errors, key=lambda e: e.index),
    )


def _not_held_yet(
    conn: Connection, *, project_id: int, waiting: list[tuple[int, FeedbackItem]]
) -> list[tuple[int, FeedbackItem]]:
    """The waiting items (index, item) that are not held already, each once (the first of
    its repeats in the batch): what the unique item index would let in."""
    if not waiting:
        return []
    held = {
        _item_order(row._mapping)
        for row in conn.execute(
            select(
                held_feedback.c.request_id, held_feedback.c.score, held_feedback.c.source,
                held_feedback.c.comment,
            ).where(
                held_feedback.c.project_id == project_id,
                held_feedback.c.request_id.in_({item.request_id for _, item in waiting}),
            )
        )
    }  # fmt: skip
    new = []
    for index, item in waiting:
        key = _item_order(_fields(item))
        if key not in held:
            held.add(key)
            new.append((index, item))
    return new


def apply_held(conn: Connection, *, project_id: int, stored: dict[uuid.UUID, datetime]) -> int:
    """Applies the held feedback of requests this transaction stored ({request_id: ts});
    returns how many items."""
    if not stored or not _any_held(conn, project_id=project_id):
        return 0
    rows = conn.execute(
        delete(held_feedback)
        .where(
            held_feedback.c.project_id == project_id,
            held_feedback.c.request_id.in_(list(stored)),
        )
        .returning(*held_feedback.c)
    ).all()
    rows.sort(key=lambda row: (row.received_at, row.id))  # the latest is applied last
    items = [
        (
            FeedbackItem(
                request_id=r.request_id, score=r.score, source=r.source, comment=r.comment
            ),
            r.received_at,
        )
        for r in rows
    ]
    return len(_store(conn, project_id=project_id, items=items, known=stored))


def _any_held(conn: Connection, *, project_id: int) -> bool:
    # On every ingest call: psycopg's cursor (app.db.driver_cursor).
    with driver_cursor(conn) as cursor:
        cursor.execute(
            "select exists (select from held_feedback where project_id = %s)", (project_id,)
        )
        return cursor.fetchone()[0]


def _fields(item: FeedbackItem) -> dict:
    return {
        "request_id": item.request_id,
        "score": item.score,
        "source": item.source,
        "comment": item.comment,
    }


def _insert_once(table, conn: Connection, rows: list[dict]) -> list:
    """Inserts the rows a unique item index does not already hold; returns those inserted
    (each as its item: request id, score, source, comment)."""
    if not rows:
        return []
    item = (table.c.request_id, table.c.score, table.c.source, table.c.comment)
    return conn.execute(
        pg_insert(table).values(rows).on_conflict_do_nothing().returning(*item)
    ).all()


def _item(row: dict) -> tuple:
    return (row["request_id"], row["score"], row["source"], row["comment"])


def _item_order(row: dict) -> tuple:
    return (row["request_id"], row["score"], row["source"] or "", row["comment"] or "")


def _store(
    conn: Connection,
    *,
    project_id: int,
    items: list[tuple[FeedbackItem, datetime]],
    known: dict[uuid.UUID, datetime],
) -> list:
    """Stores the items (in order, each with when it was received) of stored requests once
    each, and makes the latest new score of each request its quality, unless feedback
    received after it is stored already (an item held a while, applied after a later score
    came straight in); returns the rows stored."""
    rows = [
        {**_fields(item), "project_id": project_id, "request_ts": known[item.request_id],
         "received_at": received_at}
        for item, received_at in items
    ]  # fmt: skip
    # In key order, as the requests below: two transactions storing the same items never
    # deadlock on the unique item index.
    stored = _insert_once(feedback, conn, sorted(rows, key=_item_order))
    if not stored:
        return stored
    # The latest item of each request stored now: an item stored before (a duplicate, even
    # later in the batch) changes nothing.
    new = {tuple(row) for row in stored}
    latest = {r["request_id"]: r for r in rows if _item(r) in new}  # later items win
    # In key order, locked and updated: two transactions on the same requests never deadlock.
    applied = sorted(latest.values(), key=lambda r: (r["request_ts"], r["request_id"]))
    # The requests' rows locked first, in key order, and then checked in a statement of its
    # own: a transaction storing later feedback for one of them now, still open, is waited
    # for, and its feedback seen (a check in the update itself would see the database as it
    # was when the update began, before that feedback).
    conn.execute(
        select(requests.c.request_id)
        .where(
            requests.c.project_id == project_id,
            tuple_(requests.c.ts, requests.c.request_id).in_(
                [(r["request_ts"], r["request_id"]) for r in applied]
            ),
        )
        .order_by(requests.c.ts, requests.c.request_id)
        .with_for_update()
    ).all()
    received_later = (
        select(feedback.c.id)
        .where(
            feedback.c.project_id == project_id,
            feedback.c.request_id == bindparam("b_id"),
            feedback.c.received_at > bindparam("b_received"),
        )
        .exists()
    )
    conn.execute(
        update(requests)
        .where(
            requests.c.project_id == project_id,
            requests.c.ts == bindparam("b_ts"),
            requests.c.request_id == bindparam("b_id"),
            ~received_later,
        )
        .values(quality_score=bindparam("b_score"), quality_source=bindparam("b_source")),
        [
            {
                "b_ts": r["request_ts"],
                "b_id": r["request_id"],
                "b_score": r["score"],
                "b_source": r["source"],
                "b_received": r["received_at"],
            }
            for r in applied
        ],  # fmt: skip
    )
    hours = [r["request_ts"] for r in applied]
    mark_written(conn, job=ROLLUP_JOB, project_id=project_id, hours=hours)
    return stored


def _held_count(conn: Connection, *, project_id: int) -> int:
    return conn.execute(
        select(func.count()).where(held_feedback.c.project_id == project_id)
    ).scalar_one()


def held_summary(conn: Connection, *, project_id: int) -> HeldFeedback:
    """What waits for its request: how many items, since when, and the bounds."""
    settings = get_settings()
    row = conn.execute(
        select(func.count(), func.min(held_feedback.c.received_at)).where(
            held_feedback.c.project_id == project_id
        )
    ).one()
    return HeldFeedback(
        held=row[0],
        oldest_received_at=row[1],
        hold_days=settings.routeledger_feedback_hold_days,
        hold_max=settings.routeledger_feedback_hold_max,
    )


@dataclass(frozen=True)
class FeedbackRun:
    applied: int
    expired: int


def settle_held(engine: Engine, *, now: datetime | None = None) -> FeedbackRun:
    """The `feedback` job. Applies held feedback whose request is stored now: an item held
    while its request's transaction was still open, after that transaction applied what
    was held (it could not see the item, nor the item the request). Then drops what waited
    longer than ROUTELEDGER_FEEDBACK_HOLD_DAYS (its request never came). Says how many."""
    with engine.connect() as conn:
        found = conn.execute(
            select(held_feedback.c.project_id, request_keys.c.request_id, request_keys.c.ts)
            .distinct()
            .join(
                request_keys,
                (request_keys.c.project_id == held_feedback.c.project_id)
                & (request_keys.c.request_id == held_feedback.c.request_id),
            )
        ).all()
    stored: dict[int, dict[uuid.UUID, datetime]] = {}
    for project_id, request_id, ts in found:
        stored.setdefault(project_id, {})[request_id] = ts
    applied = 0
    for project_id, requests_of in stored.items():
        with engine.begin() as conn:
            applied += apply_held(conn, project_id=project_id, stored=requests_of)
    cutoff = (now or utc_now()) - timedelta(days=get_settings().routeledger_feedback_hold_days)
    with engine.begin() as conn:
        result = conn.execute(delete(held_feedback).where(held_feedback.c.received_at < cutoff))
    return FeedbackRun(applied=applied, expired=result.rowcount)
