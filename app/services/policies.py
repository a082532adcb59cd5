"""Routing policies: the split a product manager intends for a feature, effective-dated."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.models import policies
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


def set_policy(
    conn: Connection,
    *,
    project_id: int,
    feature: str,
    split: dict[str, float],
    effective_from: datetime | None,
) -> datetime:
    """Stores a policy from `effective_from` (default now); the same instant again replaces it."""
    split = validate_split(split, tier_ranks=project_tiers(conn, project_id=project_id))
    effective_from = effective_from or datetime.now(UTC)
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
