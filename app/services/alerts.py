"""Alert rules, their evaluation every minute, and the alerts they raise.

An alert goes firing, then resolved. One email when it fires, a reminder after each
cooldown while it still fires, one when it resolves. A rule is evaluated with its row locked
(FOR UPDATE), and the alert's change of state, its notification bookkeeping and the queued
email (under a dedupe key) commit together, so neither two racing evaluations nor a worker
restart sends an email twice. A rule that fires again within its cooldown of resolving
reopens that alert quietly instead of starting a storm; its reminder comes after the cooldown,
and its resolution is emailed again only once a reminder has said it fires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

from sqlalchemy import Connection, Engine, delete, insert, select, text, update

from app.models import alert_rules, alerts
from app.periods import Period, floor_hour, trailing, utc_now
from app.rollup_figures import REQUEST_FIGURES, named, totals_sql
from app.schemas import AlertRuleChanges, AlertRuleIn
from app.services.calibration import window_calibration
from app.services.drift import CURRENT_WINDOW as DRIFT_CURRENT_WINDOW
from app.services.drift import REFERENCE_WINDOW as DRIFT_REFERENCE_WINDOW
from app.services.emails import dashboard_url, queue_email, report_email
from app.services.metrics import (
    MONEY_CONTEXT,
    REQUESTS,
    Filters,
    add_record_revenue,
    coverage,
    customer_figures,
    revenue_records,
)
from app.services.policies import compare_with_policies
from app.services.projects import project_name
from app.services.request_facts import RATE_COUNTS, rate

# Metrics whose value over the reference window, scaled or not, makes a baseline.
BASELINE_METRICS = {*RATE_COUNTS, "cost_per_request", "spend", "unpriced_requests"}
# Totals over a window: compared with a baseline scaled to the window's length.
EXTENSIVE_METRICS = {"spend", "unpriced_requests"}
# Figures of cost: lower bounds while some of the window's requests are unpriced.
COST_METRICS = {"spend", "cost_per_request", "negative_margin"}
REFERENCE_WINDOW = timedelta(days=7)
# A reference window reads an hour from the rollups once the hour has been over this long (the
# rollup job is at most a minute behind ingest), the minutes after it from the raw rows.
ROLLED_AFTER = timedelta(minutes=5)
# What a window's totals read: the counts the measured metrics need.
WINDOW_FIGURES = named(
    REQUEST_FIGURES,
    "requests", *RATE_COUNTS.values(), "unpriced_requests", "cost_usd",
)  # fmt: skip


class InvalidRule(ValueError):
    pass


class RuleNotFound(LookupError):
    pass


# --- rules -----------------------------------------------------------------------------------


def _stored(rule: AlertRuleIn | AlertRuleChanges, *, only_set: bool) -> dict:
    """The rule's fields as stored (the scope without its empty keys)."""
    values = rule.model_dump(exclude_unset=only_set)
    if "scope" in values:
        values["scope"] = rule.scope.model_dump(exclude_none=True)
    return values


def check_rule(rule: dict) -> dict:
    if rule.get("threshold") is None and rule.get("baseline_multiplier") is None:
        raise InvalidRule("threshold: give a threshold, a baseline_multiplier or both")
    if rule.get("baseline_multiplier") is not None and rule["metric"] not in BASELINE_METRICS:
        raise InvalidRule(
            f"baseline_multiplier: {rule['metric']} has no baseline; "
            f"use it with {', '.join(sorted(BASELINE_METRICS))}"
        )
    if len(rule["scope"]) > 1:
        raise InvalidRule("scope: at most one of feature, customer_id, model")
    return rule


def _check_drift_scope(rule: dict) -> None:
    # Checked when a scope is given: rules stored before this check keep being editable.
    if rule["metric"] == "drift_psi" and not rule["scope"].keys() <= {"feature"}:
        raise InvalidRule(
            "scope: drift_psi is measured per feature: scope it by feature or not at all"
        )


def create_rule(conn: Connection, *, project_id: int, rule: AlertRuleIn) -> dict:
    values = check_rule(_stored(rule, only_set=False))
    _check_drift_scope(values)
    rule_id = conn.execute(
        insert(alert_rules).values(project_id=project_id, **values).returning(alert_rules.c.id)
    ).scalar_one()
    return get_rule(conn, project_id=project_id, rule_id=rule_id)


