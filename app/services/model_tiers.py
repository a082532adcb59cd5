"""The project's model-to-tier map: which tier a model name belongs to when the data does not
say (OTLP spans, evaluation results). Events of POST /v1/requests carry their own tiers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects.postgresql import insert

from app.db import driver_cursor
from app.models import model_tiers
from app.services.projects import project_tiers


class UnknownTier(ValueError):
    """The tier is not one of the project's."""


@dataclass(frozen=True)
class TierMap:
    """A project's map, or the part of it a caller asked for."""

    tiers: Mapping[str, str]

    def tier_of(self, *names: str | None) -> str | None:
        """The tier of the first of `names` that is mapped (e.g. a dated response model, then
        the requested model, so the dated name finds its family's entry)."""
        for name in names:
            if name is not None and name in self.tiers:
                return self.tiers[name]
        return None


def load_tier_map(
    conn: Connection, *, project_id: int, models: Iterable[str] | None = None
) -> TierMap:
    """The project's map; only the entries of `models` when given."""
    query, params = "select model, tier from model_tiers where project_id = %s", [project_id]
    if models is not None:
        models = sorted(set(models))
        if not models:
            return TierMap({})
        query += " and model = any(%b::text[])"
        params.append(models)
    # On every OTLP export: psycopg's cursor (app.db.driver_cursor).
    with driver_cursor(conn) as cursor:
        cursor.execute(query, params)
        return TierMap(dict(cursor.fetchall()))


def tier_of(conn: Connection, *, project_id: int, model: str) -> str | None:
    """The tier the project maps `model` to, or None."""
    return load_tier_map(conn, project_id=project_id, models=[model]).tier_of(model)


def list_model_tiers(conn: Connection, *, project_id: int) -> list[dict]:
    rows = conn.execute(
        select(model_tiers.c.model, model_tiers.c.tier, model_tiers.c.updated_at)
        .where(model_tiers.c.project_id == project_id)
        .order_by(model_tiers.c.model)
    )
    return [dict(row._mapping) for row in rows]


def set_model_tier(conn: Connection, *, project_id: int, model: str, tier: str) -> datetime:
    """Maps `model` to `tier` (replacing its tier, if any); returns when."""
    known = project_tiers(conn, project_id=project_id)
    if tier not in known:
        raise UnknownTier(f"tier: unknown tier {tier!r} (known: {', '.join(sorted(known))})")
    statement = insert(model_tiers).values(project_id=project_id, model=model, tier=tier)
    return conn.execute(
        statement.on_conflict_do_update(
            index_elements=[model_tiers.c.project_id, model_tiers.c.model],
            set_={"tier": statement.excluded.tier, "updated_at": statement.excluded.updated_at},
        ).returning(model_tiers.c.updated_at)
    ).scalar_one()


def delete_model_tier(conn: Connection, *, project_id: int, model: str) -> bool:
    """Removes `model` from the map; False when it was not mapped. Stored requests keep the
    tiers they were assembled with."""
    result = conn.execute(
        delete(model_tiers).where(
            model_tiers.c.project_id == project_id, model_tiers.c.model == model
        )
    )
    return result.rowcount == 1
