"""requests waiting to be added to their hours' rollups

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 05:00:00

Each rollup run recomputed every hour written since the last run whole, from its raw rows:
under a steady load the current hour, so a run cost the whole hour so far (12 s at 1.8
million requests) and the metrics fell 30 s behind ingest by half past the hour. Now ingest
appends the keys of the requests it stores to rollup_pending, in the same transaction, and
the rollup job takes them (a delete, so each is taken once, whenever its transaction
commits) and adds those requests' figures to the hourly rollup rows: a run costs what was
written since the last one. Feedback, re-pricing and revenue still mark hours to recompute
whole (dirty_marks), as before.

Upgrading only adds the table: marks written before it are still collected as they were.
Downgrading turns what is still pending into marks of its hours.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollup_pending",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ts", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=False),
        sa.Column("request_ids", postgresql.ARRAY(sa.UUID()), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "id", name=op.f("pk_rollup_pending")),
    )


def downgrade() -> None:
    op.execute(
        "insert into dirty_marks (job, project_id, hour) "
        "select distinct 'rollup', project_id, hour from rollup_pending"
    )
    op.drop_table("rollup_pending")
