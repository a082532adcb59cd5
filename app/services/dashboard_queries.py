"""Reads the dashboard needs beyond app.services.metrics: the same rollups, grouped by time
or by model, and the values its filters offer. Rates, shares and money keep the
definitions of app.services.metrics (its RoutingMetrics does the arithmetic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, select, text

from app.db import planner_settings
from app.models import drift_results
from app.periods import BIN_ORIGIN, BIN_ORIGIN_SQL, Period
from app.rollup_figures import CUSTOMER_FIGURES, REQUEST_FIGURES, Figure, named, totals_sql
from app.services.intervals import Estimate, mean_interval, sample_sd, wilson_interval
from app.services.metrics import (
    MONEY_CONTEXT,
    TOTALS_SQL,
    CustomerTotals,
    Filters,
    RoutingMetrics,
    coverage,
    latency_histograms,
)
from app.services.rollups import CUSTOMER_TIERS, FLOW, latency_quantile


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
    # Daily rows fit whole buckets only when buckets are whole days (from UTC midnight).
    source, params = filters.request_source(
        conn, project_id=project_id, within=within, daily=bucket_hours % 24 == 0
    )
    rows = conn.execute(
        text(
            f"""
            select date_bin(:width, hour, {BIN_ORIGIN_SQL}) as bucket, intended_tier,
                   served_tier, {TOTALS_SQL}
            from {source} r
            group by 1, 2, 3
            """
        ),
        {**params, "width": width},
    )
    series = {
        start: RoutingMetrics(start=start, end=start + width)
        for start in _bucket_starts(within, width)
    }
    for row in rows:
        _add(series[row.bucket], row)
    return list(series.values())


def _bucket_starts(within: Period, width: timedelta) -> list[datetime]:
    """The starts of the buckets of `width` that cover the period, as date_bin puts them."""
    start = BIN_ORIGIN + (within.start - BIN_ORIGIN) // width * width
    starts = []
    while start < within.end:
        starts.append(start)
        start += width
    return starts


def _add_sums(into, part, figures: tuple[Figure, ...]) -> None:
    """Adds the sums of `figures` in `part` (a row of sums, or totals) into `into`."""
    for figure in figures:
        value = getattr(part, figure.name)
        if figure.kind == "money":
            setattr(into, figure.name, MONEY_CONTEXT.add(getattr(into, figure.name), value))
        else:
            setattr(into, figure.name, getattr(into, figure.name) + figure.python_type(value))


def _add(into: RoutingMetrics, part) -> None:
    """Adds the sums of `part` (a row of sums or another RoutingMetrics) into `into`."""
    _add_sums(into, part, REQUEST_FIGURES)
    if isinstance(part, RoutingMetrics):
        tiers = [
            (into.intended_counts, part.intended_counts),
            (into.served_counts, part.served_counts),
        ]
    else:
        requests = {part.intended_tier: int(part.requests)}
        served = {part.served_tier: int(part.requests)} if part.served_tier else {}
        tiers = [(into.intended_counts, requests), (into.served_counts, served)]
    for counts, more in tiers:
        for tier, n in more.items():
            counts[tier] = counts.get(tier, 0) + n


def total_of(series: list[RoutingMetrics]) -> RoutingMetrics:
    """The figures of the whole series' period, from its buckets (no query)."""
    total = RoutingMetrics(start=series[0].start, end=series[-1].end)
    for point in series:
        _add(total, point)
    return total


def served_model_latency(
    conn: Connection, *, project_id: int, within: Period, filters: Filters = Filters()
) -> dict[str, tuple[float | None, float | None]]:
    """Latency p50 and p95 (ms) of the requests each model served."""
    source, params = filters.request_source(
        conn, project_id=project_id, within=within, histogram=True
    )
    histograms = latency_histograms(conn, source=source, params=params, by="served_model")
    return {
        model: (latency_quantile(h, 0.5), latency_quantile(h, 0.95))
        for model, h in histograms.items()
    }


@dataclass(kw_only=True)
class CustomerPoint(CustomerTotals):
    """One customer's figures over one time bucket, and its requests by served tier (those
    that did not fail)."""

    start: datetime
    end: datetime
    served_counts: dict[str, int] = field(default_factory=dict)


