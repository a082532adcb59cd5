"""Re-pricing: unpriced requests get a price once one exists; an explicit correction
re-prices a model's range with an audit record; the rollups follow."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

from app.periods import Period
from app.schemas import PriceIn
from app.services import ingest, rollups
from app.services.ingest import Batch
from app.services.metrics import routing_metrics
from app.services.pricing import add_prices
from app.services.reprice import correct_prices, run_reprice
from tests.helpers import attempt, event, make_project

# The last hour of June; the hour after it is July's.
HOUR = datetime(2026, 6, 30, 23, tzinfo=UTC)
WITHIN = Period(HOUR, HOUR + timedelta(hours=1))
NOW = HOUR + timedelta(hours=5)


def ingest_batch(engine, **kwargs):
    return ingest.ingest_batch(engine, now=NOW, **kwargs)


def price(engine, project_id: int, model: str, input_price: str, since: datetime) -> None:
    with engine.begin() as conn:
        add_prices(
            conn,
            project_id=project_id,
            prices=[PriceIn(model=model, input_per_mtok=input_price, output_per_mtok="0",
                            effective_from=since.isoformat())],
        )  # fmt: skip


def metrics(engine, project_id: int):
    rollups.run_rollup(engine, now=NOW)
    with engine.connect() as conn:
        return routing_metrics(conn, project_id=project_id, within=WITHIN)


def test_unpriced_requests_are_priced_once_a_price_exists(engine):
    project = make_project(baseline_model="novel-model")
    events = [
        event(attempt(model="novel-model", input_tokens=1_000_000), timestamp=HOUR.isoformat())
        for _ in range(3)
    ]
    ingest_batch(engine, project_id=project.id, batch=Batch(events))
    before = metrics(engine, project.id)
    assert before.unpriced_requests == 3 and before.baseline_unknown == 3
    run_reprice(engine)  # no price yet: nothing to do for this project
    assert metrics(engine, project.id).unpriced_requests == 3

    price(engine, project.id, "novel-model", "2", HOUR - timedelta(days=1))
    run_reprice(engine)
    after = metrics(engine, project.id)
    assert after.unpriced_requests == 0 and after.cost_usd == Decimal(6)
    assert after.baseline_cost_usd == Decimal(6) and after.savings_usd == 0
    with engine.connect() as conn:
        audit = conn.exec_driver_sql(
            "select kind, requests_changed, baselines_changed from repricings"
            " where project_id = %s",
            (project.id,),
        ).all()
        baselines = conn.exec_driver_sql(
            "select old_baseline_cost_usd, new_baseline_cost_usd from repriced_baselines"
            " where project_id = %s",
            (project.id,),
        ).all()
    assert audit == [("unpriced", 3, 3)]
    assert baselines == [(None, Decimal(2))] * 3


def test_a_correction_reprices_a_range_and_keeps_an_audit(engine, database_url):
    project = make_project(baseline_model=None)
    price(engine, project.id, "acme-small", "1", HOUR - timedelta(days=1))
    inside = event(attempt(input_tokens=1_000_000, output_tokens=0), timestamp=HOUR.isoformat())
    client_cost = event(
        attempt(input_tokens=1_000_000, output_tokens=0, cost_usd="0.5"),
        timestamp=(HOUR + timedelta(minutes=1)).isoformat(),
    )
    outside = event(
        attempt(input_tokens=1_000_000, output_tokens=0),
        timestamp=(HOUR + timedelta(hours=1)).isoformat(),
    )
    ingest_batch(engine, project_id=project.id, batch=Batch([inside, client_cost, outside]))
    assert metrics(engine, project.id).cost_usd == Decimal("1.5")

    # The price was wrong since the start of HOUR: a corrected price and an explicit correction.
    price(engine, project.id, "acme-small", "3", HOUR)
    change = correct_prices(
        engine, project_id=project.id, model="acme-small", start=HOUR,
        end=HOUR + timedelta(hours=1), reason="contract price",
    )  # fmt: skip
    assert (change.attempts, change.requests) == (1, 1)
    assert (change.cost_before, change.cost_after) == (Decimal(1), Decimal(3))
    assert metrics(engine, project.id).cost_usd == Decimal("3.5")  # client cost untouched
    with psycopg.connect(database_url) as conn:
        audit = conn.execute(
            "select r.kind, r.model, r.reason, a.old_cost_usd, a.new_cost_usd "
            "from repricings r join repriced_attempts a on a.repricing_id = r.id "
            "where r.project_id = %s",
            (project.id,),
        ).fetchall()
        outside_cost = conn.execute(
            "select cost_usd from requests where request_id = %s", (outside["request_id"],)
        ).fetchone()[0]
    assert audit == [("correction", "acme-small", "contract price", Decimal(1), Decimal(3))]
    assert outside_cost == Decimal(1)  # outside the corrected range: unchanged


def test_a_correction_in_several_batches_keeps_one_audit_record(engine, database_url, monkeypatch):
    """A run goes in batches of REQUESTS_PER_TRANSACTION requests, a transaction each: they
    add up in one repricings row, which says what the whole run changed."""
    from app.services import reprice

    monkeypatch.setattr(reprice, "REQUESTS_PER_TRANSACTION", 2)
    project = make_project(baseline_model=None)
    price(engine, project.id, "acme-small", "1", HOUR - timedelta(days=1))
    events = [
        event(attempt(input_tokens=1_000_000, output_tokens=0),
              timestamp=(HOUR + timedelta(minutes=n)).isoformat())
        for n in range(5)
    ]  # fmt: skip
    ingest_batch(engine, project_id=project.id, batch=Batch(events))
    price(engine, project.id, "acme-small", "3", HOUR)
    change = correct_prices(
        engine, project_id=project.id, model="acme-small", start=HOUR,
        end=HOUR + timedelta(hours=1), reason="contract price",
    )  # fmt: skip
    assert (change.attempts, change.requests, change.cost_after) == (5, 5, Decimal(15))
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select r.attempts_changed, r.requests_changed, r.cost_before_usd, "
            "r.cost_after_usd, (select count(*) from repriced_attempts a "
            "where a.repricing_id = r.id) from repricings r where r.project_id = %s",
            (project.id,),
        ).fetchall()
    assert rows == [(5, 5, Decimal(5), Decimal(15), 5)]


def test_a_correction_of_the_baseline_model_keeps_the_baselines_it_changed(engine):
    """Correcting the baseline model's price changes no attempt's cost, but every baseline
    cost (and so the savings) in the range: each is kept in the audit, old and new."""
    project = make_project(baseline_model="acme-large")
    price(engine, project.id, "acme-small", "1", HOUR - timedelta(days=1))
    price(engine, project.id, "acme-large", "10", HOUR - timedelta(days=1))
    served = event(attempt(input_tokens=1_000_000, output_tokens=0), timestamp=HOUR.isoformat())
    ingest_batch(engine, project_id=project.id, batch=Batch([served]))
    assert metrics(engine, project.id).savings_usd == Decimal(9)

    price(engine, project.id, "acme-large", "20", HOUR)
    change = correct_prices(
        engine, project_id=project.id, model="acme-large", start=HOUR,
        end=HOUR + timedelta(hours=1), reason="baseline list price",
    )  # fmt: skip
    assert (change.attempts, change.requests, change.baselines) == (0, 1, 1)
    assert metrics(engine, project.id).savings_usd == Decimal(19)
    with engine.connect() as conn:
        audit = conn.exec_driver_sql(
            "select r.baselines_changed, b.request_id, b.old_baseline_cost_usd,"
            " b.new_baseline_cost_usd, b.old_price_id <> b.new_price_id"
            " from repricings r join repriced_baselines b"
            " on b.project_id = r.project_id and b.repricing_id = r.id"
            " where r.project_id = %s",
            (project.id,),
        ).all()
    assert [tuple(row) for row in audit] == [
        (1, uuid.UUID(served["request_id"]), Decimal(10), Decimal(20), True)
    ]


def test_a_repricing_committed_after_a_rollup_took_its_hour_still_reaches_the_metrics(engine):
    """The hour is already dirty (feedback), a re-pricing batch writes new costs into it, and
    a rollup takes the hour and rolls it from before the re-pricing commits: the re-pricing's
    own mark, found once it commits, rolls the hour again."""
    from app.services.feedback import record_feedback
    from app.services.projects import load_project_context
    from app.services.reprice import REPRICE_JOB, Audit, _candidates, reprice_requests

    project = make_project(baseline_model=None)
    events = [
        event(attempt(model="novel-model", input_tokens=1_000_000, output_tokens=0),
              timestamp=(HOUR + timedelta(minutes=n)).isoformat())
        for n in range(3)
    ]  # fmt: skip
    ingest_batch(engine, project_id=project.id, batch=Batch(events))
    assert metrics(engine, project.id).unpriced_requests == 3
    with engine.begin() as conn:
        record_feedback(
            conn, project_id=project.id,
            batch=Batch([{"request_id": events[0]["request_id"], "score": 0.5}]),
        )  # fmt: skip
        rollups.collect_dirty_hours(conn, job=rollups.ROLLUP_JOB)  # the hour is dirty now
    price(engine, project.id, "novel-model", "2", HOUR - timedelta(days=1))
    with engine.begin() as repricing:
        rollups.lock_project(repricing, job=REPRICE_JOB, project_id=project.id)
        batch = _candidates(
            repricing, project_id=project.id, where="is_unpriced", params={},
            after=(datetime(1900, 1, 1, tzinfo=UTC), "00000000-0000-0000-0000-000000000000"),
        )  # fmt: skip
        context = load_project_context(repricing, project_id=project.id)
        reprice_requests(
            repricing,
            project=context,
            requests=batch,
            model=None,
            audit=Audit({"kind": "unpriced"}),
        )
        assert metrics(engine, project.id).unpriced_requests == 3  # rolled before the commit
    after = metrics(engine, project.id)
    assert (after.unpriced_requests, after.cost_usd) == (0, Decimal(6))
