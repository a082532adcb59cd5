"""Reads the dashboard needs beyond app.services.metrics: the same rollups, grouped by time
or by model, and the values its filters offer. Rates, shares and money keep the
definitions of app.services.metrics (its RoutingMetrics does the arithmetic)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection, func, insert, select, text, update

from app.models import ALERT_METRICS, alert_rules, alerts, drift_results
from app.services.metrics import (
    MONEY_CONTEXT,
    Filters,
    Period,
    RoutingMetrics,
    prorated,
    revenue_records,
)
from app.services.rollups import latency_quantile

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_EPOCH = "timestamptz '2000-01-01 00:00:00+00'"


def routing_series(
    conn: Connection,
    *,
    project_id: int,
    within: Period,
    filters: Filters = Filters(),
    bucket_hours: int = 1,
) -> list[RoutingMetrics]:
    """RoutingMetrics per time bucket of `bucket_hours` (every bucket, empty ones too), with
    the counts, costs and splits filled in; policy and latency are left out."""
    width = timedelta(hours=bucket_hours)
    where, params = filters.where(project_id=project_id, within=within)
    rows = conn.execute(
        text(
            f"""
            select date_bin(:width, hour, {_EPOCH}) as bucket, intended_tier, served_tier,
                   sum(requests) as requests, sum(attempts) as attempts,
                   sum(fallbacks) as fallbacks, sum(escalations) as escalations,
                   sum(failovers) as failovers, sum(failed) as failed,
                   sum(cost_usd) as cost_usd, sum(unpriced_requests) as unpriced_requests,
                   sum(baseline_cost_usd) as baseline_cost_usd,
                   sum(baseline_unknown) as baseline_unknown, sum(revenue_usd) as revenue_usd,
                   sum(quality_sum) as quality_sum, sum(quality_count) as quality_count
            from rollup_hourly where {where}
            group by 1, 2, 3
            """
        ),
        {**params, "width": width},
    )
    series: dict[datetime, RoutingMetrics] = {}
    start = EPOCH + (within.start - EPOCH) // width * width  # as date_bin puts it
    while start < within.end:
        series[start] = RoutingMetrics(start=start, end=start + width)
        start += width
    for row in rows:
        point = series[row.bucket]
        for name in (
            "requests", "attempts", "fallbacks", "escalations", "failovers", "failed",
            "unpriced_requests", "baseline_unknown", "quality_sum", "quality_count",
        ):  # fmt: skip
            setattr(point, name, getattr(point, name) + _plain(getattr(row, name)))
        for name in ("cost_usd", "baseline_cost_usd", "revenue_usd"):
            setattr(point, name, MONEY_CONTEXT.add(getattr(point, name), getattr(row, name)))
        requests = int(row.requests)
        point.intended_counts[row.intended_tier] = (
            point.intended_counts.get(row.intended_tier, 0) + requests
        )
        if row.served_tier is not None:
            point.served_counts[row.served_tier] = (
                point.served_counts.get(row.served_tier, 0) + requests
            )
    return list(series.values())


def _plain(value: Decimal | float) -> int | float:
    """sum() of a bigint column comes back as numeric: counts as int, sums of floats as float."""
    return int(value) if isinstance(value, Decimal) else value


@dataclass(frozen=True)
class RevenuePoint:
    start: datetime
    end: datetime
    revenue_usd: Decimal


def customer_revenue_series(
    conn: Connection, *, project_id: int, customer_id: str, within: Period, bucket_hours: int = 1
) -> list[RevenuePoint]:
    """A customer's revenue per time bucket: per-request revenue plus its revenue records
    prorated into each bucket (the same rule as the customer metrics)."""
    buckets = routing_series(
        conn,
        project_id=project_id,
        within=within,
        filters=Filters(customer_id=customer_id),
        bucket_hours=bucket_hours,
    )
    records = revenue_records(conn, project_id=project_id, within=within, customer_id=customer_id)
    points = []
    for bucket in buckets:
        revenue = bucket.revenue_usd
        for record in records:
            revenue = MONEY_CONTEXT.add(
                revenue,
                prorated(
                    record.amount_usd,
                    record=(record.period_start, record.period_end),
                    within=(bucket.start, bucket.end),
                ),
            )
        points.append(RevenuePoint(bucket.start, bucket.end, revenue))
    return points


def served_model_latency(
    conn: Connection, *, project_id: int, within: Period, filters: Filters = Filters()
) -> dict[str, tuple[float | None, float | None]]:
    """Latency p50 and p95 (ms) of the requests each model served."""
    where, params = filters.where(project_id=project_id, within=within)
    rows = conn.execute(
        text(
            f"""
            select served_model, bucket, sum(n) as n
            from rollup_hourly, unnest(latency_buckets, latency_counts) as h(bucket, n)
            where {where} and served_model is not null
            group by served_model, bucket
            """
        ),
        params,
    )
    histograms: dict[str, dict[int, int]] = {}
    for row in rows:
        histograms.setdefault(row.served_model, {})[row.bucket] = int(row.n)
    return {
        model: (latency_quantile(h, 0.5), latency_quantile(h, 0.95))
        for model, h in histograms.items()
    }


@dataclass(frozen=True)
class FilterValues:
    """What the dashboard's filters offer for a period: the values present in it."""

    features: tuple[str, ...]
    customers: tuple[str, ...]
    experiments: tuple[str, ...]


