"""The read side of every metric in DESIGN.md, over the rollups (and, for the hours of one
customer outside whole days, over the requests themselves: see app.services.rollups).

Used by the API, the dashboard, the exports and the alert emails. Periods are half-open
[start, end) and whole hours. Money stays Decimal, summed by PostgreSQL at full precision.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection, text

from app.services.rollups import (
    ATTEMPTS,
    BIN_ORIGIN_SQL,
    CUSTOMERS,
    DAILY,
    DAY,
    HOURLY,
    REQUESTS,
    ROLLUP_DAILY_JOB,
    ROUTING,
    ROUTING_ATTEMPTS,
    RollupTable,
    floor_day,
    latency_quantile,
    raw_rows,
    raw_select,
)

MONEY_CONTEXT = decimal.Context(prec=50)


class InvalidPeriod(ValueError):
    """422: a bound that is not a whole hour, or an empty period."""


def parse_hour(value: str, *, name: str) -> datetime:
    """A whole UTC hour from an ISO 8601 date (its midnight) or date-time; naive is UTC."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidPeriod(f"{name}: {value!r} is not an ISO 8601 date or date-time") from None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if (at.minute, at.second, at.microsecond) != (0, 0, 0):
        raise InvalidPeriod(f"{name}: {value!r} is not a whole hour (metrics are hourly)")
    return at


def period(start: str | None, end: str | None, *, now: datetime | None = None) -> Period:
    """The period of a metrics call; by default the 24 hours up to the end of this hour."""
    now = now or datetime.now(UTC)
    end_at = parse_hour(end, name="end") if end else _next_hour(now)
    start_at = parse_hour(start, name="start") if start else end_at - timedelta(days=1)
    if start_at >= end_at:
        raise InvalidPeriod("start: must be before end")
    return Period(start_at, end_at)


def _next_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Coverage:
    """The rollup rows that make up a period, as half-open ranges: its whole days read from
    the daily tables, every other hour from the hourly ones."""

    hours: tuple[tuple[datetime, datetime], ...]
    days: tuple[tuple[datetime, datetime], ...] = ()


def coverage(conn: Connection, *, project_id: int, within: Period, daily: bool = True) -> Coverage:
    """Reads whole days from the daily rollups except the days that must be read hour by
    hour: a day whose daily rows are not folded yet (waiting for the rollup job, as the
    current day does until it is over), and a day on which a policy took effect after
    midnight (the policy rule goes hour by hour). `daily=False` reads hours only."""
    first, last = floor_day(within.start), floor_day(within.end)
    if first < within.start:
        first += DAY
    if not daily or first >= last:
        return Coverage(hours=((within.start, within.end),))
    by_hour = set(
        conn.execute(
            text(
                f"""
                select hour from dirty_hours
                where job = :job and project_id = :project_id and hour >= :first and hour < :last
                union
                select date_bin('1 day', effective_from, {BIN_ORIGIN_SQL}) from policies
                where project_id = :project_id and effective_from > :first
                  and effective_from < :last
                  and effective_from <> date_bin('1 day', effective_from, {BIN_ORIGIN_SQL})
                """
            ),
            {"job": ROLLUP_DAILY_JOB, "project_id": project_id, "first": first, "last": last},
        ).scalars()
    )
    hours: list[tuple[datetime, datetime]] = []
    days: list[tuple[datetime, datetime]] = []
    _extend(hours, within.start, first)
    day = first
    while day < last:
        _extend(hours if day in by_hour else days, day, day + DAY)
        day += DAY
    _extend(hours, last, within.end)
    return Coverage(hours=tuple(hours), days=tuple(days))


def _extend(ranges: list[tuple[datetime, datetime]], start: datetime, end: datetime) -> None:
    """Adds [start, end) to sorted ranges, merged with the last one when they touch."""
    if start >= end:
        return
    if ranges and ranges[-1][1] == start:
        ranges[-1] = (ranges[-1][0], end)
    else:
        ranges.append((start, end))


