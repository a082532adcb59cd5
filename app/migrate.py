"""Runs Alembic from code, so `routeledger migrate` works from any directory, and loads the
installed price catalog."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config

import migrations

if TYPE_CHECKING:
    from app.services.pricing import CatalogSync


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def upgrade(revision: str = "head") -> None:
    command.upgrade(alembic_config(), revision)


def downgrade(revision: str = "base") -> None:
    command.downgrade(alembic_config(), revision)


def migrate() -> CatalogSync:
    """What `routeledger migrate` does: the schema to head, the partitions events may need,
    then the installed genai-prices catalog loaded if it is new to the database."""
    from app.db import get_engine, transaction
    from app.services.partitions import run_partitions
    from app.services.pricing import sync_catalog

    upgrade()
    run_partitions(get_engine())
    with transaction() as conn:
        return sync_catalog(conn)
