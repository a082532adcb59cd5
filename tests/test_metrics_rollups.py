"""Rollup-based metrics equal a direct computation over the raw rows (hypothesis), rollups
are idempotent and re-roll only the hours they must."""

from __future__ import annotations

import bisect
import math
import statistics
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row
from sqlalchemy import text

from app.periods import Period, floor_day, floor_hour
from app.schemas import PolicyIn, PriceIn
from app.services import rollups
from app.services.dashboard_queries import (
    customer_series,
    experiment_arms,
    routing_series,
    total_of,
)
from app.services.ingest import Batch, ingest_batch, ingest_in_transaction
from app.services.intervals import Estimate, mean_interval, wilson_interval
from app.services.metrics import Filters, customer_metrics, routing_metrics, shares
from app.services.policies import set_policy, total_variation
from app.services.pricing import add_prices
from app.services.projects import load_project_context
from app.services.rollups import (
    LATENCY_BOUNDS_MS,
    ROLLUPS,
    latency_quantile,
    reroll_hours,
    take_pending,
)
from tests.helpers import make_project

# Fixed instants, across the end of a day and of a month: the same on any day the suite runs.
HOURS = 5
FIRST_HOUR = datetime(2026, 5, 31, 21, tzinfo=UTC)
NOW_HOUR = FIRST_HOUR + timedelta(hours=HOURS + 1)
# When the tests' events are ingested and rolled up ("now" for ingest and the rollup job).
NOW = NOW_HOUR + timedelta(minutes=10)
EPOCH_PRICE = "2000-01-01T00:00:00Z"

attempts_st = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["acme-small", "acme-large", "mystery-model"]),
        "tier": st.sampled_from(["cheap", "standard", "premium"]),
        "input_tokens": st.integers(0, 5000),
        "output_tokens": st.integers(0, 2000),
        "status": st.sampled_from(["ok", "ok", "error", "timeout", "rejected"]),
    },
    optional={
        "cache_read_tokens": st.integers(0, 1000),
        "cost_usd": st.decimals("0", "0.5", places=7).map(str),
        "latency_ms": st.floats(0, 100_000, allow_nan=False),
    },
)

event_st = st.fixed_dictionaries(
    {
        "offset_seconds": st.integers(0, HOURS * 3600 - 1),
        "customer_id": st.sampled_from(["acme", "globex", "initech"]),
        "feature": st.sampled_from(["chat", "search"]),
        "attempts": st.lists(attempts_st, min_size=1, max_size=3),
    },
    optional={
        "intended_tier": st.sampled_from(["cheap", "standard", "premium"]),
        "experiment": st.sampled_from(
            [{"name": "router-v4", "arm": "control"}, {"name": "router-v4", "arm": "treatment"}]
        ),
        "quality": st.floats(0, 1).map(lambda s: {"score": s}),
        "revenue_usd": st.decimals("0", "0.1", places=6).map(str),
    },
)

filters_st = st.one_of(
    st.just(Filters()),
    st.builds(Filters, feature=st.sampled_from(["chat", "search"])),
    st.builds(Filters, customer_id=st.sampled_from(["acme", "globex"])),
    st.builds(Filters, experiment=st.just("router-v4"), arm=st.sampled_from(["treatment", None])),
)


def to_event(spec: dict, *, base: datetime = FIRST_HOUR) -> dict:
    spec = dict(spec)
    at = base + timedelta(seconds=spec.pop("offset_seconds"))
    return {"request_id": str(uuid.uuid4()), "timestamp": at.isoformat(), **spec}


def ingest(engine, project_id: int, events: list[dict]) -> None:
    result = ingest_batch(engine, project_id=project_id, batch=Batch(events), now=NOW)
    assert not result.errors, result.errors


def run_rollup(engine, **options):
    return rollups.run_rollup(engine, now=NOW, **options)


def priced_project(engine):
    project = make_project(baseline_model="acme-large")
    with engine.begin() as conn:
        add_prices(
            conn,
            project_id=project.id,
            prices=[
                PriceIn(model="acme-small", input_per_mtok="0.25", output_per_mtok="1.25",
                        effective_from=EPOCH_PRICE),
                PriceIn(model="acme-large", input_per_mtok="3", output_per_mtok="15",
                        cache_read_per_mtok="0.3", effective_from=EPOCH_PRICE),
            ],
        )  # fmt: skip
    return project


