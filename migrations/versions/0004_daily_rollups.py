"""daily rollups: a twin of each hourly rollup table, folded by UTC day

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 08:19:03.113853
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollup_customers_daily",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column("revenue_usd", sa.Numeric(), nullable=False),
    )
    op.create_index(
        "ix_rollup_customers_daily_project_day",
        "rollup_customers_daily",
        ["project_id", "day"],
        unique=False,
    )
    op.create_table(
        "rollup_daily",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
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
    )
    op.create_index(
        "ix_rollup_daily_project_customer_day",
        "rollup_daily",
        ["project_id", "customer_id", "day"],
        unique=False,
    )
    op.create_index(
        "ix_rollup_daily_project_day", "rollup_daily", ["project_id", "day"], unique=False
    )
    op.create_table(
        "rollup_models_daily",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
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
        "ix_rollup_models_daily_project_customer_day",
        "rollup_models_daily",
        ["project_id", "customer_id", "day"],
        unique=False,
    )
    op.create_index(
        "ix_rollup_models_daily_project_day",
        "rollup_models_daily",
        ["project_id", "day"],
        unique=False,
    )
    op.create_table(
        "rollup_routing_daily",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
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
    )
    op.create_index(
        "ix_rollup_routing_daily_project_day",
        "rollup_routing_daily",
        ["project_id", "day"],
        unique=False,
    )
    op.create_table(
        "rollup_routing_models_daily",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("experiment_name", sa.Text(), nullable=True),
        sa.Column("experiment_arm", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("unpriced_attempts", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_rollup_routing_models_daily_project_day",
        "rollup_routing_models_daily",
        ["project_id", "day"],
        unique=False,
    )
    # The days already rolled up hour by hour get their daily rows from the next rollup run;
    # until then metrics read those days hour by hour (a day pending here is never read daily).
    op.execute(
        """
        insert into dirty_hours (job, project_id, hour)
        select distinct 'rollup_daily', project_id,
               date_bin('1 day', hour, timestamptz '2000-01-01 00:00:00+00')
        from rollup_hourly
        on conflict do nothing
        """
    )


def downgrade() -> None:
    op.drop_index(
        "ix_rollup_routing_models_daily_project_day", table_name="rollup_routing_models_daily"
    )
    op.drop_table("rollup_routing_models_daily")
    op.drop_index("ix_rollup_routing_daily_project_day", table_name="rollup_routing_daily")
    op.drop_table("rollup_routing_daily")
    op.drop_index("ix_rollup_models_daily_project_day", table_name="rollup_models_daily")
    op.drop_index("ix_rollup_models_daily_project_customer_day", table_name="rollup_models_daily")
    op.drop_table("rollup_models_daily")
    op.drop_index("ix_rollup_daily_project_day", table_name="rollup_daily")
    op.drop_index("ix_rollup_daily_project_customer_day", table_name="rollup_daily")
    op.drop_table("rollup_daily")
    op.drop_index("ix_rollup_customers_daily_project_day", table_name="rollup_customers_daily")
    op.drop_table("rollup_customers_daily")
