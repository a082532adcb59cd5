"""Router calibration against bins computed by hand, its alert metric, and the routing flow
(intended tier -> first attempt's model -> served model) the Routing page draws."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from app.db import transaction
from app.periods import Period
from app.services.alerts import evaluate_rule, list_alerts
from app.services.calibration import router_calibration
from app.services.dashboard_queries import FlowLink, routing_flow
from app.services.rollups import run_rollup
from tests.helpers import attempt, auth, batch, event, make_project, post

MONDAY = datetime(2026, 9, 7, tzinfo=UTC)  # fixed: the same on any day the suite runs
FEATURE = "router-x"
ACCEPTED = [attempt()]
ESCALATED = [attempt(status="rejected"), attempt(model="acme-large", tier="premium")]
FAILED_OVER = [attempt(status="error"), attempt()]
FAILED = [attempt(status="timeout")]


def _requests(start: datetime, confidence: float | None, attempts: list, count: int) -> list:
    router = {"confidence": confidence} if confidence is not None else None
    return [
        event(*attempts, timestamp=(start + timedelta(minutes=i)).isoformat(), feature=FEATURE,
              router=router)
        for i in range(count)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def calibrated(live_api, engine):
    """Week 1 (Tuesday): bin 2 (0.25) 1 of 5 accepted, the others failed over; bin 5 (0.55)
    6 of 10, the others escalated; 0.7 (bin 7) 1 of 1; bin 9 (0.95) 8 of 10 and 1.0 once,
    accepted; 3 without a confidence and 2 failed. Week 2: bin 9 (0.9) 4 of 4."""
    import httpx

    project = make_project()
    week1, week2 = MONDAY + timedelta(days=1, hours=10), MONDAY + timedelta(days=8, hours=10)
    events = [
        *_requests(week1, 0.25, ACCEPTED, 1),
        *_requests(week1 + timedelta(minutes=10), 0.25, FAILED_OVER, 4),
        *_requests(week1 + timedelta(minutes=20), 0.55, ACCEPTED, 6),
        *_requests(week1 + timedelta(minutes=30), 0.55, ESCALATED, 4),
        *_requests(week1 + timedelta(minutes=40), 0.7, ACCEPTED, 1),
        *_requests(week1 + timedelta(minutes=50), 0.95, ACCEPTED, 8),
        *_requests(week1 + timedelta(minutes=60), 0.95, ESCALATED, 2),
        *_requests(week1 + timedelta(minutes=70), 1.0, ACCEPTED, 1),
        *_requests(week1 + timedelta(minutes=80), None, ACCEPTED, 3),
        *_requests(week1 + timedelta(minutes=90), None, FAILED, 2),
        *_requests(week2, 0.9, ACCEPTED, 4),
    ]
    with httpx.Client(base_url=live_api.url, timeout=30) as http:
        assert post(http, project.ingest_key, batch(*events)).status_code == 200
    run_rollup(engine)
    return project


def test_the_reliability_curve_and_the_weekly_error_are_the_hand_computed_ones(calibrated, engine):
    within = Period(MONDAY, MONDAY + timedelta(days=14))
    with engine.connect() as conn:
        found = router_calibration(
            conn, project_id=calibrated.project_id, within=within, feature=FEATURE
        )
    (first, week1), (second, week2) = found.weeks
    assert (first, second) == (MONDAY, MONDAY + timedelta(days=7))
    # Per bin: (requests, accepted, mean confidence).
    assert [(b.index, b.requests, b.accepted, b.mean_confidence) for b in week1.bins] == [
        (2, 5, 1, pytest.approx(0.25)),
        (5, 10, 6, pytest.approx(0.55)),
        (7, 1, 1, pytest.approx(0.7)),
        (9, 11, 9, pytest.approx(10.5 / 11)),
    ]
    # ECE = Σ |accepted − Σ confidence| over the bins / requests.
    assert week1.expected_calibration_error == pytest.approx((0.25 + 0.5 + 0.3 + 1.5) / 27)
    assert week2.expected_calibration_error == pytest.approx(0.4 / 4)
    assert found.overall.requests == 31
    assert found.overall.expected_calibration_error == pytest.approx(
        (0.25 + 0.5 + 0.3 + abs(13 - 14.1)) / 31
    )
    nine = found.overall.bins[-1]
    assert (nine.low, nine.high) == (0.9, 1.0)
    assert nine.accepted_rate.value == pytest.approx(13 / 15)


def test_the_calibration_error_alert_fires_on_its_window(calibrated, http):
    created = http.post(
        "/v1/alert-rules",
        json={"name": "router calibration", "metric": "calibration_error",
              "scope": {"feature": FEATURE}, "window_minutes": 24 * 60, "threshold": 0.05,
              "min_requests": 20, "recipients": ["pm@example.com"]},
        headers=auth(calibrated.admin_key),
    )  # fmt: skip
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    week1_end = MONDAY + timedelta(days=2)
    with transaction() as conn:
        assert (
            evaluate_rule(conn, project_id=calibrated.project_id, rule_id=rule_id, now=week1_end)
            == "fired"
        )
        (alert,) = list_alerts(conn, project_id=calibrated.project_id)
    assert alert["value"] == pytest.approx(2.55 / 27) and alert["requests"] == 27
    with transaction() as conn:  # week 2: four requests, under min_requests
        assert (
            evaluate_rule(
                conn,
                project_id=calibrated.project_id,
                rule_id=rule_id,
                now=week1_end + timedelta(days=7),
            )
            == "resolved"
        )


def test_the_routing_flow_goes_from_intent_through_the_first_model_to_the_served_one(
    calibrated, engine
):
    within = Period(MONDAY, MONDAY + timedelta(days=14))
    with engine.connect() as conn:
        links = routing_flow(conn, project_id=calibrated.project_id, within=within, feature=FEATURE)
    assert sorted(links, key=lambda link: link.requests) == [
        FlowLink("cheap", "acme-small", None, 2),
        FlowLink("cheap", "acme-small", "acme-large", 6),
        FlowLink("cheap", "acme-small", "acme-small", 28),
    ]


def test_the_flow_of_part_of_an_hour_comes_from_the_raw_rows_alike(calibrated, engine):
    # 10:15 to 11:35 on week 1's Tuesday: minutes of two hours, read from the raw rows.
    start = MONDAY + timedelta(days=1, hours=10, minutes=15)
    within = Period(start, start + timedelta(minutes=80))
    with engine.connect() as conn:
        links = routing_flow(conn, project_id=calibrated.project_id, within=within, feature=FEATURE)
        expected = conn.execute(
            text(
                """
                select r.intended_tier, a.model, r.served_model, count(*)
                from requests r join attempts a using (project_id, ts, request_id)
                where r.project_id = :project_id and a.position = 0
                  and r.ts >= :start and r.ts < :end
                group by 1, 2, 3
                """
            ),
            {"project_id": calibrated.project_id, "start": within.start, "end": within.end},
        ).all()
    assert sorted(links, key=lambda link: link.requests) == sorted(
        (FlowLink(*row) for row in expected), key=lambda link: link.requests
    )
    assert sum(link.requests for link in links) == 36 - 4 - 5  # after 10:15, before 11:35
