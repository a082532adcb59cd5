"""customer rollups by day only: the hourly per-customer tables go, one customer's hours are
read from the requests through a new index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 09:40:00

By the hour, the customer dimension made about a row per request, which cost most of the
rollup job's time. The daily per-customer tables (0004) stay, now computed from the raw rows
of each finished day; they are already complete, so nothing is re-rolled on upgrade.
Creating the index reads every partition of requests once: minutes on a large database.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # When each hour was last rolled moves to the customer-free hourly table.
    op.add_column(
        "rollup_routing_hourly",
        sa.Column(
            "rolled_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
    )
    op.create_index(
        "ix_requests_project_customer_ts",
        "requests",
        ["project_id", "customer_id", "ts"],
        unique=False,
    )
    op.drop_index(
        "ix_rollup_models_hourly_project_customer_hour", table_name="rollup_models_hourly"
    )
    op.drop_index("ix_rollup_models_hourly_project_hour", table_name="rollup_models_hourly")
    op.drop_table("rollup_models_hourly")
    op.drop_index("ix_rollup_hourly_project_customer_hour", table_name="rollup_hourly")
    op.drop_index("ix_rollup_hourly_project_hour", table_name="rollup_hourly")
    op.drop_table("rollup_hourly")


def downgrade() -> None:
    op.create_table(
        "rollup_hourly",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("intended_tier", sa.Text(), nullable=False),
        sa.Column("served_tier", sa.Text(), nullable=True),
        sa.Column("served_model", sa.Text(), nullable=True),
        sa.Column("experiment_name", sa.Text(), nullable=True),
        sa.Column("experiment_arm", sa.Text(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("fallbacks", sa.BigInteger(), nullable=False),
        sa.Column("escalations", sa.BigInteger(), nullable=False),
        sa.Column("failovers", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column("baseline_cost_usd", sa.Numeric(), nullable=False),
        sa.Column("baseline_unknown", sa.BigInteger(), nullable=False),
        sa.Column("revenue_usd", sa.Numeric(), nullable=False),
        sa.Column("quality_sum", sa.Float(), nullable=False),
        sa.Column("quality_count", sa.BigInteger(), nullable=False),
        sa.Column("latency_buckets", postgresql.ARRAY(sa.SmallInteger()), nullable=False),
        sa.Column("latency_counts", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column(
            "rolled_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
    )
    op.create_index(
        "ix_rollup_hourly_project_hour", "rollup_hourly", ["project_id", "hour"], unique=False
    )
    op.create_table(
        "rollup_models_hourly",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("experiment_name", sa.Text(), nullable=True),
        sa.Column("experiment_arm", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("unpriced_attempts", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_rollup_models_hourly_project_hour",
        "rollup_models_hourly",
        ["project_id", "hour"],
        unique=False,
    )
    op.create_index(
        "ix_rollup_hourly_project_customer_hour",
        "rollup_hourly",
        ["project_id", "customer_id", "hour"],
        unique=False,
    )
    op.create_index(
        "ix_rollup_models_hourly_project_customer_hour",
        "rollup_models_hourly",
        ["project_id", "customer_id", "hour"],
        unique=False,
    )

    # The tables come back empty: every hour with requests is rolled again.
    op.execute(
        """
        insert into dirty_hours (job, project_id, hour)
        select distinct 'rollup', project_id,
               date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00')
        from requests
        on conflict do nothing
        """
    )
    op.drop_index("ix_requests_project_customer_ts", table_name="requests")
    op.drop_column("rollup_routing_hourly", "rolled_at")
