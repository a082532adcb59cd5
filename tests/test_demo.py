"""The demo: its traffic tells the stories the dashboard shows, and it loads through the SDK."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from app.db import connection, transaction
from app.periods import next_hour, trailing, utc_now
from app.services import metrics, policies, projects, users
from tools import demo

PLAN = demo.DemoPlan(end=datetime(2026, 11, 22, tzinfo=UTC), requests_per_hour=30)


def _escalation_rate(requests) -> float:
    escalated = [r for r in requests if any(a.status == "rejected" for a in r.attempts)]
    return len(escalated) / len(requests)


def test_the_same_plan_gives_the_same_requests():
    first = [r.request_id for r in demo.generate(PLAN)]
    assert first == [r.request_id for r in demo.generate(PLAN)]
    assert len(set(first)) == len(first)


def test_the_traffic_has_every_episode():
    requests = list(demo.generate(PLAN))
    assert {r.feature for r in requests} == {f.name for f in demo.FEATURES}
    assert len({r.customer_id for r in requests}) == len(demo.CUSTOMERS)
    support = [r for r in requests if r.feature == "support-chat"]
    in_spike = [r for r in support if PLAN.spike[0] <= r.timestamp < PLAN.spike[1]]
    assert _escalation_rate(in_spike) > 3 * _escalation_rate(support)
    search = [r for r in requests if r.feature == "search-answer"]
    drifted = [r for r in search if r.timestamp >= PLAN.drift_since]
    before = [r for r in search if r.timestamp < PLAN.drift_since]
    mean_tokens = [
        sum(r.attempts[0].input_tokens for r in rs) / len(rs) for rs in (drifted, before)
    ]
    assert mean_tokens[0] > 2.5 * mean_tokens[1]
    models = Counter(a.model for r in requests for a in r.attempts)
    assert models[demo.UNPRICED_MODEL] > 0
    arms = Counter(r.experiment["arm"] for r in requests if r.experiment)
    assert set(arms) == {"control", "treatment"}
    assert all(r.timestamp < PLAN.end for r in requests)
    assert any(a.status in ("error", "timeout") for r in requests for a in r.attempts)


def test_the_loaded_demo_populates_the_project(demo_project):
    assert demo_project.requests > 1000
    with connection() as conn:
        project_id = projects.project_id_by_name(conn, name=demo_project.project)
        # The demo ends now: its days are the last ones.
        within = trailing(timedelta(days=9), end=next_hour(utc_now()))
        customers = metrics.customer_metrics(conn, project_id=project_id, within=within)
        for feature in demo.FEATURES:
            assert policies.policy_history(conn, project_id=project_id, feature=feature.name)
        roles = {
            email: [
                m.role
                for m in users.user_memberships(
                    conn, user_id=users.user_id_by_email(conn, email=email)
                )
            ]
            for email, _ in demo.DEMO_LOGINS.values()
        }
    assert sum(c.requests for c in customers) == demo_project.requests
    losing = [c.customer_id for c in customers if c.margin_usd < 0]
    assert losing == ["globex"]
    assert sum(c.unpriced_requests for c in customers) > 0
    assert roles == {
        demo.DEMO_LOGINS["admin"][0]: ["admin"],
        demo.DEMO_LOGINS["viewer"][0]: ["viewer"],
    }
    with transaction() as conn:
        email, password = demo.DEMO_LOGINS["admin"]
        assert users.authenticate(conn, email=email, password=password)
