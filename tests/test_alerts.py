"""Alert rules end to end: ingest, rollup, evaluation, and the emails a real SMTP server
(aiosmtpd) receives; the outbox folder when SMTP is unset; retries while SMTP is down."""

from __future__ import annotations

import email
import email.policy
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from aiosmtpd.controller import Controller
from psycopg.types.json import Jsonb

from app.periods import utc_now
from app.services import alerts, rollups
from app.services.emails import send_pending
from app.services.ingest import Batch, ingest_batch
from app.settings import get_settings
from tests.helpers import attempt, auth, event, free_port, make_project


class Inbox:
    """An aiosmtpd handler that keeps every message it receives, parsed."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.messages if address in m["To"]]


def use_settings(monkeypatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


@pytest.fixture
def smtp_server(monkeypatch):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    use_settings(monkeypatch, SMTP_URL=f"smtp://127.0.0.1:{controller.port}")
    yield inbox
    controller.stop()
    monkeypatch.delenv("SMTP_URL")
    get_settings.cache_clear()


def recipient() -> str:
    return f"pm-{uuid.uuid4().hex[:8]}@example.com"


# The tests' clock: a few minutes before the new year, so windows and days straddle it.
NOW = datetime(2026, 12, 31, 23, 55, tzinfo=UTC)


def minutes_ago(minutes: float) -> str:
    return (NOW - timedelta(minutes=minutes)).isoformat()


def traffic(count: int, *, escalated: bool) -> list[dict]:
    served = attempt(tier="premium", model="acme-large") if escalated else attempt()
    return [
        event(served, intended_tier="cheap", timestamp=minutes_ago(1 + i % 10))
        for i in range(count)
    ]


def ingest(engine, project_id: int, events: list[dict], *, now: datetime = NOW) -> None:
    result = ingest_batch(engine, project_id=project_id, batch=Batch(events), now=now)
    assert result.accepted == len(events)


def run_rollup(engine, *, now: datetime = NOW) -> None:
    rollups.run_rollup(engine, now=now)


def run_alerts(engine, *, now: datetime = NOW) -> None:
    alerts.run_alerts(engine, now=now)


def test_an_escalation_spike_fires_once_and_resolves_once(engine, http, smtp_server):
    project = make_project()
    pm = recipient()
    rule = {
        "name": "escalation spike",
        "metric": "escalation_rate",
        "scope": {"feature": "support-chat"},
        "window_minutes": 15,
        "threshold": 0.15,
        "baseline_multiplier": 2.0,
        "min_requests": 50,
        "cooldown_minutes": 60,
        "recipients": [pm],
    }
    created = http.post("/v1/alert-rules", json=rule, headers=auth(project.admin_key))
    assert created.status_code == 201, created.text

    ingest(engine, project.id, traffic(60, escalated=False))
    run_rollup(engine)
    run_alerts(engine)
    assert http.get("/v1/alerts", headers=auth(project.read_key)).json() == []

    ingest(engine, project.id, traffic(40, escalated=True))  # 40 of 100: a spike
    run_rollup(engine)
    racing = [threading.Thread(target=run_alerts, args=(engine,)) for _ in range(3)]
    for evaluation in racing:
        evaluation.start()
    for evaluation in racing:
        evaluation.join()
    run_alerts(engine)  # a later minute, still firing, within the cooldown: no email
    send_pending(engine)
    send_pending(engine)
    assert len(smtp_server.to(pm)) == 1
    fired = smtp_server.to(pm)[0]
    assert "FIRING" in fired["Subject"] and "escalation spike" in fired["Subject"]
    text = fired.get_body(("plain",)).get_content()
    assert "Value: 40.00%" in text and "Limit: above 15.00%" in text
    assert "Requests in window: 100" in text and "Window:" in text
    # The project in the link: a user of several projects lands on this one's alerts.
    assert f"http://127.0.0.1:8050/alerts?project={project.name}&rule=" in text
    assert "<table>" in fired.get_body(("html",)).get_content()
    firing = http.get("/v1/alerts?state=firing", headers=auth(project.read_key)).json()
    assert len(firing) == 1 and firing[0]["value"] == pytest.approx(0.4)

    ingest(engine, project.id, traffic(200, escalated=False))  # 40 of 300: recovered
    run_rollup(engine)
    run_alerts(engine)
    run_alerts(engine)
    send_pending(engine)
    messages = smtp_server.to(pm)
    assert len(messages) == 2 and "RESOLVED" in messages[1]["Subject"]
    alerts = http.get("/v1/alerts", headers=auth(project.read_key)).json()
    assert [a["state"] for a in alerts] == ["resolved"]


def project_with_rule(**rule) -> tuple:
    """A new project with one alert rule (window 60 min, cooldown 60 min unless given),
    and the rule's recipient."""
    from app.db import transaction
    from app.schemas import AlertRuleIn
    from app.services.alerts import create_rule

    project = make_project()
    pm = recipient()
    defaults = {"scope": {}, "window_minutes": 60, "baseline_multiplier": None,
                "min_requests": 0, "cooldown_minutes": 60, "recipients": [pm]}  # fmt: skip
    with transaction() as conn:
        create_rule(conn, project_id=project.id, rule=AlertRuleIn(**{**defaults, **rule}))
    return project, pm


