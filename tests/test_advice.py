"""Routing advice on constructed evidence, through the real API: a cheap tier that passes 97%
of the reference's cases is recommended and one at 70% is not, too few cases is insufficient
evidence, a price change flips the recommendation, online scores and late feedback, quality
floors, what-ifs, the CSV and the documented answers."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from app.services.intervals import ratio_interval, weighted_sum_interval, wilson_interval
from app.services.rollups import run_rollup
from tests.helpers import attempt, auth, batch, event, make_project, post

END = datetime(2026, 10, 15, tzinfo=UTC)  # fixed: the same on any day the suite runs
PERIOD = {"start": (END - timedelta(days=30)).isoformat(), "end": END.isoformat()}
CHEAP, MID, LARGE = "acme-small", "acme-mid", "acme-large"
PRICES = {CHEAP: ("1", "2"), MID: ("3", "6"), LARGE: ("10", "20")}  # per million, in / out


def _post_prices(http, project, prices: dict, effective_from: str = "2020-01-01T00:00:00Z"):
    response = http.post(
        "/v1/prices",
        json={"prices": [
            {"model": model, "input_per_mtok": i, "output_per_mtok": o,
             "effective_from": effective_from}
            for model, (i, o) in prices.items()
        ]},
        headers=auth(project.admin_key),
    )  # fmt: skip
    assert response.status_code == 201, response.text


def _evals(http, project, feature, task_type, model, tier, scores: list[float]) -> None:
    results = [
        {"item_id": f"item-{i}", "model": model, "tier": tier, "score": score,
         "feature": feature, "task_type": task_type}
        for i, score in enumerate(scores)
    ]  # fmt: skip
    for first in range(0, len(results), 1000):
        response = http.post(
            "/v1/evals",
            json={"results": results[first : first + 1000]},
            headers=auth(project.ingest_key),
        )
        assert response.status_code == 200, response.text


def _passing(passed: int, total: int) -> list[float]:
    return [1.0] * passed + [0.3] * (total - passed)


def _traffic(http, project, count: int, *, model: str, tier: str, days_before: int = 5, **fields):
    """`count` requests served by `model`, 1000 input and 500 output tokens each, spread over
    the hours of a day `days_before` END."""
    day = END - timedelta(days=days_before)
    events = [
        event(
            attempt(model=model, tier=tier, input_tokens=1000, output_tokens=500),
            timestamp=(day + timedelta(minutes=7 * i)).isoformat(),
            **fields,
        )
        for i in range(count)
    ]
    for first in range(0, count, 500):
        response = post(http, project.ingest_key, batch(*events[first : first + 500]))
        assert response.status_code == 200, response.text
    return events


def _advice(http, project, **params) -> dict:
    response = http.get(
        "/v1/advice/routing", params={**PERIOD, **params}, headers=auth(project.read_key)
    )
    assert response.status_code == 200, response.text
    return {(s["feature"], s["task_type"]): s for s in response.json()["segments"]}


def _tiers(segment: dict) -> dict[str, dict]:
    return {t["tier"]: t for t in segment["tiers"]}


def _cost(model: str, requests: int) -> Decimal:
    """What `requests` of 1000 input and 500 output tokens cost at the model's price."""
    price_in, price_out = (Decimal(p) for p in PRICES[model])
    return (1000 * price_in + 500 * price_out) / 1_000_000 * requests


@pytest.fixture
def offline(http, engine):
    """support-chat: on faq the cheap tier passes 97% of the 1,000 items the premium tier
    passes, on refund 70%; on rare, 20 items. Traffic: 100 faq requests served by the
    premium model, 50 refund requests by the cheap one."""
    project = make_project(baseline_model=LARGE)
    _post_prices(http, project, PRICES)
    for task_type, cheap_passes, items in (("faq", 970, 1000), ("refund", 700, 1000),
                                           ("rare", 20, 20)):  # fmt: skip
        _evals(http, project, "support-chat", task_type, LARGE, "premium", [1.0] * items)
        _evals(http, project, "support-chat", task_type, CHEAP, "cheap",
               _passing(cheap_passes, items))  # fmt: skip
    _traffic(http, project, 100, model=LARGE, tier="premium", task_type="faq")
    _traffic(http, project, 50, model=CHEAP, tier="cheap", task_type="refund")
    run_rollup(engine)
    return project


