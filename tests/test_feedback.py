"""Late feedback: stored once, held for requests not stored yet (bounded), applied when they
arrive, visible while it waits, dropped when it waited too long."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from app.services.batches import Batch
from app.services.feedback import held_summary, record_feedback, settle_held
from app.services.ingest import ingest_batch, ingest_in_transaction
from tests.helpers import event, make_project

NOW = datetime(2026, 7, 1, 12, tzinfo=UTC)


def feedback(conn, project_id: int, *items: dict, now: datetime = NOW):
    return record_feedback(conn, project_id=project_id, batch=Batch(list(items)), now=now)


def quality(engine, request_id: str) -> float | None:
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "select quality_score from requests where request_id = %s", (request_id,)
        ).scalar()


def test_the_same_item_posted_twice_is_stored_once(engine):
    project = make_project()
    sent = event(timestamp=NOW.isoformat())
    ingest_batch(engine, project_id=project.id, batch=Batch([sent]), now=NOW)
    item = {"request_id": sent["request_id"], "score": 0.4, "source": "user", "comment": "meh"}
    with engine.begin() as conn:
        first = feedback(conn, project.id, item)
        again = feedback(conn, project.id, item, {**item, "score": 0.8})
    assert (first.accepted, first.duplicates) == (1, 0)
    assert (again.accepted, again.duplicates) == (1, 1)
    with engine.connect() as conn:
        stored = (
            conn.exec_driver_sql(
                "select score from feedback where request_id = %s order by id",
                (sent["request_id"],),
            )
            .scalars()
            .all()
        )
    assert stored == [0.4, 0.8]
    assert quality(engine, sent["request_id"]) == 0.8


def test_an_item_stored_before_and_sent_again_after_a_new_one_leaves_the_new_score(engine):
    """A batch of a new score, then a copy of one stored before (a client's retry mixing
    both): the new score is the request's quality, not the repeated one."""
    project = make_project()
    sent = event(timestamp=NOW.isoformat())
    ingest_batch(engine, project_id=project.id, batch=Batch([sent]), now=NOW)
    old = {"request_id": sent["request_id"], "score": 0.9, "source": "user"}
    with engine.begin() as conn:
        feedback(conn, project.id, old)
        feedback(conn, project.id, {**old, "score": 0.5})
        mixed = feedback(conn, project.id, {**old, "score": 0.1}, old)
    assert (mixed.accepted, mixed.duplicates) == (1, 1)
    assert quality(engine, sent["request_id"]) == 0.1


def test_feedback_before_its_request_is_applied_when_the_request_arrives(engine):
    project = make_project()
    early = event(timestamp=NOW.isoformat())
    with engine.begin() as conn:
        result = feedback(
            conn,
            project.id,
            {"request_id": early["request_id"], "score": 0.3},
            {"request_id": early["request_id"], "score": 0.7, "source": "user"},  # the latest
        )
        waiting = held_summary(conn, project_id=project.id)
    assert (result.accepted, result.held, result.errors) == (0, 2, [])
    assert (waiting.held, waiting.oldest_received_at) == (2, NOW)

    ingest_batch(engine, project_id=project.id, batch=Batch([early]), now=NOW)
    assert quality(engine, early["request_id"]) == 0.7
    with engine.connect() as conn:
        assert held_summary(conn, project_id=project.id).held == 0
        applied = conn.exec_driver_sql(
            "select count(*) from feedback where request_id = %s", (early["request_id"],)
        ).scalar()
    assert applied == 2


def held_while_stored(engine, project_id: int, score: float) -> str:
    """A request stored with a feedback item held meanwhile: the item came while the
    request's transaction was open, after it applied what was held. Its request id."""
    from app.services.projects import load_project_context

    sent = event(timestamp=NOW.isoformat())
    with engine.begin() as storing:
        context = load_project_context(storing, project_id=project_id)
        ingest_in_transaction(storing, project=context, batch=Batch([sent]), now=NOW)
        with engine.begin() as conn:
            held = feedback(conn, project_id, {"request_id": sent["request_id"], "score": score})
        assert held.held == 1
    return sent["request_id"]


def test_feedback_held_while_its_request_was_being_stored_is_applied_by_the_job(engine):
    """The request's transaction applied what was held before the item came, and the item
    could not see the request yet: held, it is applied by the next `feedback` job."""
    project = make_project()
    request_id = held_while_stored(engine, project.id, 0.2)
    assert quality(engine, request_id) is None
    run = settle_held(engine, now=NOW)
    assert (run.applied, run.expired) == (1, 0)
    assert quality(engine, request_id) == 0.2
    with engine.connect() as conn:
        assert held_summary(conn, project_id=project.id).held == 0


