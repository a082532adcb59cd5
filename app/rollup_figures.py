"""The figures the rollups keep, declared once: each one's name, its aggregate over the raw
rows and its kind. The rollup tables' columns (app.models), the SQL that rolls raw rows up
and folds hours into days (app.services.rollups), and the readers that total them
(app.services.metrics and the figures they return) are all built from these lists, so a
figure added here is added everywhere (plus a migration for its column).

Aggregates read the raw rows under an alias: requests `r`, attempts `a`. They count the
per-request facts that ingest stored (app.services.request_facts): the definitions of
fallback, escalation, failover and cost live there, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from sqlalchemy import BigInteger, Column, Float, Numeric

Kind = Literal["count", "money", "float"]
_SQL_TYPES = {"count": BigInteger, "money": Numeric, "float": Float}
_ZEROS: dict[str, int | Decimal | float] = {"count": 0, "money": Decimal(0), "float": 0.0}
# What sum() of each kind is cast to: sum(bigint) is numeric in PostgreSQL.
_SUM_CASTS = {"count": "::bigint", "money": "", "float": "::float8"}


@dataclass(frozen=True)
class Figure:
    name: str
    aggregate: str
    kind: Kind

    def column(self) -> Column:
        return Column(self.name, _SQL_TYPES[self.kind], nullable=False)

    @property
    def zero(self) -> int | Decimal | float:
        return _ZEROS[self.kind]

    @property
    def python_type(self) -> type:
        return type(self.zero)

    def total(self) -> str:
        """SQL: the sum of this figure over rollup rows (0 over none), named after it."""
        return f"coalesce(sum({self.name}), 0){_SUM_CASTS[self.kind]} as {self.name}"


def totals_sql(figures: tuple[Figure, ...]) -> str:
    """SQL: the sums of these figures over rollup rows."""
    return ", ".join(figure.total() for figure in figures)


def named(figures: tuple[Figure, ...], *names: str) -> tuple[Figure, ...]:
    """The figures of these names, in this order."""
    by_name = {figure.name: figure for figure in figures}
    return tuple(by_name[name] for name in names)


# Per group of requests.
REQUEST_FIGURES = (
    Figure("requests", "count(*)", "count"),
    Figure("attempts", "sum(r.attempt_count)", "count"),
    Figure("fallbacks", "count(*) filter (where r.is_fallback)", "count"),
    Figure("escalations", "count(*) filter (where r.is_escalation)", "count"),
    Figure("failovers", "count(*) filter (where r.is_failover)", "count"),
    Figure("failed", "count(*) filter (where r.is_failed)", "count"),
    Figure("input_tokens", "sum(r.input_tokens)", "count"),
    Figure("output_tokens", "sum(r.output_tokens)", "count"),
    Figure("cache_read_tokens", "sum(r.cache_read_tokens)", "count"),
    Figure("cache_write_tokens", "sum(r.cache_write_tokens)", "count"),
    # The sum of the known request costs; unpriced_requests says how many are incomplete.
    Figure("cost_usd", "coalesce(sum(r.cost_usd), 0)", "money"),
    Figure("unpriced_requests", "count(*) filter (where r.is_unpriced)", "count"),
    # The sum of the known baseline costs; baseline_unknown counts the requests without one.
    Figure("baseline_cost_usd", "coalesce(sum(r.baseline_cost_usd), 0)", "money"),
    Figure("baseline_unknown", "count(*) filter (where r.baseline_cost_usd is null)", "count"),
    Figure("revenue_usd", "coalesce(sum(r.revenue_usd), 0)", "money"),
    Figure("quality_sum", "coalesce(sum(r.quality_score), 0)", "float"),
    Figure("quality_count", "count(r.quality_score)", "count"),
    # Sums of squares: the spreads an experiment's intervals need (in double precision, as
    # only the intervals' widths use them). PostgreSQL raises on a float8 product that
    # underflows, so a score under 1e-100 adds 0 (a cost, at most 30 decimal places, cannot).
    Figure("cost_sq_sum", "coalesce(sum(r.cost_usd::float8 * r.cost_usd::float8), 0)", "float"),
    Figure(
        "quality_sq_sum",
        "coalesce(sum(case when r.quality_score > 1e-100 "
        "then r.quality_score * r.quality_score else 0 end), 0)",
        "float",
    ),
)

# Per group of attempts (of one model and tier).
ATTEMPT_FIGURES = (
    Figure("attempts", "count(*)", "count"),
    Figure("cost_usd", "coalesce(sum(a.cost_usd), 0)", "money"),
    Figure("unpriced_attempts", "count(*) filter (where a.cost_usd is null)", "count"),
)

# Per group of requests whose latency histogram is kept apart from the routing figures (see
# app.services.rollups.LATENCY).
LATENCY_FIGURES = named(REQUEST_FIGURES, "requests")

# Per customer: what margins and the finance export need.
CUSTOMER_FIGURES = named(
    REQUEST_FIGURES,
    "requests", "input_tokens", "output_tokens", "cost_usd", "unpriced_requests", "revenue_usd",
)  # fmt: skip

# Per route of requests, for routing advice and router calibration (app.services.advice,
# app.services.calibration): the served attempt's own tokens (`s`, what a request would cost
# at another model), whether the first attempt served the request, and the router's
# confidence. They read the requests `r` beside their first and served attempts (see
# app.services.rollups.FLOW).
FLOW_FIGURES = (
    Figure("requests", "count(*)", "count"),
    Figure("served_input_tokens", "coalesce(sum(s.input_tokens), 0)", "count"),
    Figure("served_output_tokens", "coalesce(sum(s.output_tokens), 0)", "count"),
    Figure("served_cache_read_tokens", "coalesce(sum(s.cache_read_tokens), 0)", "count"),
    Figure("served_cache_write_tokens", "coalesce(sum(s.cache_write_tokens), 0)", "count"),
    Figure("cost_usd", "coalesce(sum(r.cost_usd), 0)", "money"),
    Figure("unpriced_requests", "count(*) filter (where r.is_unpriced)", "count"),
    # "The first attempt was accepted": it is the served attempt (not rejected, not escalated).
    Figure("first_accepted", "count(*) filter (where s.position = 0)", "count"),
    Figure("confidence_sum", "coalesce(sum(r.router_confidence), 0)", "float"),
)

# Scored requests per route and score (a hundredth wide): the pass rate at any pass score
# with at most two decimals is a sum of these.
QUALITY_FIGURES = (Figure("requests", "count(*)", "count"),)