@dataclass(frozen=True)
class Filters:
    """Which requests: all of the project's, or one feature, customer, experiment (arm)."""

    feature: str | None = None
    customer_id: str | None = None
    experiment: str | None = None
    arm: str | None = None

    @property
    def rollups(self) -> tuple[RollupTable, RollupTable]:
        """The request and attempt rollups to read: the customer-free ones unless a customer
        is asked for (they hold many times fewer rows)."""
        if self.customer_id is None:
            return ROUTING, ROUTING_ATTEMPTS
        return REQUESTS, ATTEMPTS

    def source(self, table: RollupTable, *, project_id: int, cover: Coverage) -> tuple[str, dict]:
        """A subquery of `table`'s rows that make up the covered period and pass the filters
        (each row's bin start named `hour`, whether an hour or a day), and its parameters.
        A grain the table does not keep is computed from the raw rows of its ranges."""
        params: dict = {"project_id": project_id, **self.columns()}
        selects = []
        for grain, ranges in ((HOURLY, cover.hours), (DAILY, cover.days)):
            if not ranges:
                continue
            kept = grain in table.grains
            spans = []
            for i, (start, end) in enumerate(ranges):
                low, high = f"{grain.suffix}_start_{i}", f"{grain.suffix}_end_{i}"
                params[low], params[high] = start, end
                spans.append(
                    f"{grain.column} >= :{low} and {grain.column} < :{high}"
                    if kept
                    else raw_rows(table, low=f":{low}", high=f":{high}")
                )
            prefix = "" if kept else f"{table.raw_alias}."
            where = f"({' or '.join(spans)})" + "".join(
                f" and {prefix}{column} = :{column}" for column in self.columns()
            )
            if kept:
                selects.append(
                    f"select {grain.column} as hour, {', '.join(table.columns)} "
                    f"from {table.at(grain)} where project_id = :project_id and {where}"
                )
            else:
                selects.append(
                    f"select bin as hour, {', '.join(table.columns)} "
                    f"from ({raw_select(table, grain=grain, where=where)}) raw"
                )
        return f"({' union all '.join(selects)})", params

    def request_source(
        self, conn: Connection, *, project_id: int, within: Period, daily: bool = True
    ) -> tuple[str, dict]:
        """`source` of the request rollup to read, over the coverage of the period."""
        cover = coverage(conn, project_id=project_id, within=within, daily=daily)
        return self.source(self.rollups[0], project_id=project_id, cover=cover)

    def columns(self) -> dict[str, str]:
        """The filtered columns (named alike in requests and rollups) and their values."""
        pairs = {
            "feature": self.feature,
            "customer_id": self.customer_id,
            "experiment_name": self.experiment,
            "experiment_arm": self.arm,
        }
        return {column: value for column, value in pairs.items() if value is not None}


def ratio(part, whole) -> float | None:
    return float(part) / float(whole) if whole else None


def money_text(value: Decimal | None) -> str | None:
    """A decimal string without exponent, at the precision it has."""
    return None if value is None else format(value, "f")


# --- routing ------------------------------------------------------------------------------


@dataclass
class ModelFigures:
    model: str
    tier: str
    attempts: int = 0
    served: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_attempts: int = 0
    quality_sum: float = 0.0
    quality_count: int = 0

    @property
    def mean_quality(self) -> float | None:
        return ratio(self.quality_sum, self.quality_count)


@dataclass
class RoutingMetrics:
    start: datetime
    end: datetime
    requests: int = 0
    attempts: int = 0
    fallbacks: int = 0
    escalations: int = 0
    failovers: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0
    baseline_cost_usd: Decimal = Decimal(0)
    baseline_unknown: int = 0
    revenue_usd: Decimal = Decimal(0)
    quality_sum: float = 0.0
    quality_count: int = 0
    intended_counts: dict[str, int] = field(default_factory=dict)
    served_counts: dict[str, int] = field(default_factory=dict)
    policy_split: dict[str, float] | None = None
    policy_deviation: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    by_model: list[ModelFigures] = field(default_factory=list)

    @property
    def fallback_rate(self) -> float | None:
        return ratio(self.fallbacks, self.requests)

    @property
    def escalation_rate(self) -> float | None:
        return ratio(self.escalations, self.requests)

    @property
    def failover_rate(self) -> float | None:
        return ratio(self.failovers, self.requests)

    @property
    def cost_per_request(self) -> Decimal | None:
        if not self.requests:
            return None
        return MONEY_CONTEXT.divide(self.cost_usd, self.requests)

    @property
    def intended_split(self) -> dict[str, float]:
        return shares(self.intended_counts)

    @property
    def served_split(self) -> dict[str, float]:
        return shares(self.served_counts)

    @property
    def baseline_known(self) -> bool:
        return self.baseline_unknown == 0

    @property
    def savings_usd(self) -> Decimal | None:
        """Σ baseline − Σ cost; unknown while some request has no baseline cost."""
        return self.baseline_cost_usd - self.cost_usd if self.baseline_known else None

    @property
    def savings_pct(self) -> float | None:
        savings = self.savings_usd
        return ratio(savings, self.baseline_cost_usd) if savings is not None else None

    @property
    def mean_quality(self) -> float | None:
        return ratio(self.quality_sum, self.quality_count)


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {key: n / total for key, n in sorted(counts.items())} if total else {}


def total_variation(left: dict[str, float], right: dict[str, float]) -> float:
    """½ Σ |left − right| over the keys of both."""
    return 0.5 * sum(abs(left.get(k, 0.0) - right.get(k, 0.0)) for k in set(left) | set(right))