def test_a_cheap_tier_passing_97_percent_is_recommended(http, offline):
    faq = _advice(http, offline)[("support-chat", "faq")]
    assert set(faq) >= {"feature", "task_type", "pass_score", "target", "reference_tier",
                        "recommended_tier", "projected_savings_usd", "tiers"}  # fmt: skip
    assert set(faq["tiers"][0]) >= {"tier", "model", "cases", "relative_pass_rate", "low",
                                    "high", "cost_per_request_usd"}  # fmt: skip
    assert (faq["evidence"], faq["pass_score"], faq["target"]) == ("offline", 0.7, 0.95)
    assert faq["reference_tier"] == "premium" and faq["recommended_tier"] == "cheap"
    cheap = _tiers(faq)["cheap"]
    interval = wilson_interval(970, 1000)
    assert cheap["model"] == CHEAP and cheap["cases"] == 1000
    assert cheap["relative_pass_rate"] == pytest.approx(0.97)
    assert (cheap["low"], cheap["high"]) == pytest.approx((interval.low, interval.high))
    assert cheap["low"] >= 0.95 and cheap["meets_target"]
    assert Decimal(cheap["cost_per_request_usd"]) == _cost(CHEAP, 1)
    assert Decimal(_tiers(faq)["premium"]["cost_per_request_usd"]) == _cost(LARGE, 1)
    # The 100 requests cost what they cost at the premium model; at the cheap one, a tenth.
    assert Decimal(faq["cost_usd"]) == _cost(LARGE, 100)
    assert Decimal(faq["projected_savings_usd"]) == _cost(LARGE, 100) - _cost(CHEAP, 100)
    assert faq["expected_pass_rate"] == pytest.approx(
        {"value": 0.97, "low": interval.low, "high": interval.high}
    )


def test_a_cheap_tier_passing_70_percent_is_not(http, offline):
    refund = _advice(http, offline)[("support-chat", "refund")]
    cheap = _tiers(refund)["cheap"]
    assert cheap["relative_pass_rate"] == pytest.approx(0.7) and not cheap["meets_target"]
    assert refund["recommended_tier"] == "premium"
    # Meeting the floor costs money here: the 50 cheap requests at the premium model.
    assert Decimal(refund["projected_savings_usd"]) == _cost(CHEAP, 50) - _cost(LARGE, 50)
    assert refund["expected_pass_rate"]["value"] == 1.0


def test_too_few_cases_is_insufficient_evidence(http, offline):
    rare = _advice(http, offline)[("support-chat", "rare")]
    assert rare["recommended_tier"] == "insufficient_evidence"
    assert rare["projected_savings_usd"] is None
    assert _tiers(rare)["cheap"]["relative_pass_rate"] == 1.0  # perfect, but on 20 cases
    assert _tiers(rare)["cheap"]["cases"] == 20


def test_a_price_change_flips_the_recommendation(http, engine):
    project = make_project(baseline_model=LARGE)
    _post_prices(http, project, PRICES)
    for model, tier, passes in ((LARGE, "premium", 1000), (MID, "standard", 995),
                                (CHEAP, "cheap", 990)):  # fmt: skip
        _evals(http, project, "summarize", None, model, tier, _passing(passes, 1000))
    _traffic(http, project, 40, model=LARGE, tier="premium", days_before=6, feature="summarize")
    run_rollup(engine)
    assert _advice(http, project)[("summarize", None)]["recommended_tier"] == "cheap"

    # From two days before END the cheap model costs more than the standard one.
    changed = END - timedelta(days=2)
    _post_prices(http, project, {CHEAP: ("5", "10")}, effective_from=changed.isoformat())
    after = _advice(http, project)[("summarize", None)]
    assert after["recommended_tier"] == "standard"
    assert Decimal(_tiers(after)["cheap"]["cost_per_request_usd"]) == Decimal("0.01")
    assert Decimal(after["projected_savings_usd"]) == _cost(LARGE, 40) - _cost(MID, 40)
    # The advice of a period that ends before the change still prices at the old price.
    before = _advice(http, project, end=(changed - timedelta(hours=1)).isoformat())
    assert before[("summarize", None)]["recommended_tier"] == "cheap"


def _scored(http, project, count: int, *, model: str, tier: str, score: float, start: int):
    day = END - timedelta(days=3)
    events = [
        event(
            attempt(model=model, tier=tier, input_tokens=1000, output_tokens=500),
            timestamp=(day + timedelta(minutes=start + i)).isoformat(),
            feature="search",
            quality={"score": score},
        )
        for i in range(count)
    ]
    assert post(http, project.ingest_key, batch(*events)).status_code == 200
    return [e["request_id"] for e in events]


