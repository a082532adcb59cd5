"""The offline routing evaluation on the real RouteLLM data: its counts are the data's own."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from click.testing import CliRunner

from app.cli import main
from tests.helpers import ALL_POLICIES, DATA, GPT4, GSM8K, MIXTRAL
from tools.replay import (
    Policy,
    ReplayError,
    catalog_price_book,
    choose_route,
    estimate_tokens,
    load_eval,
    replay,
    request_id,
    spread,
)

START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def prices():
    return catalog_price_book()


@pytest.fixture(scope="module")
def gsm8k_rows() -> list[dict]:
    with GSM8K.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def gsm8k_runs(prices):
    evalset = load_eval(GSM8K)
    route = choose_route(evalset, prices=prices, at=START)
    runs, reference = replay(
        evalset, policies=ALL_POLICIES, route=route, prices=prices, start=START, days=1
    )
    return {run.policy.name: run for run in runs}, reference, route


def test_gsm8k_cascade_escalates_exactly_the_prompts_the_cheap_model_got_wrong(
    gsm8k_runs, gsm8k_rows
):
    runs, _, route = gsm8k_runs
    assert route.cheap == MIXTRAL and route.premium == GPT4
    cheap_wrong = [r for r in gsm8k_rows if r[MIXTRAL] == "False"]
    either_right = [r for r in gsm8k_rows if r[MIXTRAL] == "True" or r[GPT4] == "True"]
    cascade = runs["cascade"]
    assert len(cascade.requests) == len(gsm8k_rows) == 1319
    escalated = [r for r in cascade.requests if r.facts.is_escalation]
    assert len(escalated) == len(cheap_wrong) == 477
    assert cascade.escalation_rate == pytest.approx(477 / 1319)
    assert cascade.premium_share == cascade.escalation_rate
    assert cascade.quality == pytest.approx(len(either_right) / 1319)  # 1225 / 1319
    for request in escalated:
        cheap, premium = request.attempts
        assert (cheap.model, cheap.status, cheap.reason) == (MIXTRAL, "rejected", "quality_check")
        assert (premium.model, premium.status) == (GPT4, "ok")
    assert all(len(r.attempts) == 1 for r in cascade.requests if not r.facts.is_escalation)


def test_gsm8k_single_model_policies_score_each_models_accuracy(gsm8k_runs, gsm8k_rows):
    runs, reference, _ = gsm8k_runs
    n = len(gsm8k_rows)
    assert runs["all-cheap"].quality == pytest.approx(
        sum(r[MIXTRAL] == "True" for r in gsm8k_rows) / n
    )
    assert runs["all-premium"].quality == pytest.approx(
        sum(r[GPT4] == "True" for r in gsm8k_rows) / n
    )
    assert runs["all-cheap"].premium_share == 0 and runs["all-premium"].premium_share == 1
    assert reference is runs["all-premium"]
    threshold = runs["threshold-length-0.3"]
    assert sum(r.served.model == GPT4 for r in threshold.requests) == round(0.3 * n)
    assert threshold.escalation_rate == 0


def test_gsm8k_costs_are_catalog_prices_times_estimated_tokens(gsm8k_runs, gsm8k_rows, prices):
    runs, _, _ = gsm8k_runs
    cheap_price = prices.price_at(MIXTRAL, None, START)
    premium_price = prices.price_at(GPT4, None, START)

    def cost(price, row, model) -> Decimal:
        tokens_in = estimate_tokens(row["prompt"])
        tokens_out = estimate_tokens(row[f"{model}_response"])
        return (price.input_per_mtok * tokens_in + price.output_per_mtok * tokens_out) / 10**6

    all_cheap = sum(cost(cheap_price, r, MIXTRAL) for r in gsm8k_rows)
    all_premium = sum(cost(premium_price, r, GPT4) for r in gsm8k_rows)
    escalated = sum(cost(premium_price, r, GPT4) for r in gsm8k_rows if r[MIXTRAL] == "False")
    assert runs["all-cheap"].cost_usd == all_cheap
    assert runs["all-premium"].cost_usd == all_premium
    # A cascade pays the cheap model always, and the premium one for each escalation.
    assert runs["cascade"].cost_usd == all_cheap + escalated


def test_threshold_by_length_sends_the_longest_prompts_premium(prices):
    evalset = load_eval(GSM8K)
    route = choose_route(evalset, prices=prices, at=START)
    (run,), _ = replay(
        evalset,
        policies=[Policy("threshold", premium_share=0.1)],
        route=route,
        prices=prices,
        start=START,
        days=1,
    )
    served = {r.key: r.served.tier for r in run.requests}
    lengths = {tier: [estimate_tokens(i.prompt) for i in evalset.items if served[i.key] == tier]
               for tier in ("cheap", "premium")}  # fmt: skip
    assert len(lengths["premium"]) == round(0.1 * 1319)
    assert min(lengths["premium"]) >= max(lengths["cheap"])


def test_random_threshold_is_seeded(prices):
    evalset = load_eval(GSM8K)
    route = choose_route(evalset, prices=prices, at=START)

    def premium_keys(seed: int) -> set[str]:
        policy = Policy("threshold", premium_share=0.5, score="random", seed=seed)
        (run,), _ = replay(
            evalset, policies=[policy], route=route, prices=prices, start=START, days=1
        )
        return {r.key for r in run.requests if r.served.tier == "premium"}

    assert premium_keys(1) == premium_keys(1) != premium_keys(2)
    assert len(premium_keys(1)) == round(0.5 * 1319)


def test_mt_bench_judgements_are_pivoted_per_question_and_turn(prices):
    evalset = load_eval(DATA / "mt_bench")  # the folder: question.jsonl is not results
    assert evalset.files == (str(DATA / "mt_bench" / "judgements.jsonl"),)
    assert len(evalset.items) == 160 and set(evalset.models) == {MIXTRAL, GPT4}
    by_key = {item.key: item for item in evalset.items}
    first, second = by_key["81-1"], by_key["81-2"]
    # The second turn's input holds the first turn and the model's own first answer.
    assert second.outcomes[GPT4].input_tokens > first.outcomes[GPT4].input_tokens
    assert second.outcomes[GPT4].input_tokens > first.outcomes[GPT4].output_tokens
    judgements = [json.loads(line) for line in (DATA / "mt_bench" / "judgements.jsonl").open()]
    failed = sum(j["model"] == MIXTRAL and j["score"] < 8 for j in judgements)
    route = choose_route(evalset, prices=prices, at=START)
    (cascade,), _ = replay(
        evalset, policies=[Policy("cascade")], route=route, prices=prices, start=START, days=2
    )
    assert sum(r.facts.is_escalation for r in cascade.requests) == failed
    mixtral_scores = {
        (j["question_id"], j["turn"]): j["score"] for j in judgements if j["model"] == MIXTRAL
    }
    gpt4_scores = {
        (j["question_id"], j["turn"]): j["score"] for j in judgements if j["model"] == GPT4
    }
    expected = sum((gpt4_scores[k] if s < 8 else s) / 10 for k, s in mixtral_scores.items()) / len(
        mixtral_scores
    )
    assert cascade.quality == pytest.approx(expected)


def test_bad_cells_and_missing_prices_are_named(tmp_path, prices):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,acme-a,acme-b\nhello,True,maybe\n", encoding="utf-8")
    with pytest.raises(ReplayError, match=r"bad.csv row 1, column 'acme-b'.*'maybe'"):
        load_eval(bad)
    unpriced = tmp_path / "unpriced.csv"
    unpriced.write_text("prompt,acme-unknown-model,gpt-4-1106-preview\nhi,True,0.5\n")
    evalset = load_eval(unpriced)
    assert evalset.items[0].outcomes[GPT4].quality == 0.5
    with pytest.raises(ReplayError, match="no price for model 'acme-unknown-model'"):
        choose_route(evalset, prices=prices, at=START)
    with pytest.raises(ReplayError, match="no 'prompt' column"):
        (tmp_path / "x.csv").write_text("question,a\n")
        load_eval(tmp_path / "x.csv")


def test_a_file_that_is_not_utf8_is_named_and_a_byte_order_mark_is_skipped(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,acme-a,acme-b\ncaf\xe9,True,False\n".encode("latin-1"))
    with pytest.raises(ReplayError, match=r"latin.csv: not UTF-8 text \(invalid continuation"):
        load_eval(latin)
    lines = tmp_path / "bad.jsonl"
    lines.write_bytes(b"\xff\n")
    with pytest.raises(ReplayError, match="bad.jsonl: not UTF-8 text"):
        load_eval(lines)
    spreadsheet = tmp_path / "excel.csv"  # as a spreadsheet saves UTF-8: a mark first
    spreadsheet.write_text("prompt,acme-a,acme-b\nhello,True,False\n", encoding="utf-8-sig")
    assert load_eval(spreadsheet).items[0].prompt == "hello"


def test_timestamps_spread_evenly_over_the_window():
    stamps = spread(7, start=START, days=2)
    assert stamps[0] == START and stamps[-1] < datetime(2026, 11, 3, tzinfo=UTC)
    assert stamps == sorted(stamps) and all(s.microsecond % 1000 == 0 for s in stamps)


def test_request_ids_are_stable_per_arm_and_window(gsm8k_runs):
    first = gsm8k_runs[0]["cascade"].requests[0]
    again = request_id(experiment="e", arm="cascade", request=first)
    assert again == request_id(experiment="e", arm="cascade", request=first)
    assert again != request_id(experiment="e", arm="all-cheap", request=first)


def test_replay_command_prints_the_table(gsm8k_runs):
    result = CliRunner().invoke(main, ["replay", str(GSM8K), "--start", "2026-11-01"])
    assert result.exit_code == 0, result.output
    cascade = next(line for line in result.output.splitlines() if "cascade" in line)
    cost = gsm8k_runs[0]["cascade"].cost_usd
    for cell in ("1319", "36.2%", "0.9287", f"{cost:.6f}", "45.7%"):
        assert cell in cascade
    assert "gpt-4-1106-preview (openrouter): $10 in, $30 out" in result.output