def raw_rows(database_url: str, project_id: int) -> tuple[list[dict], list[dict]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        requests = conn.execute(
            "select * from requests where project_id = %s", (project_id,)
        ).fetchall()
        attempts = conn.execute(
            "select a.*, r.feature, r.customer_id, r.experiment_name, r.experiment_arm "
            "from attempts a join requests r using (project_id, ts, request_id) "
            "where a.project_id = %s",
            (project_id,),
        ).fetchall()
    return requests, attempts


def selected(row: dict, filters: Filters, within: Period) -> bool:
    return (
        within.start <= row["ts"] < within.end
        and filters.feature in (None, row["feature"])
        and filters.customer_id in (None, row["customer_id"])
        and filters.experiment in (None, row["experiment_name"])
        and filters.arm in (None, row["experiment_arm"])
    )


def direct_policy(rows: list[dict], policies: list[tuple[datetime, dict]]) -> tuple:
    """Each chat request is held to the chat policy in force at its time (the latest of
    `policies`, (effective_from, split) pairs, from before it); the policy split is their
    request-weighted mix."""
    held = []
    for row in rows:
        in_force = [split for since, split in sorted(policies, key=lambda p: p[0])
                    if since <= row["ts"]]  # fmt: skip
        if row["feature"] == "chat" and in_force:
            held.append((row, in_force[-1]))
    if not held:
        return None, None
    mix: Counter = Counter()
    for _, split in held:
        for tier, share in split.items():
            mix[tier] += share / len(held)
    intended = shares(Counter(row["intended_tier"] for row, _ in held))
    return dict(mix), total_variation(intended, dict(mix))


def direct_latency(rows: list[dict], q: float) -> float | None:
    # width_bucket's rule: the number of bounds at or below the value.
    histogram = Counter(
        bisect.bisect_right(LATENCY_BOUNDS_MS, r["latency_ms"])
        for r in rows
        if r["latency_ms"] is not None
    )
    return latency_quantile(histogram, q)


SPLITS = (
    {"cheap": 0.7, "standard": 0.2, "premium": 0.1},
    {"cheap": 0.5, "standard": 0.3, "premium": 0.2},
    {"cheap": 1.0},
)


def chat_policies(engine, project_id: int, *, base: datetime, minutes: list[int]) -> list:
    """Chat policies taking effect `minutes` after `base` (on the hour or not), each with the
    next of SPLITS; returns them as (effective_from, split)."""
    policies = [
        (base + timedelta(minutes=m), SPLITS[i % len(SPLITS)]) for i, m in enumerate(minutes)
    ]
    with engine.begin() as conn:
        for since, split in policies:
            policy = PolicyIn(split=split, effective_from=since.isoformat())
            set_policy(conn, project_id=project_id, feature="chat", policy=policy)
    return policies


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=st.lists(event_st, min_size=1, max_size=40),
    filters=filters_st,
    first=st.integers(0, HOURS - 1),
    length=st.integers(1, HOURS + 1),
    policy_minutes=st.lists(st.integers(0, HOURS * 60), max_size=3, unique=True),
)
def test_rollup_metrics_equal_direct_computation(
    engine, database_url, specs, filters, first, length, policy_minutes
):
    project = priced_project(engine)
    policies = chat_policies(engine, project.id, base=FIRST_HOUR, minutes=policy_minutes)
    ingest(engine, project.id, [to_event(s) for s in specs])
    run_rollup(engine)

    within = Period(
        FIRST_HOUR + timedelta(hours=first), FIRST_HOUR + timedelta(hours=first + length)
    )
    assert_metrics_equal_raw_rows(engine, database_url, project.id, within, filters,
                                  policies=policies)  # fmt: skip