def test_a_cost_alert_over_unpriced_requests_says_its_value_is_a_lower_bound(
    engine, http, smtp_server
):
    project, pm = project_with_rule(name="spend", metric="spend", threshold=0.001)
    priced = event(attempt(cost_usd="0.01"), timestamp=minutes_ago(5))
    unpriced = event(attempt(model="no-price-anywhere"), timestamp=minutes_ago(5))
    ingest(engine, project.id, [priced, unpriced])
    run_rollup(engine)
    run_alerts(engine)
    send_pending(engine)
    [fired] = smtp_server.to(pm)
    assert "spend at least $0.010000" in fired["Subject"]
    text = fired.get_body(("plain",)).get_content()
    assert "Value: at least $0.010000" in text and "Unpriced requests: 1" in text
    [alert] = http.get("/v1/alerts", headers=auth(project.read_key)).json()
    assert alert["value"] == pytest.approx(0.01) and alert["value_is_lower_bound"] is True


def a_failover() -> dict:
    """A request whose first call failed, a minute before NOW: a failover rate of 1."""
    return event(attempt(status="error"), attempt(), timestamp=minutes_ago(1))


def test_a_reminder_comes_after_the_cooldown_while_it_still_fires(engine, smtp_server):
    project, pm = project_with_rule(
        name="any failover", metric="failover_rate", window_minutes=120, threshold=0,
        min_requests=1, cooldown_minutes=5,
    )  # fmt: skip
    ingest(engine, project.id, [a_failover()])
    for minutes in (0, 1, 4, 6, 7, 12):  # fires at 0, reminders at 6 and 12
        run_alerts(engine, now=NOW + timedelta(minutes=minutes))
    send_pending(engine)
    subjects = [m["Subject"] for m in smtp_server.to(pm)]
    assert [s.split(":")[0] for s in subjects] == [
        "[RouteLedger] FIRING",
        "[RouteLedger] STILL FIRING",
        "[RouteLedger] STILL FIRING",
    ]


def a_failover_rule(engine, *, cooldown_minutes: int) -> tuple:
    """A project with a failover-rate rule (threshold 0) over one failover, a rate of 1; its
    recipient; and a function that sets the rule's threshold (0 fires, 1 does not)."""
    from app.db import transaction
    from app.schemas import AlertRuleChanges

    project, pm = project_with_rule(
        name="flapping failover", metric="failover_rate", window_minutes=120, threshold=0,
        min_requests=1, cooldown_minutes=cooldown_minutes,
    )  # fmt: skip
    ingest(engine, project.id, [a_failover()])
    with transaction() as conn:
        [rule] = alerts.list_rules(conn, project_id=project.id)

    def threshold(value: float) -> None:
        with transaction() as conn:
            alerts.update_rule(conn, project_id=project.id, rule_id=rule["id"],
                               changes=AlertRuleChanges(threshold=value))  # fmt: skip

    return project, pm, threshold