TOTALS_SQL = """
    sum(requests)::bigint as requests, sum(attempts)::bigint as attempts,
    sum(fallbacks)::bigint as fallbacks, sum(escalations)::bigint as escalations,
    sum(failovers)::bigint as failovers, sum(failed)::bigint as failed,
    sum(input_tokens)::bigint as input_tokens, sum(output_tokens)::bigint as output_tokens,
    sum(cost_usd) as cost_usd, sum(unpriced_requests)::bigint as unpriced_requests,
    sum(baseline_cost_usd) as baseline_cost_usd, sum(baseline_unknown)::bigint as baseline_unknown,
    sum(revenue_usd) as revenue_usd, sum(quality_sum) as quality_sum,
    sum(quality_count)::bigint as quality_count
"""
TOTAL_FIELDS = (
    "requests", "attempts", "fallbacks", "escalations", "failovers", "failed", "input_tokens",
    "output_tokens", "cost_usd", "unpriced_requests", "baseline_cost_usd", "baseline_unknown",
    "revenue_usd", "quality_sum", "quality_count",
)  # fmt: skip


def routing_metrics(
    conn: Connection, *, project_id: int, within: Period, filters: Filters = Filters()
) -> RoutingMetrics:
    cover = coverage(conn, project_id=project_id, within=within)
    request_rollup, attempt_rollup = filters.rollups
    requests, params = filters.source(request_rollup, project_id=project_id, cover=cover)
    attempts, _ = filters.source(attempt_rollup, project_id=project_id, cover=cover)
    result = RoutingMetrics(start=within.start, end=within.end)
    by_model: dict[tuple[str, str], ModelFigures] = {}
    rows = conn.execute(
        text(
            f"""
            select grouping(intended_tier) = 0 as by_intended,
                   grouping(served_tier) = 0 as by_served,
                   grouping(served_model) = 0 as by_model,
                   intended_tier, served_tier, served_model, {TOTALS_SQL}
            from {requests} r
            group by grouping sets ((), (intended_tier), (served_tier),
                                    (served_model, served_tier))
            """
        ),
        params,
    )
    for row in rows:
        if row.by_model:
            if row.served_model is not None:
                figures = by_model.setdefault(
                    (row.served_model, row.served_tier),
                    ModelFigures(model=row.served_model, tier=row.served_tier),
                )
                figures.served = row.requests
                figures.quality_sum = row.quality_sum
                figures.quality_count = row.quality_count
        elif row.by_served:
            if row.served_tier is not None:  # the served split is over requests that did not fail
                result.served_counts[row.served_tier] = row.requests
        elif row.by_intended:
            result.intended_counts[row.intended_tier] = row.requests
        elif row.requests:
            for name in TOTAL_FIELDS:
                setattr(result, name, getattr(row, name))

    for row in conn.execute(
        text(
            f"""
            select model, tier, sum(attempts)::bigint as attempts, sum(cost_usd) as cost_usd,
                   sum(unpriced_attempts)::bigint as unpriced_attempts
            from {attempts} r group by model, tier
            """
        ),
        params,
    ):
        figures = by_model.setdefault(
            (row.model, row.tier), ModelFigures(model=row.model, tier=row.tier)
        )
        figures.attempts = row.attempts
        figures.cost_usd = row.cost_usd
        figures.unpriced_attempts = row.unpriced_attempts
    result.by_model = [by_model[key] for key in sorted(by_model)]

    result.policy_split, result.policy_deviation = _policy(conn, source=requests, params=params)
    histogram = latency_histogram(conn, source=requests, params=params)
    result.latency_p50_ms = latency_quantile(histogram, 0.5)
    result.latency_p95_ms = latency_quantile(histogram, 0.95)
    return result


def latency_histogram(conn: Connection, *, source: str, params: dict) -> dict[int, int]:
    """{bucket: count} of the rows of a request rollup `source` (see Filters.source)."""
    rows = conn.execute(
        text(
            f"""
            select bucket, sum(n)::bigint as n
            from {source} r, unnest(latency_buckets, latency_counts) as h(bucket, n)
            group by bucket
            """
        ),
        params,
    )
    return {row.bucket: row.n for row in rows}