def test_online_scores_late_feedback_and_the_quality_floor(http, engine):
    project = make_project(baseline_model=LARGE)
    _post_prices(http, project, PRICES)
    _scored(http, project, 200, model=LARGE, tier="premium", score=0.9, start=0)
    _scored(http, project, 392, model=CHEAP, tier="cheap", score=0.8, start=200)
    failing = _scored(http, project, 8, model=CHEAP, tier="cheap", score=0.5, start=600)
    run_rollup(engine)

    search = _advice(http, project, feature="search")[("search", None)]
    cheap = _tiers(search)["cheap"]
    interval = ratio_interval(392, 400, 200, 200)  # MOVER-R Wilson: independent requests
    assert search["evidence"] == "online" and cheap["cases"] == 400
    assert cheap["relative_pass_rate"] == pytest.approx(0.98)
    assert (cheap["low"], cheap["high"]) == pytest.approx((interval.low, interval.high))
    assert interval.low > 0.95 and search["recommended_tier"] == "cheap"

    # Late feedback lifts the eight failed answers: the hours they are in roll again.
    response = http.post(
        "/v1/feedback",
        json={"feedback": [{"request_id": rid, "score": 0.95} for rid in failing]},
        headers=auth(project.ingest_key),
    )
    assert response.status_code == 200, response.text
    run_rollup(engine)
    search = _advice(http, project, feature="search")[("search", None)]
    assert _tiers(search)["cheap"]["relative_pass_rate"] == 1.0
    assert search["recommended_tier"] == "cheap"

    # A stricter floor for the feature: the cheap answers (0.8) no longer pass.
    floor = http.put(
        "/v1/quality-floors/search",
        json={"pass_score": 0.85, "target": 0.9},
        headers=auth(project.admin_key),
    )
    assert floor.status_code == 200, floor.text
    assert floor.json() | {"updated_at": None} == {
        "feature": "search", "task_type": None, "pass_score": 0.85, "target": 0.9,
        "updated_at": None,
    }  # fmt: skip
    search = _advice(http, project, feature="search")[("search", None)]
    assert (search["pass_score"], search["target"]) == (0.85, 0.9)
    assert _tiers(search)["cheap"]["relative_pass_rate"] == pytest.approx(8 / 400)
    assert search["recommended_tier"] == "premium"


def test_online_a_tier_is_every_model_it_served(http, engine):
    """Two models serve the cheap tier: its pass rate is over all their scored requests, not
    only the busier model's (which passes every time, where the other fails every time), and
    the busier one prices the tier."""
    project = make_project(baseline_model=LARGE)
    _post_prices(http, project, {**PRICES, "acme-tiny": ("0.5", "1")})
    _scored(http, project, 40, model=LARGE, tier="premium", score=0.9, start=0)
    _scored(http, project, 60, model=CHEAP, tier="cheap", score=0.8, start=40)
    _scored(http, project, 40, model="acme-tiny", tier="cheap", score=0.3, start=100)
    run_rollup(engine)
    search = _advice(http, project, feature="search")[("search", None)]
    cheap = _tiers(search)["cheap"]
    interval = ratio_interval(60, 100, 40, 40)
    assert (cheap["cases"], cheap["model"]) == (100, CHEAP)
    assert cheap["relative_pass_rate"] == pytest.approx(0.6)
    assert (cheap["low"], cheap["high"]) == pytest.approx((interval.low, interval.high))
    assert search["recommended_tier"] == "premium"


def test_a_price_that_takes_effect_after_now_does_not_price_the_advice(http, offline, engine):
    """The default period ends with the current hour: a price posted for later in that hour
    is not in force yet, and costs are at the prices in force now."""
    from app.periods import Period
    from app.services.advice import routing_advice

    _post_prices(http, offline, {CHEAP: ("100", "200")}, (END - timedelta(minutes=10)).isoformat())
    within = Period(END - timedelta(days=30), END)

    def cheap_cost(now: datetime) -> Decimal:
        with engine.connect() as conn:
            found = routing_advice(conn, project_id=offline.id, within=within, now=now)
        [faq] = [s for s in found.segments if s.task_type == "faq"]
        return next(t.cost_per_request for t in faq.tiers if t.tier == "cheap")

    assert cheap_cost(END - timedelta(minutes=30)) == _cost(CHEAP, 1)
    assert cheap_cost(END + timedelta(days=1)) == 100 * _cost(CHEAP, 1)