def test_an_alert_that_reopens_resolves_again_by_email_and_reminds_a_cooldown_later(
    engine, smtp_server
):
    """Fires, resolves, reopens within the cooldown (quietly), resolves again: each
    resolution is emailed, and the reminder between comes a cooldown after the last email,
    the first resolution's."""
    from app.db import transaction

    project, pm, threshold = a_failover_rule(engine, cooldown_minutes=5)
    steps = [(0, None), (1, 1.0), (2, 0.0), (5.5, None), (6, None), (7, 1.0)]
    for minutes, new_threshold in steps:  # the failover rate is 1: above 0, not above 1
        if new_threshold is not None:
            threshold(new_threshold)
        run_alerts(engine, now=NOW + timedelta(minutes=minutes))
    send_pending(engine)
    assert [m["Subject"].split(":")[0] for m in smtp_server.to(pm)] == [
        "[RouteLedger] FIRING",
        "[RouteLedger] RESOLVED",
        "[RouteLedger] STILL FIRING",  # at 6, a cooldown after the resolution at 1
        "[RouteLedger] RESOLVED",
    ]
    with transaction() as conn:
        [alert] = alerts.list_alerts(conn, project_id=project.id)
    assert alert["last_reminder_at"] == NOW + timedelta(minutes=6)  # not 5.5: 5 after firing


def test_a_flapping_alert_says_resolved_once_until_it_says_it_fires_again(engine, smtp_server):
    """Fires, resolves, then reopens and resolves twice within the cooldown (quietly, before
    any reminder): on-call hears FIRING and RESOLVED once each, not a RESOLVED per flap."""
    from app.db import transaction

    project, pm, threshold = a_failover_rule(engine, cooldown_minutes=60)
    for minutes, value in [(0, 0.0), (1, 1.0), (2, 0.0), (3, 1.0), (4, 0.0), (5, 1.0)]:
        threshold(value)
        run_alerts(engine, now=NOW + timedelta(minutes=minutes))
    send_pending(engine)
    messages = smtp_server.to(pm)
    assert [m["Subject"].split(":")[0] for m in messages] == [
        "[RouteLedger] FIRING",
        "[RouteLedger] RESOLVED",
    ]
    # The resolution names the limit the value is now under: the threshold of then.
    assert "Limit: above 100.00%" in messages[1].get_body(("plain",)).get_content()
    with transaction() as conn:
        [alert] = alerts.list_alerts(conn, project_id=project.id)
    assert alert["state"] == "resolved" and alert["resolved_at"] == NOW + timedelta(minutes=5)


def test_a_reopened_alert_says_why_it_fires_now(engine, smtp_server):
    """An alert that reopens carries the figures it reopened on, not those it first fired on."""
    from app.db import transaction
    from app.schemas import AlertRuleChanges

    project, _ = project_with_rule(
        name="spend", metric="spend", window_minutes=120, threshold=0.5, min_requests=1,
    )  # fmt: skip
    ingest(engine, project.id, [event(attempt(cost_usd="1"), timestamp=minutes_ago(1))])
    run_alerts(engine)
    with transaction() as conn:
        [rule] = alerts.list_rules(conn, project_id=project.id)
        alerts.update_rule(conn, project_id=project.id, rule_id=rule["id"],
                           changes=AlertRuleChanges(threshold=5))  # fmt: skip
    run_alerts(engine, now=NOW + timedelta(minutes=1))
    ingest(engine, project.id, [event(attempt(cost_usd="6"), timestamp=minutes_ago(0))])
    run_alerts(engine, now=NOW + timedelta(minutes=2))
    with transaction() as conn:
        [alert] = alerts.list_alerts(conn, project_id=project.id)
    assert alert["state"] == "firing"
    assert (alert["value"], alert["limit_value"]) == (pytest.approx(7.0), pytest.approx(5.0))
    assert alert["window_end"] == NOW + timedelta(minutes=2)


def test_a_loss_alert_looks_at_every_customer_with_enough_requests(engine, smtp_server):
    """min_requests counts a customer's own requests: a small customer's larger loss does not
    hide a customer with enough requests losing more than the threshold."""
    project, pm = project_with_rule(
        name="losing money", metric="negative_margin", window_minutes=120, threshold=10,
        min_requests=10,
    )  # fmt: skip
    small = [
        event(attempt(cost_usd="10"), customer_id="small", timestamp=minutes_ago(5))
        for _ in range(5)
    ]  # loses 50 over 5 requests
    large = [
        event(attempt(cost_usd="10"), customer_id="large", revenue_usd="9",
              timestamp=minutes_ago(5))
        for _ in range(20)
    ]  # fmt: skip  # loses 20 over 20 requests
    ingest(engine, project.id, small + large)
    run_alerts(engine)
    from app.db import transaction

    with transaction() as conn:
        [alert] = alerts.list_alerts(conn, project_id=project.id)
    assert (alert["value"], alert["requests"]) == (pytest.approx(20.0), 20)