def assert_metrics_equal_raw_rows(
    engine, database_url: str, project_id: int, within: Period, filters: Filters, *, policies
) -> None:
    """routing_metrics and customer_metrics over the rollups equal the same figures computed
    from the raw rows; `policies` are the chat feature's (effective_from, split)."""
    with engine.connect() as conn:
        got = routing_metrics(conn, project_id=project_id, within=within, filters=filters)

    requests, attempts = raw_rows(database_url, project_id)
    rows = [r for r in requests if selected(r, filters, within)]
    tries = [a for a in attempts if selected(a, filters, within)]
    assert got.requests == len(rows)
    assert got.attempts == sum(r["attempt_count"] for r in rows) == len(tries)
    assert got.fallbacks == sum(r["is_fallback"] for r in rows)
    assert got.escalations == sum(r["is_escalation"] for r in rows)
    assert got.failovers == sum(r["is_failover"] for r in rows)
    assert got.failed == sum(r["is_failed"] for r in rows)
    assert got.cost_usd == sum((r["cost_usd"] for r in rows), Decimal(0))
    assert got.unpriced_requests == sum(r["is_unpriced"] for r in rows)
    known_baselines = [r["baseline_cost_usd"] for r in rows if r["baseline_cost_usd"] is not None]
    assert got.baseline_cost_usd == sum(known_baselines, Decimal(0))
    assert got.baseline_unknown == len(rows) - len(known_baselines)
    if rows and got.baseline_known:
        assert got.savings_usd == got.baseline_cost_usd - got.cost_usd
    assert got.revenue_usd == sum((r["revenue_usd"] or Decimal(0) for r in rows), Decimal(0))
    assert got.intended_split == pytest.approx(shares(Counter(r["intended_tier"] for r in rows)))
    served = Counter(r["served_tier"] for r in rows if not r["is_failed"])
    assert got.served_split == pytest.approx(shares(served))
    if rows:
        assert got.escalation_rate == pytest.approx(got.escalations / len(rows))
    scores = [r["quality_score"] for r in rows if r["quality_score"] is not None]
    assert got.mean_quality == (pytest.approx(sum(scores) / len(scores)) if scores else None)

    policy, deviation = direct_policy(rows, policies)
    assert got.policy_split == (pytest.approx(policy) if policy else None)
    assert got.policy_deviation == (pytest.approx(deviation) if deviation is not None else None)
    assert got.latency_p50_ms == pytest.approx(direct_latency(rows, 0.5))
    assert got.latency_p95_ms == pytest.approx(direct_latency(rows, 0.95))

    by_model = {(m.model, m.tier): m for m in got.by_model}
    assert set(by_model) == {(a["model"], a["tier"]) for a in tries} | {
        (r["served_model"], r["served_tier"]) for r in rows if not r["is_failed"]
    }
    for (model, tier), figures in by_model.items():
        mine = [a for a in tries if (a["model"], a["tier"]) == (model, tier)]
        assert figures.attempts == len(mine)
        assert figures.cost_usd == sum((a["cost_usd"] or Decimal(0) for a in mine), Decimal(0))
        assert figures.unpriced_attempts == sum(a["cost_usd"] is None for a in mine)
        assert figures.served == sum(
            1 for r in rows if (r["served_model"], r["served_tier"]) == (model, tier)
        )

    with engine.connect() as conn:
        customers = customer_metrics(conn, project_id=project_id, within=within)
    in_period = [r for r in requests if within.start <= r["ts"] < within.end]
    assert {c.customer_id: c.requests for c in customers} == Counter(
        r["customer_id"] for r in in_period
    )
    for customer in customers:
        mine = [r for r in in_period if r["customer_id"] == customer.customer_id]
        assert customer.cost_usd == sum((r["cost_usd"] for r in mine), Decimal(0))
        revenue = sum((r["revenue_usd"] or Decimal(0) for r in mine), Decimal(0))
        assert customer.margin_usd == revenue - customer.cost_usd
    assert [c.margin_usd for c in customers] == sorted(c.margin_usd for c in customers)


