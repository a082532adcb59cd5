"""Router calibration: how well the router's confidence foretells that its first choice
holds, "routing accuracy over time".

Of the requests that carry a router confidence: in each of ten equal bins of confidence on
[0, 1] (app.services.rollups.FLOW), the mean confidence against the share whose first
attempt was accepted (it served the request: not rejected, not escalated), with a Wilson
interval; that is the reliability curve. The expected calibration error is
ECE = Σ (requests in bin / requests) · |accepted share − mean confidence|, 0 for a perfectly
calibrated router, per week (weeks start Monday 00:00 UTC) and over a period; the alert
metric `calibration_error` is the ECE over a rule's window.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from app.db import planner_settings
from app.periods import WEEK_ORIGIN_SQL, Period
from app.services.intervals import Estimate, wilson_interval
from app.services.metrics import Coverage, Filters, coverage
from app.services.request_facts import rate
from app.services.rollups import CONFIDENCE_BINS, FLOW


@dataclass(frozen=True)
class ConfidenceBin:
    index: int  # holds confidences in [index / 10, (index + 1) / 10), the last one 1 too
    requests: int
    confidence_sum: float
    accepted: int

    @property
    def low(self) -> float:
        return self.index / CONFIDENCE_BINS

    @property
    def high(self) -> float:
        return (self.index + 1) / CONFIDENCE_BINS

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.requests

    @property
    def accepted_rate(self) -> Estimate:
        return wilson_interval(self.accepted, self.requests)


@dataclass(frozen=True)
class Calibration:
    """The reliability curve of some requests: their non-empty bins, lowest first."""

    bins: tuple[ConfidenceBin, ...]

    @property
    def requests(self) -> int:
        return sum(b.requests for b in self.bins)

    @property
    def expected_calibration_error(self) -> float | None:
        total = self.requests
        if not total:
            return None
        return sum(
            b.requests / total * abs(b.accepted / b.requests - b.mean_confidence) for b in self.bins
        )

    @property
    def accepted_rate(self) -> float | None:
        return rate(sum(b.accepted for b in self.bins), self.requests)


@dataclass(frozen=True)
class RouterCalibration:
    """Over a period, and per week (a week cut by the period counts its part)."""

    overall: Calibration
    weeks: tuple[tuple[datetime, Calibration], ...]


def _calibrations(rows) -> dict:
    """{key: Calibration} from rows of (key, confidence_bin, requests, confidence_sum,
    accepted), the rows of a key and bin added up."""
    sums: dict = defaultdict(lambda: [0, 0.0, 0])
    for key, index, requests, confidence_sum, accepted in rows:
        found = sums[(key, index)]
        found[0] += requests
        found[1] += confidence_sum
        found[2] += accepted
    bins: dict = defaultdict(list)
    for (key, index), figures in sorted(sums.items(), key=lambda item: item[0][1]):
        bins[key].append(ConfidenceBin(index, *figures))
    return {key: Calibration(tuple(found)) for key, found in bins.items()}


def _bins_sql(source: str, *, by: str) -> str:
    return f"""
        select {by} as key, confidence_bin, sum(requests)::bigint as requests,
               sum(confidence_sum)::float8 as confidence_sum,
               sum(first_accepted)::bigint as accepted
        from {source} r
        where confidence_bin is not null
        group by 1, 2
    """


def router_calibration(
    conn: Connection, *, project_id: int, within: Period, feature: str | None = None
) -> RouterCalibration:
    """The reliability curve and the ECE of the period, and the ECE of each week in it."""
    cover = coverage(conn, project_id=project_id, within=within)
    source, params = Filters(feature=feature).source(FLOW, project_id=project_id, cover=cover)
    week = f"date_bin('7 days', hour, {WEEK_ORIGIN_SQL})"
    with planner_settings(conn, enable_sort="off"):  # see app.services.advice._summed
        rows = conn.execute(text(_bins_sql(source, by=week)), params).all()
    weeks = _calibrations(rows)
    overall = _calibrations((None, *row[1:]) for row in rows).get(None, Calibration(()))
    return RouterCalibration(overall, tuple(sorted(weeks.items())))


def window_calibration(
    conn: Connection, *, project_id: int, scope: dict, within: Period
) -> Calibration:
    """The calibration of a scope's requests in an alert window (minutes: from the raw
    rows); a model scope means the router's pick, the first attempt's model."""
    filters = Filters(feature=scope.get("feature"), customer_id=scope.get("customer_id"))
    cover = Coverage(hours=(), raw=((within.start, within.end),))
    source, params = filters.source(FLOW, project_id=project_id, cover=cover)
    if "model" in scope:
        source = f"(select * from {source} s where first_model = :scope_model)"
        params["scope_model"] = scope["model"]
    rows = conn.execute(text(_bins_sql(source, by="null")), params).all()
    return _calibrations(rows).get(None, Calibration(()))