def customer_series(
    conn: Connection, *, project_id: int, within: Period, customer_id: str, bucket_hours: int = 1
) -> list[CustomerPoint]:
    """One customer's figures per time bucket of `bucket_hours` (every bucket, empty ones
    too), from the customer tier rollups: a few rows per hour, where the customer rollups by
    route keep whole days only."""
    width = timedelta(hours=bucket_hours)
    cover = coverage(conn, project_id=project_id, within=within, daily=bucket_hours % 24 == 0)
    source, params = Filters(customer_id=customer_id).source(
        CUSTOMER_TIERS, project_id=project_id, cover=cover
    )
    rows = conn.execute(
        text(
            f"""
            select date_bin(:width, hour, {BIN_ORIGIN_SQL}) as bucket, served_tier,
                   {totals_sql(CUSTOMER_FIGURES)}
            from {source} r
            group by 1, 2
            """
        ),
        {**params, "width": width},
    )
    series = {
        start: CustomerPoint(start=start, end=start + width)
        for start in _bucket_starts(within, width)
    }
    for row in rows:
        point = series[row.bucket]
        _add_sums(point, row, CUSTOMER_FIGURES)
        if row.served_tier is not None:
            point.served_counts[row.served_tier] = row.requests
    return list(series.values())


@dataclass(frozen=True)
class FilterValues:
    """What the dashboard's filters offer for a period: the values present in it."""

    features: tuple[str, ...]
    experiments: tuple[str, ...]


def filter_values(conn: Connection, *, project_id: int, within: Period) -> FilterValues:
    source, params = Filters().request_source(conn, project_id=project_id, within=within)
    row = conn.execute(
        text(
            f"""
            select array_agg(distinct feature order by feature) as features,
                   array_agg(distinct experiment_name order by experiment_name)
                       filter (where experiment_name is not null) as experiments
            from {source} r
            """
        ),
        params,
    ).one()
    return FilterValues(
        features=tuple(row.features or ()),
        experiments=tuple(row.experiments or ()),
    )


# --- experiments: arms side by side, with 95% intervals ------------------------------------


@dataclass(frozen=True)
class ArmFigures:
    arm: str
    requests: int
    cost_per_request: Estimate
    escalation_rate: Estimate
    mean_quality: Estimate
    quality_count: int
    unpriced_requests: int


# The rollup figures an arm is judged on.
_ARM_FIGURES = named(
    REQUEST_FIGURES, "requests", "escalations", "unpriced_requests", "cost_usd", "cost_sq_sum",
    "quality_sum", "quality_sq_sum", "quality_count",
)  # fmt: skip


def experiment_arms(
    conn: Connection, *, project_id: int, within: Period, experiment: str
) -> list[ArmFigures]:
    """Per arm of an experiment: requests, cost per request, escalation rate and mean
    quality, with 95% intervals. From the rollups, like the other figures: the intervals'
    spreads come from sums of squares, in double precision (only the intervals' widths use
    them); the means are exact."""
    source, params = Filters(experiment=experiment).request_source(
        conn, project_id=project_id, within=within
    )
    rows = conn.execute(
        text(
            f"select experiment_arm as arm, {totals_sql(_ARM_FIGURES)} from {source} r "
            "group by experiment_arm order by experiment_arm"
        ),
        params,
    )
    return [
        ArmFigures(
            arm=row.arm or "(no arm)",
            requests=row.requests,
            cost_per_request=mean_interval(
                float(row.cost_usd) / row.requests,
                sample_sd(float(row.cost_usd), row.cost_sq_sum, row.requests),
                row.requests,
            ),
            escalation_rate=wilson_interval(row.escalations, row.requests),
            mean_quality=mean_interval(
                row.quality_sum / row.quality_count if row.quality_count else None,
                sample_sd(row.quality_sum, row.quality_sq_sum, row.quality_count),
                row.quality_count,
            ),
            quality_count=row.quality_count,
            unpriced_requests=row.unpriced_requests,
        )
        for row in rows
    ]


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


# --- routing flow (issue 15) --------------------------------------------------------------


@dataclass(frozen=True)
class FlowLink:
    """Requests that went from an intended tier through a first attempt's model to a served
    model (None: the request failed)."""

    intended_tier: str
    first_model: str
    served_model: str | None
    requests: int


def routing_flow(
    conn: Connection, *, project_id: int, within: Period, feature: str | None = None
) -> list[FlowLink]:
    """The period's requests (of one feature, when given) by intended tier, first attempt's
    model and served model, from the flow rollup."""
    cover = coverage(conn, project_id=project_id, within=within)
    source, params = Filters(feature=feature).source(FLOW, project_id=project_id, cover=cover)
    with planner_settings(conn, enable_sort="off"):  # see app.services.advice._summed
        rows = conn.execute(
            text(
                f"""
                select intended_tier, first_model, served_model, sum(requests)::bigint
                from {source} r group by 1, 2, 3
                """
            ),
            params,
        ).all()
    return sorted((FlowLink(*row) for row in rows), key=lambda link: -link.requests)