def filter_values(conn: Connection, *, project_id: int, within: Period) -> FilterValues:
    where, params = Filters().where(project_id=project_id, within=within)
    row = conn.execute(
        text(
            f"""
            select array_agg(distinct feature order by feature) as features,
                   array_agg(distinct customer_id order by customer_id) as customers,
                   array_agg(distinct experiment_name order by experiment_name)
                       filter (where experiment_name is not null) as experiments
            from rollup_hourly where {where}
            """
        ),
        params,
    ).one()
    return FilterValues(
        features=tuple(row.features or ()),
        customers=tuple(row.customers or ()),
        experiments=tuple(row.experiments or ()),
    )


@dataclass(frozen=True)
class FiredAlert:
    rule: str
    metric: str
    start: datetime
    end: datetime | None  # None while it fires


@dataclass(frozen=True)
class AlertOverlay:
    """What a chart of a feature's rates draws: thresholds of the enabled rules scoped to
    the feature (or to the whole project), and the alerts of those rules in the period."""

    thresholds: dict[str, list[float]]
    fired: list[FiredAlert]


def alert_overlay(
    conn: Connection, *, project_id: int, feature: str, within: Period
) -> AlertOverlay:
    scoped = (
        "(r.scope = '{}'::jsonb or r.scope = jsonb_build_object('feature', cast(:feature as text)))"
    )
    params = {"project_id": project_id, "feature": feature}
    thresholds: dict[str, list[float]] = {}
    for row in conn.execute(
        text(
            f"""
            select r.metric, r.threshold from alert_rules r
            where r.project_id = :project_id and r.enabled and r.threshold is not null
              and {scoped}
            order by r.metric, r.threshold
            """
        ),
        params,
    ):
        thresholds.setdefault(row.metric, []).append(float(row.threshold))
    fired = [
        FiredAlert(row.name, row.metric, row.fired_at, row.resolved_at)
        for row in conn.execute(
            text(
                f"""
                select r.name, r.metric, a.fired_at, a.resolved_at
                from alerts a join alert_rules r on r.id = a.rule_id
                where a.project_id = :project_id and {scoped}
                  and a.fired_at < :end and (a.resolved_at is null or a.resolved_at > :start)
                order by a.fired_at
                """
            ),
            {**params, "start": within.start, "end": within.end},
        )
    ]
    return AlertOverlay(thresholds=thresholds, fired=fired)


# --- alert rules and alerts, as the dashboard's Alerts page lists and edits them -----------


class InvalidAlertRule(ValueError):
    pass


def list_alert_rules(conn: Connection, *, project_id: int) -> list[dict]:
    rows = conn.execute(
        select(alert_rules).where(alert_rules.c.project_id == project_id).order_by(alert_rules.c.id)
    )
    return [dict(row._mapping) for row in rows]


def create_alert_rule(
    conn: Connection,
    *,
    project_id: int,
    name: str,
    metric: str,
    feature: str | None,
    window_minutes: int,
    threshold: Decimal | None,
    baseline_multiplier: Decimal | None,
    min_requests: int,
    cooldown_minutes: int,
    recipients: list[str],
) -> int:
    if not name.strip():
        raise InvalidAlertRule("name: required")
    if metric not in ALERT_METRICS:
        raise InvalidAlertRule(f"metric: one of {', '.join(ALERT_METRICS)}")
    if threshold is None and baseline_multiplier is None:
        raise InvalidAlertRule("threshold or baseline multiplier: give at least one")
    if window_minutes <= 0 or cooldown_minutes <= 0 or min_requests < 0:
        raise InvalidAlertRule("window and cooldown: positive minutes; min requests: 0 or more")
    bad = [r for r in recipients if "@" not in r]
    if bad:
        raise InvalidAlertRule(f"recipients: {bad[0]!r} is not an email address")
    return conn.execute(
        insert(alert_rules)
        .values(
            project_id=project_id,
            name=name.strip(),
            metric=metric,
            scope={"feature": feature} if feature else {},
            window_minutes=window_minutes,
            threshold=threshold,
            baseline_multiplier=baseline_multiplier,
            min_requests=min_requests,
            cooldown_minutes=cooldown_minutes,
            recipients=recipients,
        )
        .returning(alert_rules.c.id)
    ).scalar_one()


