"""Routing drift: PSI of each feature's distributions, the last 24 hours against the 7 days
before, computed hourly and stored with both distributions.

Distributions (DESIGN.md): the intended tier split, router confidence in 10 equal bins on
[0, 1], input tokens in log2 buckets. PSI = Σ (pᵢ − qᵢ) ln(pᵢ / qᵢ), each share floored at
0.0001; below 0.1 stable, 0.1–0.25 moderate, above 0.25 significant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.models import drift_results
from app.periods import floor_hour, utc_now
from app.services.metrics import shares

CURRENT_WINDOW = timedelta(hours=24)
REFERENCE_WINDOW = timedelta(days=7)
SHARE_FLOOR = 0.0001
# Input tokens: bucket 0 holds 0 tokens, bucket k holds [2^(k-1), 2^k).
TOKEN_BOUNDS = [2**k for k in range(41)]


def psi(current: dict[str, float], reference: dict[str, float]) -> float:
    """PSI of two distributions given as shares (or counts) per bin."""
    p_total, q_total = sum(current.values()), sum(reference.values())
    value = 0.0
    for key in set(current) | set(reference):
        p = max(current.get(key, 0) / p_total, SHARE_FLOOR)
        q = max(reference.get(key, 0) / q_total, SHARE_FLOOR)
        value += (p - q) * math.log(p / q)
    return value


def confidence_bin(bucket: int) -> str:
    return f"{(bucket - 1) / 10:.1f}-{bucket / 10:.1f}"


def token_bin(bucket: int) -> str:
    return "0" if bucket == 0 else f"{2 ** (bucket - 1)}-{2**bucket - 1}"


_DISTRIBUTIONS = text(
    """
    select feature, ts >= :current_start as is_current,
           case when grouping(intended_tier) = 0 then 'tier'
                when grouping(confidence_bucket) = 0 then 'confidence'
                else 'input_tokens' end as dimension,
           intended_tier, confidence_bucket, token_bucket, count(*) as n
    from (
        select feature, ts, intended_tier,
               -- least() passes over NULL: a request without a confidence has no bin.
               case when router_confidence is not null
                    then least(width_bucket(router_confidence, 0, 1, 10), 10) end
                   as confidence_bucket,
               width_bucket(input_tokens, cast(:token_bounds as bigint[])) as token_bucket
        from requests
        where project_id = :project_id and ts >= :reference_start and ts < :end
    ) r
    group by grouping sets ((feature, is_current, intended_tier),
                            (feature, is_current, confidence_bucket),
                            (feature, is_current, token_bucket))
    """
)


def distributions(conn: Connection, *, project_id: int, end: datetime) -> dict:
    """{(feature, dimension): (current counts, reference counts)} for the window ending at end."""
    current_start = end - CURRENT_WINDOW
    found: dict[tuple[str, str], tuple[dict, dict]] = {}
    rows = conn.execute(
        _DISTRIBUTIONS,
        {
            "project_id": project_id,
            "current_start": current_start,
            "reference_start": current_start - REFERENCE_WINDOW,
            "end": end,
            "token_bounds": TOKEN_BOUNDS,
        },
    )
    for row in rows:
        if row.dimension == "tier":
            key = row.intended_tier
        elif row.dimension == "confidence":
            if row.confidence_bucket is None:
                continue  # no router confidence on these requests
            key = confidence_bin(row.confidence_bucket)
        else:
            key = token_bin(row.token_bucket)
        current, reference = found.setdefault((row.feature, row.dimension), ({}, {}))
        (current if row.is_current else reference)[key] = row.n
    return found


@dataclass(frozen=True)
class DriftRun:
    results: int


def run_drift(engine: Engine, *, now: datetime | None = None) -> DriftRun:
    """Computes and stores the drift of every feature for the window ending this hour."""
    stored = 0
    with engine.begin() as conn:
        now = now or utc_now()
        end = floor_hour(now)
        projects = (
            conn.execute(
                text(
                    "select distinct project_id from rollup_routing_hourly where hour >= :start "
                    "and hour < :end order by 1"
                ),
                {"start": end - CURRENT_WINDOW, "end": end},
            )
            .scalars()
            .all()
        )
    for project_id in projects:
        with engine.begin() as conn:
            rows = []
            found = distributions(conn, project_id=project_id, end=end)
            for (feature, dimension), (current, reference) in sorted(found.items()):
                if not current or not reference:
                    continue  # nothing to compare with
                rows.append(
                    {
                        "project_id": project_id,
                        "feature": feature,
                        "dimension": dimension,
                        "window_end": end,
                        "psi": psi(current, reference),
                        "current_count": sum(current.values()),
                        "reference_count": sum(reference.values()),
                        "current_distribution": shares(current),
                        "reference_distribution": shares(reference),
                    }
                )
            if rows:
                statement = pg_insert(drift_results).values(rows)
                conn.execute(
                    statement.on_conflict_do_update(
                        constraint="pk_drift_results",
                        set_={
                            name: statement.excluded[name]
                            for name in (
                                "psi",
                                "current_count",
                                "reference_count",
                                "current_distribution",
                                "reference_distribution",
                            )
                        }
                        | {"computed_at": utc_now()},
                    )
                )
            stored += len(rows)
    return DriftRun(results=stored)
