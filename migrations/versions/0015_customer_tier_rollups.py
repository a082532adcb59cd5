"""customer tier rollups: each customer's requests, tokens, cost and revenue by served tier,
hourly and daily

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 12:00:00

The Customer page draws 3-hour points over 7 days, which the customer rollups by route keep
by day only: it read the customer's requests themselves, a heap page per request. The rollup
job fills the new tables and folds the customers' own hourly figures from them. Upgrading
marks every hour that holds requests dirty, so the next run rolls all of history again
(about two minutes per 10 million requests); until then the Customer page's charts leave
out the hours not yet rolled again (its key figures do not: they read the customer rollups).
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_TABLES = (("rollup_customer_tiers_hourly", "hour"), ("rollup_customer_tiers_daily", "day"))


def upgrade() -> None:
    for table, bin_column in _TABLES:
        op.create_table(
            table,
            sa.Column("project_id", sa.BigInteger(), nullable=False),
            sa.Column(bin_column, sa.DateTime(timezone=True), nullable=False),
            sa.Column("customer_id", sa.Text(), nullable=False),
            sa.Column("served_tier", sa.Text(), nullable=True),
            sa.Column("requests", sa.BigInteger(), nullable=False),
            sa.Column("input_tokens", sa.BigInteger(), nullable=False),
            sa.Column("output_tokens", sa.BigInteger(), nullable=False),
            sa.Column("cost_usd", sa.Numeric(), nullable=False),
            sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
            sa.Column("revenue_usd", sa.Numeric(), nullable=False),
        )
        op.create_index(op.f(f"ix_{table}_project_{bin_column}"), table, ["project_id", bin_column])
        op.create_index(
            op.f(f"ix_{table}_project_customer_{bin_column}"),
            table,
            ["project_id", "customer_id", bin_column],
        )
    # Every hour holding requests, for the rollup job to roll again.
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
    for table, _ in reversed(_TABLES):
        op.drop_table(table)