# Several whole days before today: the daily rollups hold them once the rollup has run.
DAYS = 4
FIRST_DAY = datetime(2026, 2, 26, tzinfo=UTC)  # to March 2: across the end of February
days_events_st = st.lists(
    st.tuples(event_st, st.integers(0, DAYS * 86_400 - 1)).map(
        lambda pair: {**pair[0], "offset_seconds": pair[1]}
    ),
    min_size=1,
    max_size=40,
)
# Chat policies taking effect at midnight, on the hour, and inside an hour (minutes after
# FIRST_DAY).
days_policy_minutes_st = st.lists(
    st.sampled_from([0, 24 * 60, (24 + 13) * 60, (24 + 13) * 60 + 20, (48 + 7) * 60 + 59]),
    max_size=2,
    unique=True,
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=days_events_st,
    filters=filters_st,
    first=st.integers(0, DAYS * 24 - 1),
    length=st.integers(1, DAYS * 24 + 30),
    policy_minutes=days_policy_minutes_st,
)
def test_metrics_over_days_equal_direct_computation(
    engine, database_url, specs, filters, first, length, policy_minutes
):
    """Whole days come from the daily rollups, the hours around them from the hourly ones,
    a day on which a policy changed after midnight hour by hour, an hour in which it changed
    after the hour from the raw rows: the same figures."""
    project = priced_project(engine)
    policies = chat_policies(engine, project.id, base=FIRST_DAY, minutes=policy_minutes)
    ingest(engine, project.id, [to_event(spec, base=FIRST_DAY) for spec in specs])
    run_rollup(engine)

    start = FIRST_DAY + timedelta(hours=first)
    within = Period(start, start + timedelta(hours=length))
    assert_metrics_equal_raw_rows(engine, database_url, project.id, within, filters,
                                  policies=policies)  # fmt: skip
    requests, _ = raw_rows(database_url, project.id)
    rows = [r for r in requests if selected(r, filters, within)]
    with engine.connect() as conn:
        daily = total_of(
            routing_series(conn, project_id=project.id, within=within, filters=filters,
                           bucket_hours=24)
        )  # fmt: skip
    assert daily.requests == len(rows)
    assert daily.cost_usd == sum((r["cost_usd"] for r in rows), Decimal(0))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=days_events_st,
    customer=st.sampled_from(["acme", "globex"]),
    bucket_hours=st.sampled_from([1, 3, 24]),
    first=st.integers(0, DAYS * 24 - 1),
    minutes=st.sampled_from([0, 0, 25]),
    length=st.integers(1, DAYS * 24 + 30),
    policy_minutes=days_policy_minutes_st,
)
def test_customer_series_equals_direct_computation(
    engine, database_url, specs, customer, bucket_hours, first, minutes, length, policy_minutes
):
    """One customer's series from its tier rollups (days, hours, and raw minutes at the edges
    and where a policy took effect inside an hour): each bucket's figures and served tiers
    are its requests' own."""
    project = priced_project(engine)
    chat_policies(engine, project.id, base=FIRST_DAY, minutes=policy_minutes)
    ingest(engine, project.id, [to_event(spec, base=FIRST_DAY) for spec in specs])
    run_rollup(engine)
    start = FIRST_DAY + timedelta(hours=first, minutes=minutes)
    within = Period(start, start + timedelta(hours=length))
    with engine.connect() as conn:
        points = customer_series(conn, project_id=project.id, within=within,
                                 customer_id=customer, bucket_hours=bucket_hours)  # fmt: skip

    requests, _ = raw_rows(database_url, project.id)
    rows = [r for r in requests if selected(r, Filters(customer_id=customer), within)]
    assert points[0].start <= within.start < points[0].end
    assert points[-1].start < within.end <= points[-1].end
    for point, following in zip(points, points[1:], strict=False):
        assert point.end == following.start == point.start + timedelta(hours=bucket_hours)
    for point in points:
        mine = [r for r in rows if point.start <= r["ts"] < point.end]
        assert point.requests == len(mine)
        assert point.input_tokens == sum(r["input_tokens"] for r in mine)
        assert point.output_tokens == sum(r["output_tokens"] for r in mine)
        assert point.cost_usd == sum((r["cost_usd"] for r in mine), Decimal(0))
        assert point.unpriced_requests == sum(r["is_unpriced"] for r in mine)
        assert point.revenue_usd == sum((r["revenue_usd"] or Decimal(0) for r in mine), Decimal(0))
        assert point.served_counts == Counter(r["served_tier"] for r in mine if not r["is_failed"])


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=st.lists(
        st.tuples(
            event_st,
            st.integers(0, DAYS * 86_400 - 1),
            st.sampled_from(["control", "treatment", "treatment"]),
        ).map(
            lambda t: {
                **t[0],
                "offset_seconds": t[1],
                "experiment": {"name": "router-v4", "arm": t[2]},
            }  # fmt: skip
        ),
        min_size=4,
        max_size=40,
    ),
    first=st.integers(0, DAYS * 24 - 1),
    length=st.integers(6, DAYS * 24 + 30),
)
def test_experiment_arms_equal_direct_computation(engine, database_url, specs, first, length):
    """An experiment's arms from the rollups (days, hours and raw minutes alike): counts and
    means exact, spreads (from sums of squares) as the requests' own sample deviations."""
    project = priced_project(engine)
    ingest(engine, project.id, [to_event(spec, base=FIRST_DAY) for spec in specs])
    run_rollup(engine)
    start = FIRST_DAY + timedelta(hours=first, minutes=first % 7 * 5)
    within = Period(start, start + timedelta(hours=length))
    with engine.connect() as conn:
        arms = experiment_arms(conn, project_id=project.id, within=within, experiment="router-v4")

    requests, _ = raw_rows(database_url, project.id)
    rows = [r for r in requests if selected(r, Filters(experiment="router-v4"), within)]
    by_arm = {arm: [r for r in rows if r["experiment_arm"] == arm]
              for arm in sorted({r["experiment_arm"] for r in rows})}  # fmt: skip
    assert [a.arm for a in arms] == list(by_arm)
    for got, mine in zip(arms, by_arm.values(), strict=True):
        costs = [float(r["cost_usd"]) for r in mine]
        scores = [r["quality_score"] for r in mine if r["quality_score"] is not None]
        assert got.requests == len(mine)
        assert got.unpriced_requests == sum(r["is_unpriced"] for r in mine)
        assert got.escalation_rate == wilson_interval(
            sum(r["is_escalation"] for r in mine), len(mine)
        )
        assert_estimate(got.cost_per_request, costs)
        assert got.quality_count == len(scores)
        assert_estimate(got.mean_quality, scores)


