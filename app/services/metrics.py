"""The read side of every metric in DESIGN.md, over the rollups (and, for the hours of one
customer outside whole days, over the requests themselves: see app.services.rollups).

Used by the API, the dashboard, the exports and the alert emails. Periods are half-open
[start, end) and whole hours. Money stays Decimal, summed by PostgreSQL at full precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, make_dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from app.periods import BIN_ORIGIN_SQL, DAY, Period, floor_day, floor_hour, next_hour
from app.rollup_figures import (
    ATTEMPT_FIGURES,
    CUSTOMER_FIGURES,
    REQUEST_FIGURES,
    Figure,
    totals_sql,
)
from app.services.policies import PolicyComparison, compare_with_policies
from app.services.pricing import MONEY_CONTEXT
from app.services.request_facts import RATE_COUNTS, rate
from app.services.rollups import (
    ATTEMPTS,
    CUSTOMER_LATENCY,
    CUSTOMERS,
    DAILY,
    HOURLY,
    LATENCY,
    REQUESTS,
    ROLLUP_DAILY_JOB,
    ROUTING,
    ROUTING_ATTEMPTS,
    RollupTable,
    latency_quantile,
    raw_rows,
    raw_select,
)

Range = tuple[datetime, datetime]


@dataclass(frozen=True)
class Coverage:
    """What a period is read from, as half-open ranges: its whole days from the daily
    rollups, its other whole hours from the hourly ones, and the rest from the raw rows.

    Each row read carries the start of its bin (a day, an hour, or a raw range), and no
    policy takes effect inside a bin: the policy in force at a row's bin start is the policy
    of each of its requests (see app.services.policies)."""

    hours: tuple[Range, ...]
    days: tuple[Range, ...] = ()
    raw: tuple[Range, ...] = ()


def coverage(
    conn: Connection,
    *,
    project_id: int,
    within: Period,
    daily: bool = True,
    rolled_before: datetime | None = None,
) -> Coverage:
    """The coverage of a period. Whole hours come from the rollups (only those before
    `rolled_before`, when given), whole days from the daily rollups (unless `daily` is
    false), except:

    - a day whose daily rows are not folded yet (waiting for the rollup job, as the current
      day does until it is over), or on which a policy took effect after midnight, is read
      hour by hour;
    - an hour in which a policy took effect after its start is read from the raw rows;
    - raw ranges are cut where a policy takes effect.
    """
    first_hour = min(next_hour(within.start - _TICK), within.end)  # the first whole hour
    last_hour = max(first_hour, floor_hour(within.end))
    if rolled_before is not None:
        last_hour = max(first_hour, min(last_hour, floor_hour(rolled_before)))
    changes, unfolded = _changes_and_unfolded_days(
        conn, project_id=project_id, within=within, first=first_hour, last=last_hour
    )
    split_hours = {floor_hour(at) for at in changes if at != floor_hour(at)}
    by_hour_days = unfolded | {floor_day(at) for at in changes if at != floor_day(at)}

    hours: list[Range] = []
    days: list[Range] = []
    raw: list[Range] = []
    _extend(raw, within.start, first_hour)
    at = first_hour
    while at < last_hour:
        day_end = floor_day(at) + DAY
        if daily and at == floor_day(at) and day_end <= last_hour and at not in by_hour_days:
            _extend(days, at, day_end)
            at = day_end
            continue
        _extend(raw if at in split_hours else hours, at, at + HOURLY.width)
        at += HOURLY.width
    _extend(raw, last_hour, within.end)
    return Coverage(hours=tuple(hours), days=tuple(days), raw=_cut(raw, changes))


# A microsecond: the end of the hour holding the instant just before a bound.
_TICK = DAILY.width / 86_400_000_000


def _changes_and_unfolded_days(
    conn: Connection, *, project_id: int, within: Period, first: datetime, last: datetime
) -> tuple[list[datetime], set[datetime]]:
    """In one query: when policies take effect inside the period (in order), and the days
    of [first, last) whose daily rows wait for a fold."""
    rows = conn.execute(
        text(
            f"""
            select true as is_change, effective_from as at from policies
            where project_id = :project_id and effective_from > :start and effective_from < :end
            union
            select false, date_bin('1 day', hour, {BIN_ORIGIN_SQL}) from dirty_hours
            where job = :job and project_id = :project_id and hour >= :first and hour < :last
            """
        ),
        {"project_id": project_id, "start": within.start, "end": within.end,
         "job": ROLLUP_DAILY_JOB, "first": floor_day(first), "last": last},
    ).all()  # fmt: skip
    changes = sorted(row.at for row in rows if row.is_change)
    return changes, {row.at for row in rows if not row.is_change}


def _extend(ranges: list[Range], start: datetime, end: datetime) -> None:
    """Adds [start, end) to sorted ranges, merged with the last one when they touch."""
    if start >= end:
        return
    if ranges and ranges[-1][1] == start:
        ranges[-1] = (ranges[-1][0], end)
    else:
        ranges.append((start, end))


def _cut(ranges: list[Range], at: list[datetime]) -> tuple[Range, ...]:
    """The ranges, each split at the instants inside it."""
    parts = []
    for start, end in ranges:
        for cut in (c for c in at if start < c < end):
            parts.append((start, cut))
            start = cut
        parts.append((start, end))
    return tuple(parts)


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

    @property
    def latency_rollup(self) -> RollupTable:
        """The latency histograms to read (the customer's by day, when one is asked for)."""
        return LATENCY if self.customer_id is None else CUSTOMER_LATENCY

    def source(self, table: RollupTable, *, project_id: int, cover: Coverage) -> tuple[str, dict]:
        """A subquery of `table`'s rows that make up the covered period and pass the filters
        (each row's bin start named `hour`, whether an hour, a day or a raw range), and its
        parameters. A grain the table does not keep is computed from the raw rows."""
        params: dict = {"project_id": project_id, **self.columns()}
        raw_filters = "".join(
            f" and {table.raw_alias}.{column} = :{column}" for column in self.columns()
        )
        selects = []
        for grain, ranges in ((HOURLY, cover.hours), (DAILY, cover.days)):
            if not ranges:
                continue
            bounds = _bound(params, grain.suffix, ranges)
            if grain in table.grains:
                spans = " or ".join(
                    f"{grain.column} >= :{low} and {grain.column} < :{high}" for low, high in bounds
                )
                filters = "".join(f" and {column} = :{column}" for column in self.columns())
                selects.append(
                    f"select {grain.column} as hour, {', '.join(table.columns)} "
                    f"from {table.at(grain)} where project_id = :project_id and ({spans}){filters}"
                )
            else:
                spans = " or ".join(
                    raw_rows(table, low=f":{lo}", high=f":{hi}") for lo, hi in bounds
                )
                bin_sql = grain.bin_of(f"{table.raw_alias}.ts")
                selects.append(_from_raw(table, bin_sql=bin_sql, where=f"({spans}){raw_filters}"))
        for low, high in _bound(params, "raw", cover.raw):
            where = raw_rows(table, low=f":{low}", high=f":{high}") + raw_filters
            selects.append(_from_raw(table, bin_sql=f"cast(:{low} as timestamptz)", where=where))
        return f"({' union all '.join(selects)})", params

    def request_source(
        self,
        conn: Connection,
        *,
        project_id: int,
        within: Period,
        daily: bool = True,
        rolled_before: datetime | None = None,
        histogram: bool = False,
    ) -> tuple[str, dict]:
        """`source` of the request rollup to read, over the coverage of the period; with
        the latency histograms only when asked (from raw rows, each group's histogram costs
        a grouping of its own)."""
        cover = coverage(
            conn, project_id=project_id, within=within, daily=daily, rolled_before=rolled_before
        )
        table = self.rollups[0] if histogram else self.rollups[0].figures_only
        return self.source(table, project_id=project_id, cover=cover)

    def columns(self) -> dict[str, str]:
        """The filtered columns (named alike in requests and rollups) and their values."""
        pairs = {
            "feature": self.feature,
            "customer_id": self.customer_id,
            "experiment_name": self.experiment,
            "experiment_arm": self.arm,
        }
        return {column: value for column, value in pairs.items() if value is not None}


def _from_raw(table: RollupTable, *, bin_sql: str, where: str) -> str:
    """SQL: `table`'s rows computed from the raw rows that pass `where`, binned by `bin_sql`,
    with the bin named `hour`."""
    return (
        f"select bin as hour, {', '.join(table.columns)} "
        f"from ({raw_select(table, bin_sql=bin_sql, where=where)}) raw"
    )


def _bound(params: dict, prefix: str, ranges: Iterable[Range]) -> list[tuple[str, str]]:
    """Names the ranges' bounds as parameters; returns the names."""
    names = []
    for i, (start, end) in enumerate(ranges):
        low, high = f"{prefix}_start_{i}", f"{prefix}_end_{i}"
        params[low], params[high] = start, end
        names.append((low, high))
    return names


def money_text(value: Decimal | None) -> str | None:
    """A decimal string without exponent, at the precision it has."""
    return None if value is None else format(value, "f")


# --- routing ------------------------------------------------------------------------------


def _totals_class(name: str, figures: tuple[Figure, ...]) -> type:
    """A dataclass with one field per figure, each 0 by default."""
    return make_dataclass(
        name, [(f.name, f.python_type, field(default=f.zero)) for f in figures], kw_only=True
    )


# The sums of the rollup figures (app.rollup_figures) over some requests, and over some
# attempts of one model and tier.
RequestTotals = _totals_class("RequestTotals", REQUEST_FIGURES)
AttemptTotals = _totals_class("AttemptTotals", ATTEMPT_FIGURES)


def set_totals(into, row, figures: tuple[Figure, ...]) -> None:
    """Copies the figures' sums from a row read with `totals_sql(figures)`."""
    for figure in figures:
        setattr(into, figure.name, getattr(row, figure.name))


@dataclass(kw_only=True)
class ModelFigures(AttemptTotals):
    model: str
    tier: str
    served: int = 0
    quality_sum: float = 0.0
    quality_count: int = 0

    @property
    def mean_quality(self) -> float | None:
        return rate(self.quality_sum, self.quality_count)

    @property
    def known_cost_usd(self) -> Decimal | None:
        """Its attempts' known costs summed; None (unknown, never $0: DESIGN.md, unpriced)
        when none of them has a price."""
        return None if self.unpriced_attempts == self.attempts else self.cost_usd


@dataclass(kw_only=True)
class RoutingMetrics(RequestTotals):
    """The routing figures of some requests over a period: the sums of every rollup figure,
    and what DESIGN.md derives from them."""

    start: datetime
    end: datetime
    intended_counts: dict[str, int] = field(default_factory=dict)
    served_counts: dict[str, int] = field(default_factory=dict)
    policy: PolicyComparison | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    by_model: list[ModelFigures] = field(default_factory=list)

    def rate(self, name: str) -> float | None:
        """A rate of RATE_COUNTS: fallback_rate, escalation_rate, failover_rate."""
        return rate(getattr(self, RATE_COUNTS[name]), self.requests)

    @property
    def fallback_rate(self) -> float | None:
        return self.rate("fallback_rate")

    @property
    def escalation_rate(self) -> float | None:
        return self.rate("escalation_rate")

    @property
    def failover_rate(self) -> float | None:
        return self.rate("failover_rate")

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
    def policy_split(self) -> dict[str, float] | None:
        return self.policy.split if self.policy else None

    @property
    def policy_deviation(self) -> float | None:
        return self.policy.deviation if self.policy else None

    @property
    def baseline_known(self) -> bool:
        return self.baseline_unknown == 0

    @property
    def savings_usd(self) -> Decimal | None:
        """Σ baseline − Σ cost; unknown while some request has no baseline cost."""
        if not self.baseline_known:
            return None
        return MONEY_CONTEXT.subtract(self.baseline_cost_usd, self.cost_usd)

    @property
    def savings_pct(self) -> float | None:
        savings = self.savings_usd
        return rate(savings, self.baseline_cost_usd) if savings is not None else None

    @property
    def mean_quality(self) -> float | None:
        return rate(self.quality_sum, self.quality_count)


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {key: n / total for key, n in sorted(counts.items())} if total else {}


TOTALS_SQL = totals_sql(REQUEST_FIGURES)


def routing_metrics(
    conn: Connection, *, project_id: int, within: Period, filters: Filters = Filters()
) -> RoutingMetrics:
    cover = coverage(conn, project_id=project_id, within=within)
    request_rollup, attempt_rollup = filters.rollups
    # The latency percentiles come from their own rollups.
    requests, params = filters.source(
        request_rollup.figures_only, project_id=project_id, cover=cover
    )
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
            from (
                -- Summed by route first: the grouping sets then go over a few rows each,
                -- not over every rollup row of the period once per set.
                select intended_tier, served_tier, served_model, {TOTALS_SQL}
                from {requests} r group by 1, 2, 3
            ) r
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
            set_totals(result, row, REQUEST_FIGURES)

    for row in conn.execute(
        text(f"select model, tier, {totals_sql(ATTEMPT_FIGURES)} from {attempts} r group by 1, 2"),
        params,
    ):
        figures = by_model.setdefault(
            (row.model, row.tier), ModelFigures(model=row.model, tier=row.tier)
        )
        set_totals(figures, row, ATTEMPT_FIGURES)
    result.by_model = [by_model[key] for key in sorted(by_model)]

    result.policy = compare_with_policies(conn, source=requests, params=params)
    latencies, _ = filters.source(filters.latency_rollup, project_id=project_id, cover=cover)
    histogram = latency_histogram(conn, source=latencies, params=params)
    result.latency_p50_ms = latency_quantile(histogram, 0.5)
    result.latency_p95_ms = latency_quantile(histogram, 0.95)
    return result


def latency_histogram(conn: Connection, *, source: str, params: dict) -> dict[int, int]:
    """{bucket: count} of the rows of a request rollup `source` (see Filters.source)."""
    return latency_histograms(conn, source=source, params=params).get(None, {})


def latency_histograms(
    conn: Connection, *, source: str, params: dict, by: str | None = None
) -> dict[object, dict[int, int]]:
    """{value of the column `by`: {bucket: count}} of the rows of a request rollup `source`
    whose `by` is not null; without `by`, all of them under None."""
    rows = conn.execute(
        text(
            f"""
            select key, bucket, sum(n)::bigint as n
            from (
                -- Set-returning functions in the select list, zipped: about twice as fast as
                -- unnest(buckets, counts) in FROM, which builds each row's pairs as a function
                -- scan.
                select {by or "null"} as key, unnest(latency_buckets) as bucket,
                       unnest(latency_counts) as n
                from {source} r {f"where {by} is not null" if by else ""}
            ) h
            group by key, bucket
            """
        ),
        params,
    )
    histograms: dict[object, dict[int, int]] = {}
    for row in rows:
        histograms.setdefault(row.key, {})[row.bucket] = row.n
    return histograms


# --- customers: cost, revenue, margin -------------------------------------------------------

CustomerTotals = _totals_class("CustomerTotals", CUSTOMER_FIGURES)


@dataclass(kw_only=True)
class CustomerFigures(CustomerTotals):
    """One customer's figures over a period. `revenue_usd` (a rollup figure) is the sum of
    the per-request revenue; `record_revenue_usd` the revenue records' prorated share."""

    customer_id: str
    record_revenue_usd: Decimal = Decimal(0)

    @property
    def total_revenue_usd(self) -> Decimal:
        return MONEY_CONTEXT.add(self.revenue_usd, self.record_revenue_usd)

    @property
    def margin_usd(self) -> Decimal:
        return MONEY_CONTEXT.subtract(self.total_revenue_usd, self.cost_usd)

    @property
    def margin_pct(self) -> Decimal | None:
        """margin / revenue; none when revenue is 0."""
        revenue = self.total_revenue_usd
        return MONEY_CONTEXT.divide(self.margin_usd, revenue) if revenue else None


def prorated(amount: Decimal, *, record: Period, within: Period) -> Decimal:
    """A revenue record's amount times the share of its period inside `within`, by seconds
    (to the microsecond)."""
    overlap = within.overlap(record)
    if not overlap:
        return Decimal(0)
    micro = DAY / 86_400_000_000
    return MONEY_CONTEXT.divide(
        MONEY_CONTEXT.multiply(amount, overlap // micro), (record.end - record.start) // micro
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


def customer_figures(conn: Connection, *, source: str, params: dict) -> dict[str, CustomerFigures]:
    """Per customer, the sums of the customer figures of the rows of `source` (a subquery of
    customer rollup rows, see Filters.source)."""
    figures = {}
    for row in conn.execute(
        text(f"select customer_id, {totals_sql(CUSTOMER_FIGURES)} from {source} r group by 1"),
        params,
    ):
        figures[row.customer_id] = CustomerFigures(customer_id=row.customer_id)
        set_totals(figures[row.customer_id], row, CUSTOMER_FIGURES)
    return figures


def customer_metrics(
    conn: Connection, *, project_id: int, within: Period, customer_id: str | None = None
) -> list[CustomerFigures]:
    """Per customer over the period; customers with a negative margin first (the most
    negative first), then by margin and name."""
    cover = coverage(conn, project_id=project_id, within=within)
    source, params = Filters(customer_id=customer_id).source(
        CUSTOMERS, project_id=project_id, cover=cover
    )
    figures = customer_figures(conn, source=source, params=params)
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
        customer = figures.setdefault(
            record.customer_id, CustomerFigures(customer_id=record.customer_id)
        )
        customer.record_revenue_usd = MONEY_CONTEXT.add(
            customer.record_revenue_usd,
            prorated(
                record.amount_usd,
                record=Period(record.period_start, record.period_end),
                within=within,
            ),
        )


def worst_margin_first(figures: Iterable[CustomerFigures]) -> list[CustomerFigures]:
    return sorted(figures, key=lambda c: (c.margin_usd, c.customer_id))
