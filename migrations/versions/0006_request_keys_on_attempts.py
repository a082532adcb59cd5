"""attempts carry their request's feature, customer and experiment arm

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 10:30:00

The attempt rollups group attempts by their request's feature, customer and arm. Joining
every attempt to its request cost the rollup job a third of its time; with the keys copied
onto the attempts at ingest (a request's keys never change: a duplicate is stored once), the
attempts are grouped alone, and one customer's attempts are read through an index of their
own. Upgrading copies the keys onto every stored attempt and builds the index: one pass over
requests and attempts, minutes on a large database.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_KEYS = ("feature", "customer_id", "experiment_name", "experiment_arm")


def upgrade() -> None:
    for key in _KEYS:
        op.add_column("attempts", sa.Column(key, sa.Text(), nullable=True))
    op.execute(
        f"""
        update attempts a set {", ".join(f"{key} = r.{key}" for key in _KEYS)}
        from requests r
        where r.project_id = a.project_id and r.ts = a.ts and r.request_id = a.request_id
        """
    )
    op.alter_column("attempts", "feature", nullable=False)
    op.alter_column("attempts", "customer_id", nullable=False)
    op.create_index(
        "ix_attempts_project_customer_ts",
        "attempts",
        ["project_id", "customer_id", "ts"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_attempts_project_customer_ts", table_name="attempts")
    for key in reversed(_KEYS):
        op.drop_column("attempts", key)