def assert_estimate(got: Estimate, values: list[float]) -> None:
    """A mean with its normal-approximation interval, as computed from the values."""
    if not values:
        assert got == Estimate(None, None, None)
        return
    expected = mean_interval(
        statistics.fmean(values),
        statistics.stdev(values) if len(values) > 1 else None,
        len(values),
    )
    assert got.value == pytest.approx(expected.value, rel=1e-9, abs=1e-12)
    for bound, want in ((got.low, expected.low), (got.high, expected.high)):
        assert (bound is None) == (want is None)
        if want is not None:
            assert bound == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_a_policy_taking_effect_within_an_hour_holds_the_requests_after_it(engine, database_url):
    project = priced_project(engine)
    day = FIRST_DAY + timedelta(days=2)
    policies = chat_policies(engine, project.id, base=day, minutes=[13 * 60 + 20, 15 * 60])
    events = spread_events(HOURS * 4)
    for i, event in enumerate(events):
        event["timestamp"] = (day + timedelta(hours=10 + i % 8, minutes=i)).isoformat()
        event["intended_tier"] = ("cheap", "premium")[i % 2]
    ingest(engine, project.id, events)
    run_rollup(engine)
    within = Period(day - timedelta(days=1), day + timedelta(days=2))
    assert_metrics_equal_raw_rows(engine, database_url, project.id, within, Filters(),
                                  policies=policies)  # fmt: skip
    with engine.connect() as conn:
        split = routing_metrics(conn, project_id=project.id, within=within).policy_split
    # Requests of 13:00-13:20 had no policy; those of 13:20-15:00 the first, later the second.
    assert split != SPLITS[0] and split != SPLITS[1]