def _policy(
    conn: Connection, *, source: str, params: dict
) -> tuple[dict[str, float] | None, float | None]:
    """The policy split the requests should have had, and their distance from it.

    Each hour of each feature is held to the policy in force at the start of that hour, so
    the policy split of a period is the request-weighted mix of those policies; requests of
    features without a policy are left out of both sides. A daily row's hours all share the
    policy in force at its midnight (coverage reads the other days hour by hour).
    """
    rows = conn.execute(
        text(
            f"""
            with in_force as (
                select feature, split, effective_from as since,
                       lead(effective_from) over (partition by feature
                                                  order by effective_from) as until
                from policies where project_id = :project_id
            )
            select p.split, r.intended_tier, sum(r.requests)::bigint as requests
            from {source} r
            join in_force p on p.feature = r.feature and r.hour >= p.since
                           and (p.until is null or r.hour < p.until)
            group by p.split, r.intended_tier
            """
        ),
        params,
    ).all()
    covered = sum(row.requests for row in rows)
    if not covered:
        return None, None
    intended: dict[str, int] = {}
    weights: dict[tuple, int] = {}
    for row in rows:
        intended[row.intended_tier] = intended.get(row.intended_tier, 0) + row.requests
        key = tuple(sorted(row.split.items()))
        weights[key] = weights.get(key, 0) + row.requests
    policy: dict[str, float] = {}
    for split, requests in weights.items():
        for tier, share in split:
            policy[tier] = policy.get(tier, 0.0) + share * requests / covered
    policy = dict(sorted(policy.items()))
    return policy, total_variation(shares(intended), policy)


# --- customers: cost, revenue, margin -------------------------------------------------------


@dataclass
class CustomerFigures:
    customer_id: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    request_revenue_usd: Decimal = Decimal(0)
    record_revenue_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0

    @property
    def revenue_usd(self) -> Decimal:
        return MONEY_CONTEXT.add(self.request_revenue_usd, self.record_revenue_usd)

    @property
    def margin_usd(self) -> Decimal:
        return MONEY_CONTEXT.subtract(self.revenue_usd, self.cost_usd)

    @property
    def margin_pct(self) -> Decimal | None:
        """margin / revenue; none when revenue is 0."""
        revenue = self.revenue_usd
        return MONEY_CONTEXT.divide(self.margin_usd, revenue) if revenue else None


def prorated(
    amount: Decimal, *, record: tuple[datetime, datetime], within: tuple[datetime, datetime]
) -> Decimal:
    """A revenue record's amount times the share of its period inside `within`, by seconds."""
    overlap = min(record[1], within[1]) - max(record[0], within[0])
    if overlap <= timedelta(0):
        return Decimal(0)
    micro = timedelta(microseconds=1)
    return MONEY_CONTEXT.divide(
        MONEY_CONTEXT.multiply(amount, overlap // micro), (record[1] - record[0]) // micro
    )


def revenue_records(
    conn: Connection, *, project_id: int, within: Period, customer_id: str | None = None
) -> list:
    """The revenue records of the project that overlap the period."""
    query = (
        "select customer_id, period_start, period_end, amount_usd from revenue_records "
        "where project_id = :project_id and period_start < :end and period_end > :start"
    )
    params = {"project_id": project_id, "start": within.start, "end": within.end}
    if customer_id is not None:
        query += " and customer_id = :customer_id"
        params["customer_id"] = customer_id
    return conn.execute(text(query), params).all()


def customer_metrics(
    conn: Connection, *, project_id: int, within: Period, customer_id: str | None = None
) -> list[CustomerFigures]:
    """Per customer over the period; customers with a negative margin first (the most
    negative first), then by margin and name."""
    cover = coverage(conn, project_id=project_id, within=within)
    source, params = Filters(customer_id=customer_id).source(
        CUSTOMERS, project_id=project_id, cover=cover
    )
    figures: dict[str, CustomerFigures] = {}
    for row in conn.execute(
        text(
            f"""
            select customer_id, sum(requests)::bigint as requests,
                   sum(input_tokens)::bigint as input_tokens,
                   sum(output_tokens)::bigint as output_tokens, sum(cost_usd) as cost_usd,
                   sum(revenue_usd) as revenue_usd,
                   sum(unpriced_requests)::bigint as unpriced_requests
            from {source} r group by customer_id
            """
        ),
        params,
    ):
        figures[row.customer_id] = CustomerFigures(
            customer_id=row.customer_id,
            requests=row.requests,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=row.cost_usd,
            request_revenue_usd=row.revenue_usd,
            unpriced_requests=row.unpriced_requests,
        )
    add_record_revenue(
        figures,
        revenue_records(conn, project_id=project_id, within=within, customer_id=customer_id),
        within=within,
    )
    return worst_margin_first(figures.values())


def add_record_revenue(
    figures: dict[str, CustomerFigures], records: Iterable, *, within: Period
) -> None:
    for record in records:
        customer = figures.setdefault(record.customer_id, CustomerFigures(record.customer_id))
        customer.record_revenue_usd = MONEY_CONTEXT.add(
            customer.record_revenue_usd,
            prorated(
                record.amount_usd,
                record=(record.period_start, record.period_end),
                within=(within.start, within.end),
            ),
        )


def worst_margin_first(figures: Iterable[CustomerFigures]) -> list[CustomerFigures]:
    return sorted(figures, key=lambda c: (c.margin_usd, c.customer_id))
