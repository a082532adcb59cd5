"""Routing advice on the real RouteLLM results (shared/data/routellm) imported as offline
evaluations with `routeledger eval import`: the pass rates are the files' own, and the
what-if of "all premium" and "all cheap" over replayed traffic gives the replay's figures."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner

from app.cli import main
from app.services.intervals import wilson_interval
from app.services.rollups import run_rollup
from tests.helpers import DATA, GPT4, GSM8K, MIXTRAL, auth, make_project, routeledger
from tools.replay import Policy, catalog_price_book, choose_route, load_eval, replay

START = datetime(2026, 9, 1, tzinfo=UTC)  # fixed: the same on any day the suite runs
TIERS = ("--tier", f"{MIXTRAL}=cheap", "--tier", f"{GPT4}=premium")


def _import(project, path, *args: str) -> str:
    result = CliRunner().invoke(
        main, ["eval", "import", str(path), "--project", project.name, *TIERS, *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


def _advice(http, project, feature: str) -> dict:
    response = http.get(
        "/v1/advice/routing",
        params={"feature": feature, "start": START.isoformat(),
                "end": (START + timedelta(days=1)).isoformat()},
        headers=auth(project.read_key),
    )  # fmt: skip
    assert response.status_code == 200, response.text
    (segment,) = response.json()["segments"]
    return segment


def _expected(rows: list[tuple[bool, bool]]) -> dict:
    """(cheap passed, premium passed) per item -> the advice's figures, computed directly."""
    premium_passed = sum(p for _, p in rows)
    both = sum(c and p for c, p in rows)
    cheap_passed = sum(c for c, _ in rows)
    return {
        "items": len(rows),
        "premium_passed": premium_passed,
        "relative": both / premium_passed,
        "relative_interval": wilson_interval(both, premium_passed),
        "cheap_pass_rate": cheap_passed / len(rows),
        "premium_pass_rate": premium_passed / len(rows),
    }


def _assert_advice_matches(segment: dict, expected: dict) -> None:
    tiers = {t["tier"]: t for t in segment["tiers"]}
    assert segment["evidence"] == "offline" and segment["reference_tier"] == "premium"
    assert tiers["cheap"]["model"] == MIXTRAL and tiers["premium"]["model"] == GPT4
    assert tiers["cheap"]["cases"] == expected["premium_passed"]
    assert tiers["cheap"]["relative_pass_rate"] == pytest.approx(expected["relative"])
    interval = expected["relative_interval"]
    assert (tiers["cheap"]["low"], tiers["cheap"]["high"]) == pytest.approx(
        (interval.low, interval.high)
    )
    assert tiers["cheap"]["pass_rate"]["value"] == pytest.approx(expected["cheap_pass_rate"])
    assert tiers["premium"]["pass_rate"]["value"] == pytest.approx(expected["premium_pass_rate"])
    assert tiers["premium"]["relative_pass_rate"] == 1.0


def _csv_outcomes(path) -> list[tuple[bool, bool]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(row[MIXTRAL] == "True", row[GPT4] == "True") for row in csv.DictReader(f)]


def test_gsm8k_and_mmlu_pass_rates_are_the_files_own(http):
    project = make_project(baseline_model=GPT4)
    assert "2638 results stored" in _import(project, GSM8K)
    _import(project, DATA / "mmlu")  # 57 files, one feature: the folder's name

    _assert_advice_matches(
        _advice(http, project, "gsm8k_responses"), _expected(_csv_outcomes(GSM8K))
    )
    mmlu = [o for path in sorted((DATA / "mmlu").glob("*.csv")) for o in _csv_outcomes(path)]
    assert len(mmlu) == 14042
    _assert_advice_matches(_advice(http, project, "mmlu"), _expected(mmlu))