def test_a_drift_alert_looks_at_every_feature_with_enough_requests(
    engine, database_url, smtp_server
):
    project, pm = project_with_rule(
        name="drift", metric="drift_psi", threshold=0.25, min_requests=100
    )
    with psycopg.connect(database_url) as conn:
        for feature, psi, current in [("tiny", 18.4, 5), ("busy", 0.879, 200)]:
            conn.execute(
                "insert into drift_results (project_id, feature, dimension, window_end, psi, "
                "current_count, reference_count, current_distribution, reference_distribution) "
                "values (%s, %s, 'tier', %s, %s, %s, 1000, '{}', '{}')",
                (project.id, feature, NOW - timedelta(minutes=30), psi, current),
            )
    run_alerts(engine)
    from app.db import transaction

    with transaction() as conn:
        [alert] = alerts.list_alerts(conn, project_id=project.id)
    assert (alert["value"], alert["requests"]) == (pytest.approx(0.879), 200)
    send_pending(engine)
    [fired] = smtp_server.to(pm)  # its window is the drift job's, not the rule's
    text = fired.get_body(("plain",)).get_content()
    assert "Window: the latest drift run's last 24 hours against the 7 days before" in text


def test_a_baseline_limit_of_unpriced_requests_keeps_its_fraction():
    assert alerts.figure_text("unpriced_requests", 3.0) == "3"
    assert alerts.figure_text("unpriced_requests", 0.3) == "0.30"


def test_disabling_a_rule_resolves_its_firing_alert(engine, http, smtp_server):
    from app.db import transaction
    from app.schemas import AlertRuleChanges

    project, _ = project_with_rule(
        name="any failover", metric="failover_rate", threshold=0, min_requests=1
    )
    ingest(engine, project.id, [a_failover()])
    run_alerts(engine)
    read = auth(project.read_key)
    assert len(http.get("/v1/alerts?state=firing", headers=read).json()) == 1
    with transaction() as conn:
        [rule] = alerts.list_rules(conn, project_id=project.id)
        alerts.update_rule(conn, project_id=project.id, rule_id=rule["id"],
                           changes=AlertRuleChanges(enabled=False))  # fmt: skip
    assert http.get("/v1/alerts?state=firing", headers=read).json() == []
    assert len(http.get("/v1/alerts?state=resolved", headers=read).json()) == 1


def pending_rows(database_url: str, address: str) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "select status, attempts, next_attempt_at > %s from email_outbox "
            "where %s = any(recipients)",
            (utc_now(), address),
        ).fetchall()


def queue_test_email(engine, address: str) -> None:
    from app.services.emails import Email, queue_email

    with engine.begin() as conn:
        queued = Email("test", [address], "hello", "plain text", "<p>html</p>")
        assert queue_email(conn, project_id=None, dedupe_key=f"test:{address}", email=queued)
        assert not queue_email(conn, project_id=None, dedupe_key=f"test:{address}", email=queued)


def test_mail_waits_while_smtp_is_down_and_goes_once_it_is_back(engine, database_url, monkeypatch):
    address = recipient()
    queue_test_email(engine, address)
    down_port = free_port()
    use_settings(monkeypatch, SMTP_URL=f"smtp://127.0.0.1:{down_port}")
    assert send_pending(engine).failed >= 1
    assert pending_rows(database_url, address) == [("pending", 1, True)]

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=down_port)
    controller.start()
    try:
        with psycopg.connect(database_url) as conn:  # as if the backoff had passed
            conn.execute(
                "update email_outbox set next_attempt_at = %s where %s = any(recipients)",
                (utc_now(), address),
            )
        send_pending(engine)
        send_pending(engine)
    finally:
        controller.stop()
        get_settings.cache_clear()
    assert len(inbox.to(address)) == 1
    assert pending_rows(database_url, address) == [("sent", 2, False)]


