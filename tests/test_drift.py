"""PSI against hand-computed values, and the hourly drift job over real rows."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from app.periods import floor_hour
from app.services.drift import psi, run_drift
from app.services.ingest import Batch, ingest_batch
from app.services.rollups import run_rollup
from tests.helpers import attempt, event, make_project


def test_psi_of_identical_distributions_is_zero():
    assert psi({"cheap": 3, "premium": 1}, {"cheap": 0.75, "premium": 0.25}) == 0


def test_psi_matches_a_hand_computation():
    # (0.5 − 0.9) ln(0.5 / 0.9) + (0.5 − 0.1) ln(0.5 / 0.1)
    assert psi({"a": 0.5, "b": 0.5}, {"a": 0.9, "b": 0.1}) == pytest.approx(0.878889831, abs=1e-9)


def test_an_empty_bin_is_floored_at_one_in_ten_thousand():
    # a: (1 − 0.5) ln 2; b: (0.0001 − 0.5) ln(0.0001 / 0.5)
    assert psi({"a": 10}, {"a": 5, "b": 5}) == pytest.approx(4.604318, abs=1e-6)


def before(end: datetime, **delta: int) -> str:
    return (end - timedelta(**delta)).isoformat()


def test_the_drift_job_stores_psi_and_both_distributions(engine, database_url):
    project = make_project()
    now = datetime(2027, 3, 1, 0, 30, tzinfo=UTC)  # the reference window is in February
    end = floor_hour(now)
    reference = [
        event(attempt(tier="cheap", input_tokens=100), intended_tier="cheap",
              router={"confidence": 0.95}, timestamp=before(end, days=3, minutes=i))
        for i in range(30)
    ]  # fmt: skip
    current = [
        event(attempt(tier=tier, input_tokens=5000), intended_tier=tier,
              router={"confidence": 0.55}, timestamp=before(end, hours=2, minutes=i))
        for i, tier in enumerate(["cheap", "premium"] * 10)
    ]  # fmt: skip
    # Requests without a router confidence count in the other distributions only.
    unrouted = [
        event(attempt(tier="cheap", input_tokens=5000), intended_tier="cheap",
              timestamp=before(end, hours=3, minutes=i))
        for i in range(4)
    ]  # fmt: skip
    batch = Batch(reference + current + unrouted)
    assert ingest_batch(engine, project_id=project.id, batch=batch, now=now).accepted
    run_rollup(engine, now=now)
    run_drift(engine, now=now)
    run_drift(engine, now=now)  # idempotent: the same rows
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select dimension, psi, current_count, reference_count, current_distribution, "
            "reference_distribution from drift_results where project_id = %s order by 1",
            (project.id,),
        ).fetchall()
    found = {row[0]: row[1:] for row in rows}
    assert set(found) == {"confidence", "input_tokens", "tier"}
    tier_psi, current_n, reference_n, current_split, reference_split = found["tier"]
    assert (current_n, reference_n) == (24, 30)
    cheap, premium = 14 / 24, 10 / 24
    assert current_split == pytest.approx({"cheap": cheap, "premium": premium})
    assert reference_split == {"cheap": 1.0}
    expected = (cheap - 1) * math.log(cheap) + (premium - 0.0001) * math.log(premium / 0.0001)
    assert tier_psi == pytest.approx(expected)
    assert found["confidence"][1] == 20  # the four without a confidence are in no bin
    assert found["confidence"][3] == {"0.5-0.6": 1.0}
    assert found["input_tokens"][4] == {"64-127": 1.0}
    assert found["input_tokens"][3] == {"4096-8191": 1.0}
