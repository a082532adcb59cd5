"""GET /v1/metrics/routing and /v1/metrics/customers on a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from app.services.rollups import run_rollup
from tests.helpers import attempt, auth, batch, event, make_project, post

HOUR = datetime(2026, 10, 31, 21, tzinfo=UTC)  # fixed: the same on any day the suite runs


def set_prices(http, project) -> None:
    response = http.post(
        "/v1/prices",
        json={
            "prices": [
                {"model": "acme-small", "input_per_mtok": "1", "output_per_mtok": "2",
                 "effective_from": "2020-01-01T00:00:00Z"},
                {"model": "acme-large", "input_per_mtok": "10", "output_per_mtok": "20",
                 "effective_from": "2020-01-01T00:00:00Z"},
            ]
        },
        headers=auth(project.admin_key),
    )  # fmt: skip
    assert response.status_code == 201, response.text


def at(minutes: int) -> str:
    return (HOUR + timedelta(minutes=minutes)).isoformat()


def test_routing_metrics_answer_the_contract(http, engine):
    project = make_project(baseline_model="acme-large")
    set_prices(http, project)
    http.put(
        "/v1/policies/support-chat",
        json={"split": {"cheap": 0.7, "premium": 0.3}, "effective_from": "2020-01-01T00:00:00Z"},
        headers=auth(project.admin_key),
    ).raise_for_status()
    events = [
        event(attempt(), timestamp=at(1), quality={"score": 1.0}),
        event(attempt(), timestamp=at(2), quality={"score": 0.5}),
        event(
            attempt(status="rejected"),
            attempt(model="acme-large", tier="premium"),
            timestamp=at(3),
        ),
        event(attempt(status="timeout"), timestamp=at(4)),
    ]
    assert post(http, project.ingest_key, batch(*events)).status_code == 200
    run_rollup(engine)

    response = http.get(
        "/v1/metrics/routing",
        params={"start": HOUR.isoformat(), "end": (HOUR + timedelta(hours=1)).isoformat()},
        headers=auth(project.read_key),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["requests"] == 4 and body["attempts"] == 5 and body["failed"] == 1
    assert body["fallback_rate"] == 0.25 and body["escalation_rate"] == 0.25
    assert body["failover_rate"] == 0.25
    assert body["intended_split"] == {"cheap": 1.0}
    assert body["served_split"] == pytest.approx({"cheap": 2 / 3, "premium": 1 / 3})
    assert body["policy_split"] == {"cheap": 0.7, "premium": 0.3}
    assert body["policy_deviation"] == pytest.approx(0.3)
    # acme-small: 1000 in at $1, 500 out at $2 per million = 0.002 per attempt
    small, large = Decimal("0.002"), Decimal("0.02")
    assert Decimal(body["cost_usd"]) == 4 * small + large
    assert Decimal(body["baseline_cost_usd"]) == 3 * large  # the failed request counts 0
    assert Decimal(body["savings_usd"]) == 3 * large - (4 * small + large)
    assert body["mean_quality"] == 0.75 and body["unpriced_requests"] == 0
    models = {(m["model"], m["tier"]): m for m in body["by_model"]}
    assert models[("acme-small", "cheap")]["attempts"] == 4
    assert models[("acme-small", "cheap")]["served"] == 2
    assert Decimal(models[("acme-large", "premium")]["cost_usd"]) == large


def test_savings_keep_every_digit_of_the_costs(http, engine):
    """Σ baseline − Σ cost at the precision money is summed at, not the default 28 digits."""
    project = make_project(baseline_model="acme-large")
    set_prices(http, project)
    cost = "0.000000123456789012345678901234"  # 30 places, as many as money may have
    served = attempt(input_tokens=1_000_000, output_tokens=0, cost_usd=cost)
    assert post(http, project.ingest_key, batch(event(served, timestamp=at(1)))).status_code == 200
    run_rollup(engine)
    within = {"start": HOUR.isoformat(), "end": (HOUR + timedelta(hours=1)).isoformat()}
    body = http.get("/v1/metrics/routing", params=within, headers=auth(project.read_key)).json()
    # The baseline: a million tokens at acme-large's $10 per million; 31 digits.
    assert body["savings_usd"] == "9.999999876543210987654321098766"


def test_a_model_without_a_price_has_an_unknown_cost_not_zero(http, engine):
    project = make_project(baseline_model=None)
    set_prices(http, project)
    events = [
        event(attempt(), timestamp=at(1)),
        event(attempt(model="no-price-anywhere"), timestamp=at(2)),
        event(attempt(model="no-price-anywhere"), attempt(), timestamp=at(3)),
    ]
    assert post(http, project.ingest_key, batch(*events)).status_code == 200
    run_rollup(engine)
    within = {"start": HOUR.isoformat(), "end": (HOUR + timedelta(hours=1)).isoformat()}
    body = http.get("/v1/metrics/routing", params=within, headers=auth(project.read_key)).json()
    models = {m["model"]: m for m in body["by_model"]}
    unpriced = models["no-price-anywhere"]
    assert (unpriced["cost_usd"], unpriced["unpriced_attempts"]) == (None, 2)
    assert Decimal(models["acme-small"]["cost_usd"]) == 2 * Decimal("0.002")
    assert body["cost_is_lower_bound"] and body["unpriced_requests"] == 2
    customers = http.get(
        "/v1/metrics/customers", params=within, headers=auth(project.read_key)
    ).json()["customers"]
    # Two of acme's three requests are unpriced: its cost is a lower bound, and says so.
    assert [(c["customer_id"], c["cost_is_lower_bound"], c["unpriced_requests"])
            for c in customers] == [("acme", True, 2)]  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [
        {"start": "2026-11-01T10:30:00Z", "end": "2026-11-02"},
        {"start": "2026-11-01", "end": "2026-11-01T10:00:01Z"},
        {"start": "2026-11-02", "end": "2026-11-01"},
        {"start": "yesterday"},
    ],
)
def test_periods_must_be_whole_hours(http, live_api, params):
    response = http.get("/v1/metrics/routing", params=params, headers=auth(live_api.read_key))
    assert response.status_code == 422, response.text


def test_both_bounds_wrong_are_both_named(http, live_api):
    params = {"start": "2026-11-01T00:00:00+05:30", "end": "2026-11-02T00:00:00+05:30"}
    response = http.get("/v1/metrics/routing", params=params, headers=auth(live_api.read_key))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("end: ") and "; start: " in detail, detail


def test_a_bare_date_means_its_midnight(http, live_api):
    response = http.get(
        "/v1/metrics/customers",
        params={"start": "2026-11-01", "end": "2026-11-02T00:00:00+00:00"},
        headers=auth(live_api.read_key),
    )
    assert response.status_code == 200
    assert response.json()["start"].startswith("2026-11-01T00:00:00")


def test_customers_prorate_revenue_records_and_list_negative_margins_first(http, engine):
    project = make_project()
    set_prices(http, project)
    events = [
        event(attempt(), customer_id="acme", timestamp=at(5), revenue_usd="0.001"),
        event(attempt(model="acme-large"), customer_id="globex", timestamp=at(6)),
    ]
    assert post(http, project.ingest_key, batch(*events)).status_code == 200
    day = HOUR.replace(hour=0)
    month_later = day + timedelta(days=30)
    http.post(
        "/v1/revenue",
        json={
            "records": [
                {"customer_id": "acme", "period_start": day.isoformat(),
                 "period_end": month_later.isoformat(), "amount_usd": "30"},
                {"customer_id": "initech", "period_start": day.isoformat(),
                 "period_end": (day + timedelta(days=10)).isoformat(), "amount_usd": "5"},
            ]
        },
        headers=auth(project.admin_key),
    ).raise_for_status()  # fmt: skip
    run_rollup(engine)
    response = http.get(
        "/v1/metrics/customers",
        params={"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()},
        headers=auth(project.read_key),
    )
    assert response.status_code == 200, response.text
    customers = response.json()["customers"]
    assert [c["customer_id"] for c in customers] == ["globex", "initech", "acme"]
    globex, initech, acme = customers
    assert Decimal(globex["margin_usd"]) == Decimal("-0.02") and globex["margin_pct"] is None
    assert Decimal(initech["revenue_usd"]) == Decimal("0.5") and initech["requests"] == 0
    assert Decimal(acme["revenue_usd"]) == Decimal("1.001")  # 30 / 30 days + per request
    assert Decimal(acme["margin_usd"]) == Decimal("0.999")
    assert acme["margin_pct"] == pytest.approx(0.999 / 1.001)