def set_alert_rule_enabled(
    conn: Connection, *, project_id: int, rule_id: int, enabled: bool
) -> bool:
    """False when the project has no such rule."""
    result = conn.execute(
        update(alert_rules)
        .where(alert_rules.c.project_id == project_id, alert_rules.c.id == rule_id)
        .values(enabled=enabled, updated_at=func.now())
    )
    return result.rowcount == 1


def list_alerts(conn: Connection, *, project_id: int, within: Period) -> list[dict]:
    """Alerts that fired in the period or were still firing during it, newest first."""
    rows = conn.execute(
        select(
            alerts.c.id,
            alerts.c.state,
            alerts.c.fired_at,
            alerts.c.resolved_at,
            alerts.c.value,
            alerts.c.limit_value,
            alerts.c.requests,
            alert_rules.c.name.label("rule"),
            alert_rules.c.metric,
            alert_rules.c.scope,
        )
        .join(alert_rules, alert_rules.c.id == alerts.c.rule_id)
        .where(
            alerts.c.project_id == project_id,
            alerts.c.fired_at < within.end,
            (alerts.c.resolved_at.is_(None)) | (alerts.c.resolved_at > within.start),
        )
        .order_by(alerts.c.fired_at.desc())
    )
    return [dict(row._mapping) for row in rows]


# --- experiments: arms side by side, with 95% intervals ------------------------------------

Z95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class ArmFigures:
    arm: str
    requests: int
    cost_per_request: Estimate
    escalation_rate: Estimate
    mean_quality: Estimate
    quality_count: int
    unpriced_requests: int


def mean_interval(mean: float | None, sd: float | None, n: int) -> Estimate:
    """Normal approximation: mean ± 1.96 · sd / √n."""
    if mean is None or n == 0:
        return Estimate(None, None, None)
    if sd is None or n < 2:
        return Estimate(mean, None, None)
    half = Z95 * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half)


def wilson_interval(successes: int, n: int) -> Estimate:
    """The Wilson score interval of a proportion (sound near 0 and 1, and for small n)."""
    if n == 0:
        return Estimate(None, None, None)
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def experiment_arms(
    conn: Connection, *, project_id: int, within: Period, experiment: str
) -> list[ArmFigures]:
    """Per arm of an experiment: requests, cost per request, escalation rate and mean
    quality, with 95% intervals (from the requests themselves: intervals need spreads,
    which the rollups do not keep)."""
    rows = conn.execute(
        text(
            """
            select experiment_arm as arm, count(*) as requests,
                   count(*) filter (where is_escalation) as escalations,
                   avg(cost_usd) as cost_mean, stddev_samp(cost_usd) as cost_sd,
                   count(*) filter (where is_unpriced) as unpriced,
                   count(quality_score) as quality_n, avg(quality_score) as quality_mean,
                   stddev_samp(quality_score) as quality_sd
            from requests
            where project_id = :project_id and experiment_name = :experiment
              and ts >= :start and ts < :end
            group by experiment_arm order by experiment_arm
            """
        ),
        {
            "project_id": project_id,
            "experiment": experiment,
            "start": within.start,
            "end": within.end,
        },
    )
    return [
        ArmFigures(
            arm=row.arm or "(no arm)",
            requests=row.requests,
            cost_per_request=mean_interval(
                _float(row.cost_mean), _float(row.cost_sd), row.requests
            ),
            escalation_rate=wilson_interval(row.escalations, row.requests),
            mean_quality=mean_interval(row.quality_mean, row.quality_sd, row.quality_n),
            quality_count=row.quality_n,
            unpriced_requests=row.unpriced,
        )
        for row in rows
    ]


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


# --- drift: what the drift job stored ----------------------------------------------------


def drift_history(conn: Connection, *, project_id: int, within: Period) -> list[dict]:
    """PSI results whose current window ends in the period, oldest first."""
    rows = conn.execute(
        select(drift_results)
        .where(
            drift_results.c.project_id == project_id,
            drift_results.c.window_end > within.start,
            drift_results.c.window_end <= within.end,
        )
        .order_by(drift_results.c.window_end, drift_results.c.feature)
    )
    return [dict(row._mapping) for row in rows]