def get_rule(conn: Connection, *, project_id: int, rule_id: int) -> dict:
    row = conn.execute(
        select(alert_rules).where(
            alert_rules.c.project_id == project_id, alert_rules.c.id == rule_id
        )
    ).first()
    if row is None:
        raise RuleNotFound(f"no alert rule {rule_id} in this project")
    return dict(row._mapping)


def list_rules(conn: Connection, *, project_id: int) -> list[dict]:
    rows = conn.execute(
        select(alert_rules).where(alert_rules.c.project_id == project_id).order_by(alert_rules.c.id)
    )
    return [dict(row._mapping) for row in rows]


def update_rule(
    conn: Connection, *, project_id: int, rule_id: int, changes: AlertRuleChanges
) -> dict:
    current = get_rule(conn, project_id=project_id, rule_id=rule_id)
    values = _stored(changes, only_set=True)
    if values.get("metric", current["metric"]) != current["metric"]:
        # Its alerts' figures and limits are in the unit of its metric.
        raise InvalidRule(
            f"metric: a rule's metric cannot change (it measures {current['metric']}); "
            "create a new rule"
        )
    check_rule({**current, **values})
    if "scope" in values:
        _check_drift_scope({**current, **values})
    now = utc_now()
    conn.execute(
        update(alert_rules)
        .where(alert_rules.c.project_id == project_id, alert_rules.c.id == rule_id)
        .values(**values, updated_at=now)
    )
    if values.get("enabled") is False:
        # A disabled rule is no longer evaluated: its alert would stay firing for good.
        conn.execute(
            update(alerts)
            .where(
                alerts.c.project_id == project_id,
                alerts.c.rule_id == rule_id,
                alerts.c.state == "firing",
            )
            .values(state="resolved", resolved_at=now)
        )
    return get_rule(conn, project_id=project_id, rule_id=rule_id)


def delete_rule(conn: Connection, *, project_id: int, rule_id: int) -> None:
    """Deletes a rule and its alerts."""
    result = conn.execute(
        delete(alert_rules).where(
            alert_rules.c.project_id == project_id, alert_rules.c.id == rule_id
        )
    )
    if result.rowcount != 1:
        raise RuleNotFound(f"no alert rule {rule_id} in this project")