def test_mt_bench_judgements_pass_from_a_score_of_7(http):
    project = make_project(baseline_model=GPT4)
    _import(project, DATA / "mt_bench", "--feature", "mt-bench")
    scores: dict[tuple, dict[str, int]] = defaultdict(dict)
    with (DATA / "mt_bench" / "judgements.jsonl").open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            scores[(record["question_id"], record["turn"])][record["model"]] = record["score"]
    # The default pass score, 0.7: a judge's score of 7 out of 10 passes.
    rows = [(s[MIXTRAL] >= 7, s[GPT4] >= 7) for s in scores.values()]
    _assert_advice_matches(_advice(http, project, "mt-bench"), _expected(rows))


def test_plain_json_lines_import_and_refuse_bad_lines(tmp_path, http):
    project = make_project()
    path = tmp_path / "results.jsonl"
    lines = [
        {"item_id": "q1", "model": "acme-small", "score": 0.9, "feature": "faq", "tier": "cheap"},
        {"item_id": "q1", "model": "acme-large", "score": 1.0, "feature": "faq",
         "tier": "premium"},
        {"item_id": "q2", "model": "acme-small", "score": 2, "feature": "faq", "tier": "cheap"},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = CliRunner().invoke(
        main, ["eval", "import", str(path), "--project", project.name, "--task-type", "billing"]
    )
    assert result.exit_code == 1
    assert "2 results stored, 1 refused" in result.output
    assert "result 2 (q2): score:" in result.output
    segment = _advice(http, project, "faq")
    assert segment["task_type"] == "billing"
    assert {t["tier"]: t["cases"] for t in segment["tiers"]} == {"cheap": 1, "premium": 1}


@pytest.mark.timeout(300)
def test_what_if_all_premium_and_all_cheap_equal_the_replay(live_api, http, engine, tmp_path):
    # Three MMLU subjects: every prompt costs the same tokens whichever model answers (MMLU
    # has no answer text: 16 output tokens each), so pricing the served tokens at the other
    # model is exactly what the replay simulates.
    folder = tmp_path / "mmlu-sample"
    folder.mkdir()
    for subject in ("abstract_algebra", "anatomy", "astronomy"):
        (folder / f"mmlu_{subject}.csv").symlink_to(DATA / "mmlu" / f"mmlu_{subject}.csv")
    project = make_project(baseline_model=GPT4)
    sent = routeledger(
        "replay", str(folder), "--policy", "cascade", "--start", f"{START:%Y-%m-%d}",
        "--days", "1", "--send", "--feature", "mmlu-sample",
        env={"ROUTELEDGER_ENDPOINT": live_api.url, "ROUTELEDGER_API_KEY": project.ingest_key,
             "ROUTELEDGER_SPOOL_DIR": str(tmp_path / "spool")},
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    _import(project, folder)
    run_rollup(engine)

    prices = catalog_price_book()
    evalset = load_eval(folder)
    route = choose_route(evalset, prices=prices, at=START)
    policies = [Policy("cascade"), Policy("all-cheap"), Policy("all-premium")]
    runs, _ = replay(evalset, policies=policies, route=route, prices=prices, start=START, days=1)
    cascade, all_cheap, all_premium = runs
    for run, tier in ((all_premium, "premium"), (all_cheap, "cheap")):
        response = http.post(
            "/v1/advice/what-if",
            json={"feature": "mmlu-sample", "shares": {tier: 1.0}, "start": START.isoformat(),
                  "end": (START + timedelta(days=1)).isoformat()},
            headers=auth(project.read_key),
        )  # fmt: skip
        assert response.status_code == 200, response.text
        found = response.json()
        assert found["requests"] == len(run.requests) == 387
        assert Decimal(found["current_cost_usd"]) == cascade.cost_usd
        assert Decimal(found["projected_cost_usd"]) == run.cost_usd
        assert Decimal(found["savings_usd"]) == cascade.cost_usd - run.cost_usd
        expected = found["expected_pass_rate"]
        assert expected["value"] == pytest.approx(run.quality)
        passed = sum(r.quality for r in run.requests)
        interval = wilson_interval(int(passed), len(run.requests))
        assert (expected["low"], expected["high"]) == pytest.approx((interval.low, interval.high))