def test_without_smtp_mail_is_written_to_the_outbox_folder(engine, monkeypatch, tmp_path):
    monkeypatch.delenv("SMTP_URL", raising=False)
    use_settings(monkeypatch, ROUTELEDGER_DATA_DIR=str(tmp_path))
    address = recipient()
    queue_test_email(engine, address)
    try:
        send_pending(engine)
    finally:
        get_settings.cache_clear()
    files = list((tmp_path / "outbox").glob("*.eml"))
    parsed = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]
    mine = [m for m in parsed if address in m["To"]]
    assert len(mine) == 1 and mine[0].get_body(("plain",)).get_content().strip() == "plain text"
    assert os.path.getsize(files[0]) > 0


@pytest.mark.parametrize(
    "body, problem",
    [
        ({"metric": "drift_psi", "baseline_multiplier": 2}, "baseline_multiplier"),
        ({"metric": "spend"}, "threshold"),
        ({"metric": "spend", "threshold": 1, "scope": {"feature": "a", "model": "b"}}, "scope"),
        ({"metric": "latency", "threshold": 1}, "metric"),
        ({"metric": "drift_psi", "threshold": 1, "scope": {"customer_id": "a"}}, "scope"),
        ({"metric": "drift_psi", "threshold": 1, "scope": {"model": "m"}}, "scope"),
        ({"metric": "spend", "threshold": 1, "enabled": "yes"}, "enabled"),
    ],
)
def test_invalid_rules_are_refused(http, live_api, body, problem):
    rule = {"name": "r", "recipients": ["a@example.com"], **body}
    response = http.post("/v1/alert-rules", json=rule, headers=auth(live_api.admin_key))
    assert response.status_code == 422 and problem in response.text


def test_rules_can_be_listed_changed_and_deleted(http, live_api):
    rule = {"name": "spend", "metric": "spend", "threshold": 10, "recipients": ["a@example.com"]}
    created = http.post("/v1/alert-rules", json=rule, headers=auth(live_api.admin_key)).json()
    path = f"/v1/alert-rules/{created['id']}"
    changed = http.patch(path, json={"threshold": 20, "enabled": False},
                         headers=auth(live_api.admin_key))  # fmt: skip
    assert changed.status_code == 200 and changed.json()["threshold"] == 20
    assert not changed.json()["enabled"]
    listed = http.get("/v1/alert-rules", headers=auth(live_api.read_key)).json()
    assert created["id"] in [r["id"] for r in listed]
    assert (
        http.post("/v1/alert-rules", json=rule, headers=auth(live_api.read_key)).status_code == 403
    )
    assert http.delete(path, headers=auth(live_api.admin_key)).status_code == 204
    assert http.delete(path, headers=auth(live_api.admin_key)).status_code == 404


def test_a_drift_rule_stored_with_a_scope_it_ignores_can_still_be_changed(engine, database_url):
    """Rules stored before drift's scope was checked stay editable (disabled, say), and a new
    scope given them is checked."""
    from app.db import transaction
    from app.schemas import AlertRuleChanges, AlertScope

    project, _ = project_with_rule(name="drift", metric="drift_psi", threshold=0.25)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "update alert_rules set scope = %s where project_id = %s",
            (Jsonb({"customer_id": "acme"}), project.id),
        )
    with transaction() as conn:
        [rule] = alerts.list_rules(conn, project_id=project.id)
        changed = alerts.update_rule(conn, project_id=project.id, rule_id=rule["id"],
                                     changes=AlertRuleChanges(enabled=False))  # fmt: skip
        assert changed["enabled"] is False
        with pytest.raises(alerts.InvalidRule, match="scope: drift_psi is measured per feature"):
            alerts.update_rule(conn, project_id=project.id, rule_id=rule["id"],
                               changes=AlertRuleChanges(scope=AlertScope(model="m")))  # fmt: skip


# Fields a rule always has: a change may leave them out, never null them.
REQUIRED_RULE_FIELDS = (
    "name", "metric", "scope", "window_minutes", "min_requests", "cooldown_minutes",
    "recipients", "enabled",
)  # fmt: skip