def test_what_if_prices_every_request_at_its_candidate_tier(http, offline):
    def what_if(**body):
        return http.post(
            "/v1/advice/what-if",
            json={"feature": "support-chat", **PERIOD, **body},
            headers=auth(offline.read_key),
        )

    half = what_if(shares={"cheap": 0.5, "premium": 0.5})
    assert half.status_code == 200, half.text
    found = half.json()
    assert found["requests"] == 150
    assert Decimal(found["current_cost_usd"]) == _cost(LARGE, 100) + _cost(CHEAP, 50)
    projected = (_cost(CHEAP, 150) + _cost(LARGE, 150)) / 2
    assert Decimal(found["projected_cost_usd"]) == projected
    assert Decimal(found["savings_usd"]) == _cost(LARGE, 100) + _cost(CHEAP, 50) - projected
    segments = {s["task_type"]: s for s in found["segments"]}
    assert segments["faq"]["shares"] == {"cheap": 0.5, "premium": 0.5}
    # faq: the two tiers' pass rates on the same items, weighed half and half, and the
    # segments by requests (100 and 50).
    faq = segments["faq"]["expected_pass_rate"]
    assert faq["value"] == pytest.approx((0.97 + 1.0) / 2)
    assert faq["low"] < faq["value"] < faq["high"]
    assert found["expected_pass_rate"]["value"] == pytest.approx(
        100 / 150 * (0.97 + 1) / 2 + 50 / 150 * (0.7 + 1) / 2
    )

    moved = what_if(task_type="refund", move_to="premium").json()
    segments = {s["task_type"]: s for s in moved["segments"]}
    assert segments["faq"]["shares"] == {"premium": 1.0}  # as it was: its served split
    assert Decimal(segments["faq"]["projected_cost_usd"]) == _cost(LARGE, 100)
    assert Decimal(segments["refund"]["projected_cost_usd"]) == _cost(LARGE, 50)
    assert Decimal(moved["savings_usd"]) == _cost(CHEAP, 50) - _cost(LARGE, 50)
    assert moved["expected_pass_rate"]["value"] == pytest.approx(1.0)
    premium = wilson_interval(1000, 1000)
    assert moved["expected_pass_rate"]["low"] == pytest.approx(
        weighted_sum_interval([(100 / 150, premium), (50 / 150, premium)]).low
    )

    refusals = (
        ({"shares": {"cheap": 0.5}}, "shares"),
        ({"shares": {"gold": 1.0}}, "shares.gold"),
        ({"move_to": "gold"}, "move_to"),
        ({"shares": {"cheap": 1}, "move_to": "cheap"}, "not both"),
        ({"shares": {"cheap": 1}, "start": "2026-10-01T00:30"}, "start"),
    )
    for body, field in refusals:
        refused = what_if(**body)
        assert refused.status_code == 422 and field in refused.json()["detail"], refused.text
    unknown = what_if(task_type="nothing", move_to="cheap")
    assert unknown.status_code == 404 and "task_type" in unknown.json()["detail"]
    assert what_if(feature="nothing", shares={"cheap": 1}).status_code == 404


def test_the_advice_csv_follows_the_export_rules(http, offline):
    response = http.get(
        "/v1/advice/routing.csv",
        params={**PERIOD, "feature": "support-chat"},
        headers=auth(offline.read_key),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.count(b"\r\n") == len(response.text.splitlines())
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["tier"] for r in rows if r["task_type"] == "faq"] == ["cheap", "premium"]
    faq_cheap = next(r for r in rows if r["task_type"] == "faq" and r["tier"] == "cheap")
    assert faq_cheap["recommended_tier"] == "cheap" and faq_cheap["meets_target"] == "true"
    assert faq_cheap["segment_cost_usd"] == "2.000000"
    assert faq_cheap["projected_savings_usd"] == "1.800000"
    assert faq_cheap["cost_per_request_usd"] == "0.002000"


def test_a_segment_without_evidence_is_a_whole_row_of_the_advice_csv(http, engine):
    project = make_project(baseline_model=LARGE)
    _traffic(http, project, 3, model=CHEAP, tier="cheap", feature="no-evidence")
    run_rollup(engine)
    response = http.get(
        "/v1/advice/routing.csv",
        params={**PERIOD, "feature": "no-evidence"},
        headers=auth(project.read_key),
    )
    assert response.status_code == 200, response.text
    header, *rows = list(csv.reader(io.StringIO(response.text)))
    assert len(rows) == 1 and len(rows[0]) == len(header)
    row = dict(zip(header, rows[0], strict=True))
    assert row["recommended_tier"] == "insufficient_evidence" and row["segment_requests"] == "3"
    assert row["tier"] == row["meets_target"] == ""