def list_alerts(
    conn: Connection, *, project_id: int, state: str | None = None, limit: int = 200
) -> list[dict]:
    query = (
        select(alerts, alert_rules.c.name.label("rule_name"), alert_rules.c.metric)
        .join(
            alert_rules,
            (alert_rules.c.project_id == alerts.c.project_id)
            & (alert_rules.c.id == alerts.c.rule_id),
        )
        .where(alerts.c.project_id == project_id)
        .order_by(alerts.c.fired_at.desc(), alerts.c.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(alerts.c.state == state)
    return [dict(row._mapping) for row in conn.execute(query)]


# --- measuring a rule ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    value: float | None
    requests: int
    reference: float | None = None
    # Requests whose cost is unknown, for a figure of cost: the value is then a lower bound.
    unpriced: int = 0

    @property
    def is_lower_bound(self) -> bool:
        return self.unpriced > 0


def window_source(
    conn: Connection,
    *,
    project_id: int,
    scope: dict,
    within: Period,
    rolled_before: datetime | None = None,
    customers: bool = False,
) -> tuple[str, dict]:
    """The scope's requests in the window, as rollup rows (see Filters.source): read from
    the raw rows (alerts look at minutes, the rollups at hours), except its whole hours
    before `rolled_before`, which come from the rollups (a rule's week of reference traffic
    is too many rows to read every minute). `customers`: rows keyed by customer too."""
    filters = Filters(feature=scope.get("feature"), customer_id=scope.get("customer_id"))
    cover = coverage(
        conn, project_id=project_id, within=within, rolled_before=rolled_before or within.start
    )
    # No alert metric reads latency: the histograms are left out.
    table = (REQUESTS if customers else filters.rollups[0]).figures_only
    source, params = filters.source(table, project_id=project_id, cover=cover)
    if "model" in scope:
        source = f"(select * from {source} s where served_model = :scope_model)"
        params["scope_model"] = scope["model"]
    return source, params


def window_totals(
    conn: Connection,
    *,
    project_id: int,
    scope: dict,
    within: Period,
    rolled_before: datetime | None = None,
):
    """The sums of WINDOW_FIGURES over the scope's requests in the window."""
    source, params = window_source(
        conn, project_id=project_id, scope=scope, within=within, rolled_before=rolled_before
    )
    return conn.execute(text(f"select {totals_sql(WINDOW_FIGURES)} from {source} r"), params).one()


def _value(metric: str, totals) -> float | None:
    if metric in RATE_COUNTS:
        return rate(getattr(totals, RATE_COUNTS[metric]), totals.requests)
    if metric == "cost_per_request":
        return rate(totals.cost_usd, totals.requests)
    if metric == "spend":
        return float(totals.cost_usd)
    return float(totals.unpriced_requests)


def _worst_loss(
    conn: Connection, *, project_id: int, scope: dict, within: Period, min_requests: int
) -> Measurement:
    """The largest cost − revenue of a customer of the scope with at least `min_requests`
    requests over the window."""
    source, params = window_source(
        conn, project_id=project_id, scope=scope, within=within, customers=True
    )
    figures = customer_figures(conn, source=source, params=params)
    records = revenue_records(
        conn, project_id=project_id, within=within, customer_id=scope.get("customer_id")
    )
    add_record_revenue(figures, [r for r in records if r.customer_id in figures], within=within)
    counted = [c for c in figures.values() if c.requests >= min_requests]
    if not counted:
        return Measurement(None, 0)
    worst = min(counted, key=lambda c: c.margin_usd)
    return Measurement(
        float(MONEY_CONTEXT.minus(worst.margin_usd)),
        worst.requests,
        unpriced=worst.unpriced_requests,
    )


def _policy_deviation(
    conn: Connection, *, project_id: int, scope: dict, within: Period
) -> Measurement:
    """The window's intended split against the policies in force (each request held to its
    feature's policy at its time); features without a policy are left out."""
    source, params = window_source(conn, project_id=project_id, scope=scope, within=within)
    found = compare_with_policies(conn, source=source, params=params)
    if found is None:
        return Measurement(None, 0)
    return Measurement(found.deviation, found.requests)


def _drift(
    conn: Connection, *, project_id: int, scope: dict, now: datetime, min_requests: int
) -> Measurement:
    """The largest PSI among the latest drift results (of the scope's feature) over at least
    `min_requests` current requests."""
    query = """
        select distinct on (feature, dimension) psi, current_count from drift_results
        where project_id = :project_id and window_end > :since
    """
    params: dict = {"project_id": project_id, "since": now - timedelta(hours=2)}
    if "feature" in scope:
        query += " and feature = :feature"
        params["feature"] = scope["feature"]
    query += " order by feature, dimension, window_end desc"
    rows = [r for r in conn.execute(text(query), params) if r.current_count >= min_requests]
    if not rows:
        return Measurement(None, 0)
    worst = max(rows, key=lambda r: r.psi)
    return Measurement(worst.psi, worst.current_count)


def rule_window(rule: dict, now: datetime) -> Period:
    """The trailing window a rule looks at, ending now."""
    return trailing(timedelta(minutes=rule["window_minutes"]), end=now)


def measure(conn: Connection, *, rule: dict, now: datetime) -> Measurement:
    project_id, scope, metric = rule["project_id"], rule["scope"], rule["metric"]
    within = rule_window(rule, now)
    window = within.end - within.start
    if metric == "negative_margin":
        return _worst_loss(
            conn, project_id=project_id, scope=scope, within=within,
            min_requests=rule["min_requests"],
        )  # fmt: skip
    if metric == "policy_deviation":
        return _policy_deviation(conn, project_id=project_id, scope=scope, within=within)
    if metric == "drift_psi":
        return _drift(
            conn, project_id=project_id, scope=scope, now=now, min_requests=rule["min_requests"]
        )
    if metric == "calibration_error":
        found = window_calibration(conn, project_id=project_id, scope=scope, within=within)
        return Measurement(found.expected_calibration_error, found.requests)
    totals = window_totals(conn, project_id=project_id, scope=scope, within=within)
    reference = None
    if rule["baseline_multiplier"] is not None:
        before = trailing(REFERENCE_WINDOW, end=within.start)
        past = window_totals(
            conn, project_id=project_id, scope=scope, within=before,
            rolled_before=floor_hour(now - ROLLED_AFTER),
        )  # fmt: skip
        reference = _value(metric, past)
        if reference is not None and metric in EXTENSIVE_METRICS:
            reference *= window / REFERENCE_WINDOW
    unpriced = totals.unpriced_requests if metric in COST_METRICS else 0
    return Measurement(_value(metric, totals), totals.requests, reference, unpriced)


def _limits(rule: dict, found: Measurement) -> list[float]:
    """The rule's limits now: its threshold, and its multiplier times the reference."""
    limits = []
    if rule["threshold"] is not None:
        limits.append(float(rule["threshold"]))
    if rule["baseline_multiplier"] is not None and found.reference is not None:
        limits.append(float(rule["baseline_multiplier"]) * found.reference)
    return limits


def exceeded_limit(rule: dict, found: Measurement) -> float | None:
    """The limit the value is above (the lower one when both are), or None: not firing."""
    if found.value is None or found.requests < rule["min_requests"]:
        return None
    above = [limit for limit in _limits(rule, found) if found.value > limit]
    return min(above) if above else None


# --- evaluation and state -----------------------------------------------------------------------


@dataclass(frozen=True)
class AlertsRun:
    evaluated: int
    fired: int
    reminded: int
    resolved: int


def run_alerts(engine: Engine, *, now: datetime | None = None) -> AlertsRun:
    """Evaluates every enabled rule once, each in its own transaction."""
    with engine.connect() as conn:
        rules = conn.execute(
            select(alert_rules.c.project_id, alert_rules.c.id)
            .where(alert_rules.c.enabled)
            .order_by(alert_rules.c.id)
        ).all()
    outcomes = []
    for project_id, rule_id in rules:
        with engine.begin() as conn:
            outcomes.append(evaluate_rule(conn, project_id=project_id, rule_id=rule_id, now=now))
    return AlertsRun(
        evaluated=len(rules),
        fired=outcomes.count("fired"),
        reminded=outcomes.count("reminded"),
        resolved=outcomes.count("resolved"),
    )


def evaluate_rule(
    conn: Connection, *, project_id: int, rule_id: int, now: datetime | None = None
) -> str | None:
    """Evaluates one rule and moves its alert on; returns what happened, if anything."""
    row = conn.execute(
        select(alert_rules)
        .where(
            alert_rules.c.project_id == project_id,
            alert_rules.c.id == rule_id,
            alert_rules.c.enabled,
        )
        .with_for_update()
    ).first()
    if row is None:
        return None  # deleted or disabled since it was listed
    rule = dict(row._mapping)
    now = now or utc_now()
    found = measure(conn, rule=rule, now=now)
    limit = exceeded_limit(rule, found)
    open_alert = conn.execute(
        select(alerts).where(
            alerts.c.project_id == project_id,
            alerts.c.rule_id == rule_id,
            alerts.c.state == "firing",
        )
    ).first()
    cooldown = timedelta(minutes=rule["cooldown_minutes"])
    window = rule_window(rule, now)

    if limit is None:
        if open_alert is None:
            return None
        # The resolution is emailed when the last email about the alert said it fired (or
        # still fires): one that reopened quietly and resolves before its reminder was
        # emailed resolved for on-call already; another email each time would be a storm.
        told_firing = open_alert.resolved_notified_at is None or (
            open_alert.last_reminder_at is not None
            and open_alert.last_reminder_at > open_alert.resolved_notified_at
        )
        conn.execute(
            update(alerts)
            .where(alerts.c.project_id == project_id, alerts.c.id == open_alert.id)
            .values(
                state="resolved",
                resolved_at=now,
                resolved_notified_at=now if told_firing else open_alert.resolved_notified_at,
                last_value=found.value if found.value is not None else open_alert.last_value,
                last_evaluated_at=now,
            )
        )
        if not told_firing:
            return "resolved"
        # The limit it is under now, in the rule's terms of now (a baseline moves).
        under = min(_limits(rule, found), default=open_alert.limit_value)
        _notify(conn, rule, open_alert.id, f"resolved {now.isoformat()}", found, under, window)
        return "resolved"

    figures = {"last_value": found.value, "last_evaluated_at": now}
    if open_alert is None:
        recent = conn.execute(
            select(alerts)
            .where(
                alerts.c.project_id == project_id,
                alerts.c.rule_id == rule_id,
                alerts.c.resolved_at > now - cooldown,
            )
            .order_by(alerts.c.resolved_at.desc())
            .limit(1)
        ).first()
        if recent is not None:  # flapping: reopen quietly; a reminder a cooldown after the
            # last email (the resolution's, when one went), not sooner
            last_email = recent.resolved_notified_at or recent.last_reminder_at
            conn.execute(
                update(alerts)
                .where(alerts.c.project_id == project_id, alerts.c.id == recent.id)
                .values(
                    state="firing",
                    resolved_at=None,
                    last_reminder_at=last_email,
                    **_firing_figures(found, limit, window),
                    **figures,
                )
            )
            return "reopened"
        alert_id = conn.execute(
            insert(alerts)
            .values(
                rule_id=rule_id,
                project_id=rule["project_id"],
                state="firing",
                fired_at=now,
                fired_notified_at=now,
                **_firing_figures(found, limit, window),
                **figures,
            )
            .returning(alerts.c.id)
        ).scalar_one()
        _notify(conn, rule, alert_id, "fired", found, limit, window)
        return "fired"

    last_email = open_alert.last_reminder_at or open_alert.fired_notified_at
    if now - last_email >= cooldown:
        conn.execute(
            update(alerts)
            .where(alerts.c.project_id == project_id, alerts.c.id == open_alert.id)
            .values(last_reminder_at=now, **figures)
        )
        _notify(conn, rule, open_alert.id, f"reminder {now.isoformat()}", found, limit, window)
        return "reminded"
    conn.execute(
        update(alerts)
        .where(alerts.c.project_id == project_id, alerts.c.id == open_alert.id)
        .values(**figures)
    )
    return None


def _firing_figures(found: Measurement, limit: float, window: Period) -> dict:
    """What an alert says about why it fires: when it fires, and again when it reopens."""
    return {
        "value": found.value,
        "value_is_lower_bound": found.is_lower_bound,
        "limit_value": limit,
        "requests": found.requests,
        "window_start": window.start,
        "window_end": window.end,
    }


# --- the emails ----------------------------------------------------------------------------------


def scope_text(scope: dict) -> str:
    if not scope:
        return "the whole project"
    ((key, value),) = scope.items()
    return f"{key.replace('_id', '')} {value}"


def figure_text(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no data"
    if metric.endswith("_rate"):
        return f"{value:.2%}"
    if metric in COST_METRICS:
        return f"${Decimal(repr(value)):.6f}"
    if metric == "unpriced_requests":  # a count; a baseline limit may be a fraction of one
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
    return f"{value:.4f}"


def _notify(
    conn: Connection,
    rule: dict,
    alert_id: int,
    event: str,
    found: Measurement,
    limit: float,
    window: Period,
) -> None:
    kind = event.split()[0]
    metric = rule["metric"]
    state = {"fired": "FIRING", "reminder": "STILL FIRING", "resolved": "RESOLVED"}[kind]
    value = figure_text(metric, found.value)
    if found.is_lower_bound:
        value = f"at least {value}"
    subject = (
        f"[RouteLedger] {state}: {rule['name']} — {metric} {value} ({scope_text(rule['scope'])})"
    )
    # The project in the link: a user of several projects lands on this one's alerts.
    project = project_name(conn, project_id=rule["project_id"])
    link = dashboard_url("/alerts?" + urlencode({"project": project, "rule": rule["id"]}))
    lines = [
        ("Rule", rule["name"]),
        ("Metric", metric),
        ("Scope", scope_text(rule["scope"])),
        ("Value", value),
        *(
            [("Unpriced requests", f"{found.unpriced}: their cost is unknown, counted as none")]
            if found.is_lower_bound
            else []
        ),
        ("Limit", f"above {figure_text(metric, limit)}"),
        (
            "Threshold",
            "none" if rule["threshold"] is None else figure_text(metric, _float(rule["threshold"])),
        ),
        ("Baseline", _baseline_text(rule, found)),
        ("Requests in window", str(found.requests)),
        ("Window", _window_text(metric, window)),
    ]
    verb = {"fired": "fired", "reminder": "is still firing", "resolved": "has resolved"}[kind]
    queue_email(
        conn,
        project_id=rule["project_id"],
        dedupe_key=f"alert:{alert_id}:{event}",
        email=report_email(
            kind=f"alert_{kind}",
            recipients=list(rule["recipients"]),
            subject=subject,
            intro=f"Alert rule {rule['name']!r} {verb}.",
            lines=lines,
            link=link,
        ),
    )


def _window_text(metric: str, window: Period) -> str:
    if metric == "drift_psi":  # measured by the drift job, over windows of its own
        return (
            f"the latest drift run's last {DRIFT_CURRENT_WINDOW.total_seconds() / 3600:.0f} hours "
            f"against the {DRIFT_REFERENCE_WINDOW.days} days before"
        )
    return f"{window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} UTC"


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _baseline_text(rule: dict, found: Measurement) -> str:
    if rule["baseline_multiplier"] is None:
        return "none"
    reference = figure_text(rule["metric"], found.reference)
    return f"{rule['baseline_multiplier']} × {reference} (the previous 7 days)"
