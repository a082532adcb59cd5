"""latency rollups: the requests' latency histograms by feature and arm (hourly and daily)
and per customer (daily), apart from the routing rollups; sums of squares of cost and
quality in the request rollups

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 09:00:00

The metrics' latency percentiles read the new tables: over 90 days the routing rollups'
histograms (a hundred rows a day, twenty buckets each) were the slowest part of a metrics
call. The sums of squares give an experiment's intervals their spreads, which the
Experiments page read from the requests themselves. The rollup job fills them: upgrading
marks every hour that holds requests dirty, so the next run rolls all of history again
(about two minutes per 10 million requests); until then latency percentiles leave out the
hours not yet rolled again, and the intervals of those hours are too narrow.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _latency_table(table: str, bin_column: str, *, by_customer: bool) -> None:
    customer = [sa.Column("customer_id", sa.Text(), nullable=False)] if by_customer else []
    op.create_table(
        table,
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column(bin_column, sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        *customer,
        sa.Column("experiment_name", sa.Text(), nullable=True),
        sa.Column("experiment_arm", sa.Text(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("latency_buckets", sa.ARRAY(sa.SmallInteger()), nullable=False),
        sa.Column("latency_counts", sa.ARRAY(sa.BigInteger()), nullable=False),
    )
    op.create_index(op.f(f"ix_{table}_project_{bin_column}"), table, ["project_id", bin_column])
    if by_customer:
        op.create_index(
            op.f(f"ix_{table}_project_customer_{bin_column}"),
            table,
            ["project_id", "customer_id", bin_column],
        )


# The request rollups (app.rollup_figures.REQUEST_FIGURES).
_REQUEST_ROLLUPS = ("rollup_daily", "rollup_routing_hourly", "rollup_routing_daily")
_SQUARES = ("cost_sq_sum", "quality_sq_sum")


def upgrade() -> None:
    for table in _REQUEST_ROLLUPS:
        for column in _SQUARES:
            op.add_column(table, sa.Column(column, sa.Float(), nullable=False, server_default="0"))
            op.alter_column(table, column, server_default=None)
    _latency_table("rollup_latency_hourly", "hour", by_customer=False)
    _latency_table("rollup_latency_daily", "day", by_customer=False)
    _latency_table("rollup_customer_latency_daily", "day", by_customer=True)
    # Every hour holding requests, for the rollup job to roll again (the new tables too).
    op.execute(
        """
        insert into dirty_hours (job, project_id, hour)
        select distinct 'rollup', project_id,
               date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00')
        from requests
        on conflict do nothing
        """
    )


def downgrade() -> None:
    for table in _REQUEST_ROLLUPS:
        for column in _SQUARES:
            op.drop_column(table, column)
    for table in ("rollup_customer_latency_daily", "rollup_latency_daily", "rollup_latency_hourly"):
        op.drop_table(table)
