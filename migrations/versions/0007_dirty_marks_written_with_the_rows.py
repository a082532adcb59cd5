"""hours to roll up are marked in the transaction that writes the rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 15:00:00

The rollup and margins jobs found new rows by their received_at (created_at) stamps against
a watermark, with a two-minute lookback for transactions that committed late. A commit that
waited longer (behind a lock) was stamped before the watermark passed it and never reached the
rollups. Now whoever writes rows (ingest, feedback, revenue records) appends a mark of the
hours they touch to dirty_marks in the same transaction; the jobs move the marks they can see
into dirty_hours. A mark is visible exactly when its rows are, whatever the clocks say, and
an append never waits on another transaction (dirty_hours' unique key would, behind a job
that is re-rolling the same hour).

Upgrading marks what the old watermarks had not collected yet, then drops them, and the
index on requests.received_at that only the collection read.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_LOOKBACK = "interval '2 minutes'"


def upgrade() -> None:
    op.create_table(
        "dirty_marks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dirty_marks")),
    )
    # What the old collection had not reached: rows stamped after its watermark (less its
    # lookback), or every row when it never ran.
    op.execute(
        f"""
        insert into dirty_marks (job, project_id, hour)
        select distinct 'rollup', project_id, date_bin('1 hour', ts, timestamptz '2000-01-01Z')
        from requests
        where received_at >= coalesce(
            (select watermark - {_LOOKBACK} from job_watermarks where job = 'rollup'), '-infinity')
        union
        select distinct 'rollup', project_id,
               date_bin('1 hour', request_ts, timestamptz '2000-01-01Z')
        from feedback
        where received_at >= coalesce(
            (select watermark - {_LOOKBACK} from job_watermarks where job = 'rollup'), '-infinity')
        union
        select distinct 'margins', project_id, day
        from revenue_records,
             generate_series(date_bin('1 day', period_start, timestamptz '2000-01-01Z'),
                             period_end - interval '1 microsecond', '1 day') as day
        where created_at >= coalesce(
            (select watermark - {_LOOKBACK} from job_watermarks where job = 'margins.revenue'),
            '-infinity')
        """
    )
    op.drop_table("job_watermarks")
    op.drop_index("ix_requests_received_at", table_name="requests")


def downgrade() -> None:
    op.create_index("ix_requests_received_at", "requests", ["received_at"], unique=False)
    op.create_table(
        "job_watermarks",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_watermarks")),
    )
    # The marks not moved yet become dirty hours; the watermarks start from now.
    op.execute(
        "insert into dirty_hours (job, project_id, hour) "
        "select distinct job, project_id, hour from dirty_marks on conflict do nothing"
    )
    op.execute(
        "insert into job_watermarks (job, watermark) "
        "values ('rollup', now()), ('margins.revenue', now())"
    )
    op.drop_table("dirty_marks")
