"""Quality floors (DESIGN.md, Routing advice): per feature, and optionally per task type
within it, the score from which a case passes and the target share of the reference tier's
pass rate. A segment without a floor of its own takes its feature's, else the defaults
(QualityFloorIn's: pass score 0.7, target 0.95)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert

from app.models import quality_floors
from app.periods import utc_now
from app.schemas import QualityFloorIn

DEFAULTS = QualityFloorIn()


@dataclass(frozen=True)
class QualityFloor:
    feature: str
    task_type: str | None
    pass_score: Decimal
    target: Decimal
    updated_at: datetime | None = None  # None: the defaults

    @property
    def pass_percent(self) -> int:
        """The pass score in hundredths: a case passes when floor(score × 100) is at least
        this (see app.services.rollups.QUALITY)."""
        return int(self.pass_score * 100)


@dataclass(frozen=True)
class FloorBook:
    """The project's floors, by (feature, task type); task type None: the feature's own."""

    floors: dict[tuple[str, str | None], QualityFloor]

    def floor_of(self, feature: str, task_type: str | None) -> QualityFloor:
        """The segment's floor: its own, else its feature's, else the defaults."""
        found = self.floors.get((feature, task_type)) or self.floors.get((feature, None))
        if found is None:
            return QualityFloor(feature, task_type, DEFAULTS.pass_score, DEFAULTS.target)
        return QualityFloor(feature, task_type, found.pass_score, found.target, found.updated_at)


def _floor(row) -> QualityFloor:
    return QualityFloor(row.feature, row.task_type, row.pass_score, row.target, row.updated_at)


def load_floors(conn: Connection, *, project_id: int, features: Iterable[str] | None = None):
    """The project's floors (of these features only, when given)."""
    query = select(quality_floors).where(quality_floors.c.project_id == project_id)
    if features is not None:
        query = query.where(quality_floors.c.feature.in_(sorted(set(features))))
    return FloorBook({(f.feature, f.task_type): f for f in map(_floor, conn.execute(query))})


def list_floors(conn: Connection, *, project_id: int) -> list[QualityFloor]:
    floors = load_floors(conn, project_id=project_id).floors
    return [floors[key] for key in sorted(floors, key=lambda k: (k[0], k[1] or ""))]


def set_floor(
    conn: Connection, *, project_id: int, feature: str, floor: QualityFloorIn
) -> QualityFloor:
    """Stores the floor of the feature (or of floor.task_type within it), replacing the one
    it had."""
    statement = insert(quality_floors).values(
        project_id=project_id,
        feature=feature,
        task_type=floor.task_type,
        pass_score=floor.pass_score,
        target=floor.target,
        updated_at=utc_now(),
    )
    row = conn.execute(
        statement.on_conflict_do_update(
            constraint="uq_quality_floors_project_id_feature_task_type",
            set_={
                "pass_score": statement.excluded.pass_score,
                "target": statement.excluded.target,
                "updated_at": statement.excluded.updated_at,
            },
        ).returning(quality_floors)
    ).one()
    return _floor(row)
