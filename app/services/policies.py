"""Routing policies: the split a product manager intends for a feature, effective-dated."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.models import policies
from app.periods import utc_now
from app.schemas import PolicyIn
from app.services.projects import project_tiers

SUM_TOLERANCE = 1e-6


class InvalidPolicy(ValueError):
    pass


def validate_split(split: dict[str, float], *, tier_ranks: dict[str, int]) -> dict[str, float]:
    if not split:
        raise InvalidPolicy("split: must name at least one tier")
    unknown = sorted(set(split) - set(tier_ranks))
    if unknown:
        known = ", ".join(sorted(tier_ranks))
        raise InvalidPolicy(f"split.{unknown[0]}: unknown tier {unknown[0]!r} (known: {known})")
    total = math.fsum(split.values())
    if abs(total - 1) > SUM_TOLERANCE:
        raise InvalidPolicy(f"split: shares sum to {total:g}, they must sum to 1")
    return {tier: float(share) for tier, share in split.items()}


def set_policy(conn: Connection, *, project_id: int, feature: str, policy: PolicyIn) -> datetime:
    """Stores a policy from its `effective_from` (default now); the same instant again
    replaces it. Returns when it takes effect."""
    split = validate_split(policy.split, tier_ranks=project_tiers(conn, project_id=project_id))
    effective_from = policy.effective_from or utc_now()
    statement = pg_insert(policies).values(
        project_id=project_id, feature=feature, split=split, effective_from=effective_from
    )
    conn.execute(
        statement.on_conflict_do_update(
            constraint="uq_policies_project_id_feature_effective_from",
            set_={"split": statement.excluded.split},
        )
    )
    return effective_from


def policy_history(conn: Connection, *, project_id: int, feature: str) -> list[dict]:
    rows = conn.execute(
        select(policies.c.split, policies.c.effective_from)
        .where(policies.c.project_id == project_id, policies.c.feature == feature)
        .order_by(policies.c.effective_from)
    )
    return [dict(row._mapping) for row in rows]


def policy_at(conn: Connection, *, project_id: int, feature: str, at: datetime) -> dict | None:
    """The feature's policy in force at `at`: the latest to take effect at or before it."""
    row = conn.execute(
        select(policies.c.split, policies.c.effective_from)
        .where(
            policies.c.project_id == project_id,
            policies.c.feature == feature,
            policies.c.effective_from <= at,
        )
        .order_by(policies.c.effective_from.desc())
        .limit(1)
    ).first()
    return dict(row._mapping) if row else None


@dataclass(frozen=True)
class PolicyComparison:
    """The split some requests should have had, and their intended split's distance from it
    (policy deviation: total variation distance, ½ Σ |intended share − policy share|)."""

    split: dict[str, float]
    deviation: float
    requests: int  # the requests held to a policy (their features have one)


def compare_with_policies(
    conn: Connection, *, source: str, params: dict
) -> PolicyComparison | None:
    """Holds each request to the policy of its feature in force at the request's time.

    `source` is a subquery of request rollup rows (see app.services.metrics.Filters.source)
    with the project in `params`: each row names the start of its bin `hour`, and no policy
    takes effect inside a bin, so the policy in force at a row's `hour` is its requests'.
    The policy split of the requests is the request-weighted mix of their policies; requests
    of features without a policy are left out of both sides. None when no request has one.
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
        return None
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
    intended_split = {tier: n / covered for tier, n in intended.items()}
    return PolicyComparison(
        split=dict(sorted(policy.items())),
        deviation=total_variation(intended_split, policy),
        requests=covered,
    )


def total_variation(left: dict[str, float], right: dict[str, float]) -> float:
    """½ Σ |left − right| over the keys of both, to 12 places: the shares are binary floats,
    and a deviation of exactly 0.3 must not read as 0.30000000000000004 (above a limit of 0.3)."""
    return round(
        0.5 * sum(abs(left.get(k, 0.0) - right.get(k, 0.0)) for k in set(left) | set(right)), 12
    )
