"""`routeledger replay --send`: the simulated GSM8K traffic, sent through the SDK to a real
API, shows the replay's own figures through the metrics API and both exports."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from app.services.rollups import run_rollup
from tests.helpers import ALL_POLICIES, GPT4, GSM8K, REPO, make_project
from tools.replay import catalog_price_book, choose_route, load_eval, replay


def _replay_command(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "replay", str(GSM8K), *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.timeout(120)
def test_replay_refuses_at_once_to_send_with_a_key_the_api_refuses(live_api, tmp_path):
    """A read key (403) or an unknown one (401): said before anything is sent, not after the
    SDK held every event for ten minutes; nothing is left in the spool."""
    project = make_project()
    for key, why in ((project.read_key, "lacks the 'ingest' scope"), ("rl_unknown", "unknown")):
        env = {"ROUTELEDGER_ENDPOINT": live_api.url, "ROUTELEDGER_API_KEY": key,
               "ROUTELEDGER_SPOOL_DIR": str(tmp_path)}  # fmt: skip
        refused = _replay_command("--days", "1", "--send", env=env)
        assert refused.returncode == 1
        assert "refuses this key" in refused.stderr and why in refused.stderr, refused.stderr
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


def test_the_key_check_takes_what_the_sdk_takes_and_says_any_other_answer(live_api):
    """An endpoint ending in "/" and a key ending in a line break, as the SDK takes them; an
    answer other than the API's to a taken key (here a 404) is said, with its status."""
    import click

    from app.cli import _check_ingest_key, _wait_for_api

    project = make_project()
    _wait_for_api(live_api.url, seconds=5)
    _check_ingest_key(live_api.url, project.ingest_key)
    with pytest.raises(click.ClickException, match=r"refuses this key \(HTTP 404\)"):
        _check_ingest_key(f"{live_api.url}/elsewhere", project.ingest_key)
    env = {"ROUTELEDGER_ENDPOINT": f"{live_api.url}/", "ROUTELEDGER_API_KEY": "rl_unknown\n"}
    refused = _replay_command("--days", "1", "--send", env=env)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr, refused.stderr


@pytest.mark.timeout(300)
def test_replay_sent_shows_the_same_figures_in_metrics_and_exports(
    live_api, engine, http, tmp_path
):
    project = make_project(baseline_model=GPT4)
    start = datetime(2026, 10, 30, tzinfo=UTC)  # two days, to the end of October
    end = start + timedelta(days=2)
    args = ["--start", f"{start:%Y-%m-%d}", "--days", "2", "--send", "--experiment", "gsm8k"]
    env = {
        "ROUTELEDGER_ENDPOINT": live_api.url,
        "ROUTELEDGER_API_KEY": project.ingest_key,
        "ROUTELEDGER_SPOOL_DIR": str(tmp_path),
    }
    sent = _replay_command(*args, env=env)
    assert sent.returncode == 0, sent.stderr
    assert "5276 stored, 0 already stored, 0 rejected" in sent.stderr
    again = _replay_command(*args, "--policy", "cascade", env=env)
    assert again.returncode == 0, again.stderr
    assert "0 stored, 1319 already stored" in again.stderr  # request ids are stable
    run_rollup(engine)

    prices = catalog_price_book()
    evalset = load_eval(GSM8K)
    route = choose_route(evalset, prices=prices, at=start)
    runs, _ = replay(
        evalset, policies=ALL_POLICIES, route=route, prices=prices, start=start, days=2
    )
    read = {"Authorization": f"Bearer {project.read_key}"}
    period = {"start": start.isoformat(), "end": end.isoformat()}

    for run in runs:
        figures = http.get(
            "/v1/metrics/routing",
            params={**period, "experiment": "gsm8k", "arm": run.policy.name},
            headers=read,
        ).json()
        assert figures["requests"] == 1319
        assert figures["escalation_rate"] == pytest.approx(run.escalation_rate)
        assert figures["served_split"].get("premium", 0) == pytest.approx(run.premium_share)
        assert figures["mean_quality"] == pytest.approx(run.quality)
        assert Decimal(figures["cost_usd"]) == run.cost_usd
        assert figures["unpriced_requests"] == 0

    export = http.get(
        "/v1/exports/requests.csv", params={**period, "experiment": "gsm8k"}, headers=read
    )
    assert export.status_code == 200, export.text
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for row in csv.DictReader(io.StringIO(export.text)):
        by_arm[row["experiment_arm"]].append(row)
    for run in runs:
        rows = by_arm[run.policy.name]
        assert len(rows) == 1319
        assert sum(Decimal(r["cost_usd"]) for r in rows) == run.cost_usd
        assert sum(r["is_escalation"] == "true" for r in rows) == sum(
            r.facts.is_escalation for r in run.requests
        )
        assert sum(float(r["quality_score"]) for r in rows) == pytest.approx(run.quality * 1319)

    total = sum((run.cost_usd for run in runs), Decimal(0))
    customers = http.get(
        "/v1/exports/customers.csv", params={**period, "granularity": "day"}, headers=read
    )
    rows = list(csv.DictReader(io.StringIO(customers.text)))
    assert {r["customer_id"] for r in rows} == {"replay"} and len(rows) == 2
    assert sum(int(r["requests"]) for r in rows) == 4 * 1319
    assert abs(sum(Decimal(r["cost_usd"]) for r in rows) - total) < Decimal("0.000002")