def test_a_day_whose_hours_changed_is_read_by_the_hour_until_it_is_folded_again(
    engine, database_url
):
    project = priced_project(engine)
    day = FIRST_DAY + timedelta(days=1)
    events = [{**event, "customer_id": "acme"} for event in spread_events(HOURS)]
    for event in events:
        event["timestamp"] = (
            datetime.fromisoformat(event["timestamp"]) - FIRST_HOUR + day
        ).isoformat()
    ingest(engine, project.id, events)
    run_rollup(engine)
    within = Period(day, day + timedelta(days=1))

    def requests_now() -> tuple[int, int, int]:
        """Requests of the day: all of them, all customers', one customer's."""
        with engine.connect() as conn:
            routing = routing_metrics(conn, project_id=project.id, within=within)
            customers = customer_metrics(conn, project_id=project.id, within=within)
            acme = routing_metrics(
                conn, project_id=project.id, within=within, filters=Filters(customer_id="acme")
            )
        return routing.requests, sum(c.requests for c in customers), acme.requests

    def folded_requests() -> int:
        """Requests of the day in its daily rows, read or not."""
        with psycopg.connect(database_url) as conn:
            return conn.execute(
                "select sum(requests) from rollup_routing_daily where project_id = %s",
                (project.id,),
            ).fetchone()[0]

    assert requests_now() == (HOURS, HOURS, HOURS)
    late = {**spread_events(1)[0], "timestamp": (day + timedelta(hours=3)).isoformat()}
    ingest(engine, project.id, [late])
    # Only added to the hourly rollups: the day waits for its fold, and is read by the hour.
    with engine.begin() as conn:
        taken = take_pending(conn, project_id=project.id, day=day)
    assert taken.added == [day + timedelta(hours=3)]
    assert requests_now() == (HOURS + 1, HOURS + 1, HOURS + 1)
    assert folded_requests() == HOURS  # the daily rows are stale, and unread
    run_rollup(engine)
    assert requests_now() == (HOURS + 1, HOURS + 1, HOURS + 1)
    assert folded_requests() == HOURS + 1


def test_the_current_day_is_not_folded_before_it_is_over(engine, database_url):
    project = priced_project(engine)
    ingest(engine, project.id, spread_events(HOURS))
    run_rollup(engine)
    with psycopg.connect(database_url) as conn:
        days = conn.execute(
            "select distinct day from rollup_routing_daily where project_id = %s", (project.id,)
        ).fetchall()
    today = floor_day(NOW)
    assert all(day < today for (day,) in days)
    assert len(days) == len({floor_day(FIRST_HOUR + timedelta(hours=h)) for h in range(HOURS)}
                            - {today})  # fmt: skip


def rollup_snapshot(database_url: str, project_id: int) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "select hour, feature, intended_tier, served_tier, served_model, "
            "requests, cost_usd, latency_buckets, latency_counts, rolled_at "
            "from rollup_routing_hourly where project_id = %s order by 1, 2, 3, 4, 5",
            (project_id,),
        ).fetchall()


def spread_events(count: int) -> list[dict]:
    return [
        to_event(
            {
                "offset_seconds": (i * 3600 + 60) % (HOURS * 3600),
                "customer_id": "acme",
                "feature": "chat",
                "attempts": [
                    {
                        "model": "acme-small",
                        "tier": "cheap",
                        "input_tokens": 10,
                        "output_tokens": 5,
                        "status": "ok",
                        "latency_ms": 100.0 + i,
                    }
                ],
            }
        )  # fmt: skip
        for i in range(count)
    ]


def test_rerunning_the_rollup_changes_nothing(engine, database_url):
    project = priced_project(engine)
    ingest(engine, project.id, spread_events(HOURS))
    run_rollup(engine)
    first = [row[:-1] for row in rollup_snapshot(database_url, project.id)]
    assert len(first) == HOURS
    run_rollup(engine)
    assert [row[:-1] for row in rollup_snapshot(database_url, project.id)] == first


def test_a_late_event_re_rolls_only_its_hour(engine, database_url):
    project = priced_project(engine)
    ingest(engine, project.id, spread_events(HOURS))
    run_rollup(engine)
    before = {row[0]: row for row in rollup_snapshot(database_url, project.id)}
    late = spread_events(1)  # the first hour again
    ingest(engine, project.id, late)
    run_rollup(engine)
    after = {row[0]: row for row in rollup_snapshot(database_url, project.id)}
    late_hour = floor_hour(datetime.fromisoformat(late[0]["timestamp"]))
    assert after[late_hour][5] == before[late_hour][5] + 1
    assert {h: r for h, r in after.items() if h != late_hour} == {
        h: r for h, r in before.items() if h != late_hour
    }


def test_late_feedback_re_rolls_its_hour(engine):
    from app.services.feedback import record_feedback

    project = priced_project(engine)
    events = spread_events(2)
    ingest(engine, project.id, events)
    run_rollup(engine)
    within = Period(FIRST_HOUR, NOW_HOUR)
    with engine.connect() as conn:
        assert routing_metrics(conn, project_id=project.id, within=within).mean_quality is None
    with engine.begin() as conn:
        record_feedback(
            conn,
            project_id=project.id,
            batch=Batch([{"request_id": events[1]["request_id"], "score": 0.25}]),
        )
    run_rollup(engine)
    with engine.connect() as conn:
        assert routing_metrics(conn, project_id=project.id, within=within).mean_quality == 0.25