@pytest.mark.parametrize(
    "change, problem",
    [
        *(({name: None}, name) for name in REQUIRED_RULE_FIELDS),
        ({"enabled": "no"}, "enabled"),
        ({"metric": "fallback_rate"}, "metric: a rule's metric cannot change"),
    ],
)
def test_a_change_that_cannot_apply_is_refused_by_name(http, live_api, change, problem):
    rule = {"name": "spend", "metric": "spend", "threshold": 10, "recipients": ["a@example.com"]}
    created = http.post("/v1/alert-rules", json=rule, headers=auth(live_api.admin_key)).json()
    path = f"/v1/alert-rules/{created['id']}"
    refused = http.patch(path, json=change, headers=auth(live_api.admin_key))
    assert refused.status_code == 422 and problem in refused.text, refused.text
    kept = http.patch(path, json={"metric": "spend", "threshold": None, "baseline_multiplier": 2},
                      headers=auth(live_api.admin_key))  # fmt: skip
    assert kept.status_code == 200, kept.text
    assert (kept.json()["threshold"], kept.json()["baseline_multiplier"]) == (None, 2)


def test_the_daily_digest_goes_once_per_project_and_day(engine, smtp_server):
    from app.services.digest import queue_digests

    project, pm = project_with_rule(name="spend", metric="spend", threshold=1000)
    today = datetime(2027, 1, 1, 8, tzinfo=UTC)
    yesterday = today - timedelta(days=1)
    unpriced = event(attempt(), timestamp=yesterday.isoformat())
    losing = event(attempt(cost_usd="0.25"), customer_id="globex", timestamp=yesterday.isoformat())
    ingest(engine, project.id, [unpriced, losing], now=today)
    run_rollup(engine, now=today)
    queue_digests(engine, now=today)
    queue_digests(engine, now=today)
    send_pending(engine)
    digests = smtp_server.to(pm)
    assert len(digests) == 1 and "daily digest" in digests[0]["Subject"]
    text = digests[0].get_body(("plain",)).get_content()
    assert "Requests: 2" in text and "Firing alerts: none" in text
    # acme-small has no price here: spend is a lower bound, savings and acme's margin upper
    # ones; globex's margin is exact, and a loss.
    assert "(lower bound: unpriced requests)" in text, text
    assert "Margin of acme: $0.00 (at most: unpriced requests)" in text, text
    assert "Margin of globex: -$0.25\r\n" in text, text
    # The link opens that project on that day, not the days since.
    expected = f"/?project={project.name}&start=2026-12-31&end=2026-12-31"
    assert expected in text, text


@pytest.mark.parametrize(
    "url, expected",
    [
        ("smtp://mail.test", ("mail.test", 25, "plain", None, None)),
        (
            "smtp://u%40x:p%2Fw@mail.test:2525?starttls=true",
            ("mail.test", 2525, "starttls", "u@x", "p/w"),
        ),
        ("smtp+starttls://u:p@mail.test", ("mail.test", 587, "starttls", "u", "p")),
        ("smtps://u:p@mail.test", ("mail.test", 465, "ssl", "u", "p")),
    ],
)
def test_smtp_urls(url, expected):
    from app.services.emails import smtp_target

    target = smtp_target(url)
    assert (target.host, target.port, target.security, target.username, target.password) == expected


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback
def test_smtp_with_login(engine, monkeypatch):
    from aiosmtpd.smtp import AuthResult, LoginPassword

    logins = []

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret"
        if ok:
            logins.append(auth_data.login)
        return AuthResult(success=ok)

    inbox = Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticate,
        auth_require_tls=False, auth_required=True,
    )  # fmt: skip
    controller.start()
    address = recipient()
    try:
        use_settings(monkeypatch, SMTP_URL=f"smtp://rl:s3cret@127.0.0.1:{controller.port}")
        queue_test_email(engine, address)
        send_pending(engine)
    finally:
        controller.stop()
        get_settings.cache_clear()
    assert logins == [b"rl"]  # the server takes no mail without a login
    assert len(inbox.to(address)) == 1