def test_held_feedback_applied_late_leaves_a_later_score_the_quality(engine):
    """Held while its request's transaction was open, then a later score came straight in
    before the job ran: the job stores the held item and leaves the later score."""
    project = make_project()
    request_id = held_while_stored(engine, project.id, 0.2)
    with engine.begin() as conn:
        later = feedback(
            conn,
            project.id,
            {"request_id": request_id, "score": 0.9},
            now=NOW + timedelta(minutes=1),
        )
    assert later.accepted == 1
    assert settle_held(engine, now=NOW + timedelta(minutes=5)).applied == 1
    assert quality(engine, request_id) == 0.9


def test_the_job_waits_for_a_later_score_being_stored_and_leaves_it(engine):
    """The job applies a held score while a later one is being stored straight in (its
    transaction open, the request's row locked): it waits for it, then leaves it."""
    import threading
    import time

    project = make_project()
    request_id = held_while_stored(engine, project.id, 0.2)
    ran = {}
    with engine.connect() as direct:
        direct.begin()
        later = {"request_id": request_id, "score": 0.9}
        assert feedback(direct, project.id, later, now=NOW + timedelta(minutes=1)).accepted == 1
        job = threading.Thread(
            target=lambda: ran.update(run=settle_held(engine, now=NOW + timedelta(minutes=5)))
        )
        job.start()
        try:
            deadline = time.monotonic() + 20
            while not waiting_on_a_lock(engine) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert waiting_on_a_lock(engine), "the job never waited for the open transaction"
        finally:
            direct.commit()
            job.join(30)
    assert ran["run"].applied == 1
    assert quality(engine, request_id) == 0.9


def waiting_on_a_lock(engine) -> bool:
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "select exists (select from pg_stat_activity "
            "where datname = current_database() and wait_event_type = 'Lock')"
        ).scalar_one()


def test_a_repeated_item_takes_no_room_among_held_feedback(engine, monkeypatch):
    """With room for one more held item, a batch that repeats one held already (a retried
    batch) and one of its own holds its new item; the repeats are duplicates."""
    from app.settings import get_settings

    monkeypatch.setenv("ROUTELEDGER_FEEDBACK_HOLD_MAX", "2")
    get_settings.cache_clear()
    try:
        project = make_project()
        first, second = ({"request_id": str(uuid.uuid4()), "score": 0.5} for _ in range(2))
        with engine.begin() as conn:
            assert feedback(conn, project.id, first).held == 1
        with engine.begin() as conn:
            result = feedback(conn, project.id, first, second, second)
        assert (result.held, result.duplicates, result.errors) == (1, 2, [])
        with engine.connect() as conn:
            assert held_summary(conn, project_id=project.id).held == 2
        # Full now: a new item and its repeat are both refused, neither a duplicate.
        third = {"request_id": str(uuid.uuid4()), "score": 0.5}
        with engine.begin() as conn:
            result = feedback(conn, project.id, third, first, third)
        assert (result.held, result.duplicates) == (0, 1)
        assert [(e.index, "HOLD_MAX" in e.error) for e in result.errors] == [(0, True), (2, True)]
    finally:
        get_settings.cache_clear()


def test_held_feedback_is_bounded_and_expires(engine, monkeypatch):
    from app.settings import get_settings

    monkeypatch.setenv("ROUTELEDGER_FEEDBACK_HOLD_MAX", "2")
    get_settings.cache_clear()
    try:
        project = make_project()
        items = [{"request_id": str(uuid.uuid4()), "score": 0.5} for _ in range(3)]
        with engine.begin() as conn:
            result = feedback(conn, project.id, *items)
        assert result.held == 2
        assert [(e.index, e.error.split(":")[0]) for e in result.errors] == [(2, "request_id")]
        assert "HOLD_MAX" in result.errors[0].error

        expired = settle_held(engine, now=NOW + timedelta(days=6))
        with engine.connect() as conn:
            assert held_summary(conn, project_id=project.id).held == 2  # not yet
        expired = settle_held(engine, now=NOW + timedelta(days=7, seconds=1))
        assert expired.expired >= 2
        with engine.connect() as conn:
            assert held_summary(conn, project_id=project.id).held == 0
    finally:
        get_settings.cache_clear()