def test_two_rollups_at_once_give_the_result_of_one(engine, database_url):
    project = priced_project(engine)
    ingest(engine, project.id, spread_events(HOURS * 3))
    runs = [threading.Thread(target=run_rollup, args=(engine,)) for _ in range(3)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    racing = [row[:-1] for row in rollup_snapshot(database_url, project.id)]
    with psycopg.connect(database_url) as conn:
        conn.execute("delete from rollup_routing_hourly where project_id = %s", (project.id,))
        conn.execute(
            "insert into dirty_hours (job, project_id, hour) "
            "select 'rollup', %s, h from generate_series(%s::timestamptz, %s, '1 hour') h",
            (project.id, FIRST_HOUR, NOW_HOUR),
        )
    run_rollup(engine)
    assert [row[:-1] for row in rollup_snapshot(database_url, project.id)] == racing
    assert sum(row[5] for row in racing) == HOURS * 3


def rollup_tables_snapshot(database_url: str, project_id: int) -> dict[str, list[tuple]]:
    """Every rollup row of the project, table by table (without when it was rolled)."""
    snapshot = {}
    with psycopg.connect(database_url) as conn:
        for table in ROLLUPS:
            for grain in table.grains:
                columns = ", ".join((grain.column, *table.columns))
                snapshot[table.at(grain)] = conn.execute(
                    f"select {columns} from {table.at(grain)} where project_id = %s "
                    f"order by {columns}",
                    (project_id,),
                ).fetchall()
    return snapshot


def test_rolling_on_two_connections_gives_the_rows_of_one(engine, database_url):
    project = priced_project(engine)
    events = spread_events(HOURS * 4)
    for i, event in enumerate(events):  # over five days: batches for both connections
        shifted = datetime.fromisoformat(event["timestamp"]) - timedelta(days=i % 5)
        event["timestamp"] = shifted.isoformat()
    ingest(engine, project.id, events)
    run_rollup(engine, connections=1)
    one = rollup_tables_snapshot(database_url, project.id)
    assert sum(row[2] for row in one["rollup_customers_hourly"]) == len(events)
    assert one["rollup_daily"] and one["rollup_models_daily"]
    run = roll_whole(
        engine, database_url, project.id, since=FIRST_HOUR - timedelta(days=5), connections=2
    )
    assert run.days >= 4
    assert rollup_tables_snapshot(database_url, project.id) == one


def roll_whole(engine, database_url, project_id: int, *, since: datetime, **options):
    """Deletes the project's rollup rows and rolls every hour from `since` to NOW_HOUR again,
    whole, from raw rows; returns the run."""
    with psycopg.connect(database_url) as conn:
        for table in rollup_tables_snapshot(database_url, project_id):
            conn.execute(f"delete from {table} where project_id = %s", (project_id,))
        conn.execute(
            "insert into dirty_hours (job, project_id, hour) "
            "select 'rollup', %s, h from generate_series(%s::timestamptz, %s, '1 hour') h",
            (project_id, since, NOW_HOUR),
        )
    return run_rollup(engine, **options)


def assert_same_rollups(got: dict[str, list[tuple]], expected: dict[str, list[tuple]]) -> None:
    """The two snapshots hold the same rows, float sums to a billionth: a sum of floats depends
    on the order it adds them in, and that order follows the random request ids (the money
    and the counts are exact). Rounding both to a number of digits is not enough: two sums a
    bit apart round apart whenever they straddle a rounding boundary."""

    def same(one, other) -> bool:
        if isinstance(one, float) and isinstance(other, float):
            return math.isclose(one, other, rel_tol=1e-9)
        return one == other

    assert got.keys() == expected.keys()
    for table, rows in expected.items():
        assert len(got[table]) == len(rows), table
        for got_row, row in zip(got[table], rows, strict=True):
            assert len(got_row) == len(row) and all(map(same, got_row, row)), (table, got_row, row)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(st.lists(event_st, min_size=1, max_size=12), min_size=2, max_size=5),
    held=st.integers(0, 4),
    scored=st.integers(0, 4),
)
def test_adding_requests_run_by_run_equals_rolling_their_hour_whole(
    engine, database_url, batches, held, scored
):
    """Ingests into one hour between rollup runs, one of them committed after a run that
    started while its transaction was open, feedback on a request meanwhile: the rollup rows
    equal those of the hour rolled whole from its raw rows."""
    from app.services.feedback import record_feedback

    project = priced_project(engine)
    batches = [
        [to_event({**s, "offset_seconds": s["offset_seconds"] % 3600}, base=NOW_HOUR) for s in b]
        for b in batches
    ]
    for i, batch in enumerate(batches):
        if i == held % len(batches):
            with engine.connect() as conn, conn.begin():
                project_context = load_project_context(conn, project_id=project.id)
                ingest_in_transaction(conn, project=project_context, batch=Batch(batch), now=NOW)
                run_rollup(engine)  # takes the others' pending requests, not these
        else:
            ingest(engine, project.id, batch)
        if i == scored:
            with engine.begin() as conn:
                record_feedback(
                    conn,
                    project_id=project.id,
                    batch=Batch([{"request_id": batches[0][0]["request_id"], "score": 0.5}]),
                )
        run_rollup(engine)
    added = rollup_tables_snapshot(database_url, project.id)
    assert sum(row[2] for row in added["rollup_customers_hourly"]) == sum(map(len, batches))
    roll_whole(engine, database_url, project.id, since=NOW_HOUR)
    assert_same_rollups(rollup_tables_snapshot(database_url, project.id), added)