def test_window_totals_read_whole_hours_from_rollups_and_the_minutes_around_them_raw(
    engine, database_url
):
    from app.db import transaction
    from app.periods import Period, floor_hour
    from app.services.alerts import ROLLED_AFTER, measure, window_totals

    project = make_project()
    # Two minutes into an hour (the first of a year), so the hour before is over but not yet
    # ROLLED_AFTER.
    now = datetime(2027, 1, 1, 0, 2, tzinfo=UTC)
    # 30 hours of traffic, one request every 7 minutes at odd seconds, of two features,
    # two customers, escalated or not, with a fallback or not, priced or unpriced.
    events = []
    for i in range(260):
        served = (
            attempt(tier="premium", model="acme-large", cost_usd="0.0125")
            if i % 3 == 0
            else attempt(model="mystery-model" if i % 7 == 0 else "acme-small")
        )
        attempts = (attempt(status="rejected"), served) if i % 4 else (served,)
        events.append(
            event(
                *attempts,
                intended_tier="cheap",
                feature=("search", "support-chat")[i % 2],
                customer_id=("acme", "globex")[i % 5 > 2],
                timestamp=(now - timedelta(minutes=7 * i, seconds=13)).isoformat(),
            )
        )
    ingest(engine, project.id, events, now=now)
    run_rollup(engine, now=now)
    # Not rolled up yet, in an hour over for less than ROLLED_AFTER: counted all the same.
    ingest(engine, project.id, [event(timestamp=(now - timedelta(minutes=4)).isoformat())], now=now)

    columns = {"feature": "feature", "customer_id": "customer_id", "model": "served_model"}
    windows = [
        Period(now - timedelta(hours=26, minutes=7), now - timedelta(minutes=13)),
        Period(now - timedelta(hours=3, minutes=1), now),
        Period(now - timedelta(days=7), now - timedelta(hours=2, minutes=30)),
        Period(now - timedelta(minutes=50), now),
        Period(now - timedelta(minutes=50), now - timedelta(minutes=40)),
    ]
    scopes = [{}, {"feature": "search"}, {"customer_id": "globex"}, {"model": "acme-large"}]
    with psycopg.connect(database_url) as raw, transaction() as conn:
        for within in windows:
            for scope in scopes:
                where = "".join(f" and {columns[k]} = %s" for k in scope)
                expected = raw.execute(
                    "select count(*), count(*) filter (where is_escalation), "
                    "count(*) filter (where is_fallback), count(*) filter (where is_unpriced), "
                    "coalesce(sum(cost_usd), 0) from requests "
                    f"where project_id = %s and ts >= %s and ts < %s {where}",
                    (project.id, within.start, within.end, *scope.values()),
                ).fetchone()
                totals = window_totals(
                    conn, project_id=project.id, scope=scope, within=within,
                    rolled_before=floor_hour(now - ROLLED_AFTER),
                )  # fmt: skip
                found = (totals.requests, totals.escalations, totals.fallbacks,
                         totals.unpriced_requests, totals.cost_usd)  # fmt: skip
                assert found == expected, (within, scope)
                assert totals.requests > 0 or scope
                raw_only = window_totals(conn, project_id=project.id, scope=scope, within=within)
                assert raw_only == totals

        # A baseline rule's reference: the week before its window.
        rule = {
            "project_id": project.id,
            "scope": {"customer_id": "globex"},
            "metric": "escalation_rate",
            "window_minutes": 60,
            "baseline_multiplier": 2,
        }
        reference = raw.execute(
            "select count(*) filter (where is_escalation)::float / count(*) from requests "
            "where project_id = %s and customer_id = 'globex' and ts >= %s and ts < %s",
            (project.id, now - timedelta(days=7, hours=1), now - timedelta(hours=1)),
        ).fetchone()[0]
        assert measure(conn, rule=rule, now=now).reference == pytest.approx(reference)
        assert 0 < reference < 1


def test_a_policy_deviation_of_exactly_the_threshold_is_not_above_it():
    """All cheap against cheap 0.7, standard 0.25, premium 0.05 deviates by 0.3 exactly (in
    binary floats the sum is 0.30000000000000004): a rule 'above 0.3' does not fire."""
    from app.services.policies import total_variation

    deviation = total_variation({"cheap": 1.0}, {"cheap": 0.7, "standard": 0.25, "premium": 0.05})
    assert deviation == 0.3
    rule = {"threshold": Decimal("0.3"), "baseline_multiplier": None, "min_requests": 0}
    assert alerts.exceeded_limit(rule, alerts.Measurement(deviation, 10)) is None