def test_evals_refuse_bad_results_and_keep_the_others(http):
    project = make_project()
    http.put("/v1/model-tiers/mapped-model", json={"tier": "standard"},
             headers=auth(project.admin_key)).raise_for_status()  # fmt: skip
    good = {"item_id": "a", "model": "mapped-model", "score": 0.5, "feature": "f"}
    response = http.post(
        "/v1/evals",
        json={"results": [
            good,
            {**good, "item_id": "b", "model": "unmapped-model"},
            {**good, "item_id": "c", "score": 1.5},
            {**good, "item_id": "d", "tier": "gold"},
            {**good, "item_id": "e", "tier": "premium", "model": "unmapped-model"},
        ]},
        headers=auth(project.ingest_key),
    )  # fmt: skip
    assert response.status_code == 207, response.text
    body = response.json()
    assert body["accepted"] == 2
    errors = {e["item_id"]: e["error"] for e in body["errors"]}
    assert errors.keys() == {"b", "c", "d"}
    assert errors["b"].startswith("tier: model 'unmapped-model' has no tier")
    assert errors["c"].startswith("score:") and errors["d"].startswith("tier: unknown tier")
    for refused in (
        http.post("/v1/evals", json={"results": [good]}, headers=auth(project.read_key)),
        http.put("/v1/quality-floors/f", json={}, headers=auth(project.ingest_key)),
    ):
        assert refused.status_code == 403 and isinstance(refused.json()["detail"], str)
    bad_floor = http.put(
        "/v1/quality-floors/f", json={"pass_score": 0.705}, headers=auth(project.admin_key)
    )
    assert bad_floor.status_code == 422 and "pass_score" in bad_floor.json()["detail"]
    assert http.get("/v1/advice/routing").status_code == 401
    missing = http.get(
        "/v1/advice/routing", params={"feature": "nothing"}, headers=auth(project.read_key)
    )
    assert missing.status_code == 404 and "nothing" in missing.json()["detail"]


def test_both_advice_routes_are_documented(http):
    paths = http.get("/openapi.json").json()["paths"]
    for path, method in (("/v1/advice/routing", "get"), ("/v1/advice/what-if", "post")):
        answers = paths[path][method]["responses"]
        assert {"200", "401", "403", "404", "422", "429"} <= set(answers), path
        for status in ("401", "403", "404", "422", "429"):
            schema = answers[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    assert "EvalBatch" in http.get("/openapi.json").json()["components"]["schemas"]


def test_the_daily_digest_names_the_recommendations_that_save_money(offline, engine):
    from app.periods import DAY, Period
    from app.services.digest import digest_lines

    with engine.connect() as conn:
        lines = dict(
            digest_lines(conn, project_id=offline.project_id, within=Period(END - DAY, END))
        )
    interval = wilson_interval(970, 1000)
    assert lines["Advice for support-chat / faq"] == (
        f"route to cheap: saves $1.80 per 30 days; expected pass rate 97.00% "
        f"({interval.low:.2%} to {interval.high:.2%})"
    )
    # refund's recommendation costs money, rare has too few cases: neither is in the digest.
    assert [name for name in lines if name.startswith("Advice")] == [
        "Advice for support-chat / faq"
    ]


def test_results_sent_again_replace_their_scores_in_the_advice(http):
    project = make_project()
    _evals(http, project, "faq-bot", None, LARGE, "premium", [1.0] * 40)
    _evals(http, project, "faq-bot", None, CHEAP, "cheap", [0.1] * 40)
    before = _tiers(_advice(http, project, feature="faq-bot")[("faq-bot", None)])
    assert before["cheap"]["relative_pass_rate"] == 0.0
    _evals(http, project, "faq-bot", None, CHEAP, "cheap", [0.9] * 40)  # the same items again
    after = _advice(http, project, feature="faq-bot")[("faq-bot", None)]
    assert _tiers(after)["cheap"]["relative_pass_rate"] == 1.0
    # 40 of 40: a lower bound of 0.91, under the target; the premium tier stays.
    assert _tiers(after)["cheap"]["low"] == pytest.approx(wilson_interval(40, 40).low)
    assert after["recommended_tier"] == "premium"