def test_an_hour_with_more_pending_than_a_run_adds_is_re_rolled_whole(engine, database_url):
    project = priced_project(engine)
    events = spread_events(HOURS * 3)  # three in each hour
    ingest(engine, project.id, events[: HOURS * 2])
    run_rollup(engine)
    ingest(engine, project.id, events[HOURS * 2 :] + spread_events(2)[:1])  # two in the first
    day = floor_day(FIRST_HOUR)
    with engine.begin() as conn:
        taken = take_pending(conn, project_id=project.id, day=day, at_most=1)
        assert taken.whole == [FIRST_HOUR]
        # The others of the day, one run of additions each.
        assert taken.added == [FIRST_HOUR + timedelta(hours=h) for h in (1, 2)]
        reroll_hours(conn, project_id=project.id, hours=taken.whole)
    run_rollup(engine)
    stepped = rollup_tables_snapshot(database_url, project.id)
    assert sum(row[2] for row in stepped["rollup_customers_hourly"]) == HOURS * 3 + 1
    roll_whole(engine, database_url, project.id, since=FIRST_HOUR)
    assert_same_rollups(rollup_tables_snapshot(database_url, project.id), stepped)


def test_a_commit_held_open_across_a_rollup_still_reaches_the_metrics(engine):
    """An ingest that waits behind a lock commits after a rollup ran, stamped received long
    before that rollup: the next rollup still counts it."""
    project = priced_project(engine)
    ingest(engine, project.id, spread_events(1))
    run_rollup(engine)
    late = spread_events(2)[1:]
    blocker = engine.connect()
    blocker.begin()
    blocker.execute(text("lock table request_keys in share mode"))  # ingest's insert waits
    waiting = threading.Thread(
        target=ingest_batch,
        args=(engine,),
        kwargs={"project_id": project.id, "batch": Batch(late), "now": NOW - timedelta(minutes=3)},
    )
    try:
        waiting.start()
        wait_for_lock_wait(engine, "insert into request_keys")
        run_rollup(engine)
    finally:
        blocker.rollback()
        blocker.close()
        waiting.join(timeout=60)
    run_rollup(engine)
    with engine.connect() as conn:
        found = routing_metrics(conn, project_id=project.id, within=Period(FIRST_HOUR, NOW_HOUR))
    assert found.requests == 2


def wait_for_lock_wait(engine, query_start: str) -> None:
    """Waits until a session runs a query starting so and waits for a lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(
                text(
                    "select 1 from pg_stat_activity where wait_event_type = 'Lock' "
                    "and query like :start"
                ),
                {"start": query_start + "%"},
            ).first():
                return
        time.sleep(0.05)
    raise AssertionError(f"no session waited on a lock running {query_start!r}")
