"""rollups, margins, drift, alert rules and alerts, the email outbox, re-pricing audit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:36:28.969079
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_margins",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("granularity", sa.Text(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("revenue_usd", sa.Numeric(), nullable=False),
        sa.Column("margin_usd", sa.Numeric(), nullable=False),
        sa.Column("margin_pct", sa.Numeric(), nullable=True),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column(
            "computed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "granularity in ('day','month')", name=op.f("ck_customer_margins_known_granularity")
        ),
        sa.PrimaryKeyConstraint(
            "project_id",
            "granularity",
            "period_start",
            "customer_id",
            name=op.f("pk_customer_margins"),
        ),
    )
    op.create_table(
        "dirty_hours",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", "project_id", "hour", name=op.f("pk_dirty_hours")),
    )
    op.create_table(
        "job_watermarks",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_watermarks")),
    )
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
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("scope", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("window_minutes", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Numeric(), nullable=True),
        sa.Column("baseline_multiplier", sa.Numeric(), nullable=True),
        sa.Column("min_requests", sa.Integer(), nullable=False),
        sa.Column("cooldown_minutes", sa.Integer(), nullable=False),
        sa.Column("recipients", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "metric in ('escalation_rate','fallback_rate','failover_rate','cost_per_request',"
            "'spend','negative_margin','drift_psi','unpriced_requests','policy_deviation')",
            name=op.f("ck_alert_rules_known_metric"),
        ),
        sa.CheckConstraint(
            "threshold is not null or baseline_multiplier is not null",
            name=op.f("ck_alert_rules_has_condition"),
        ),
        sa.CheckConstraint(
            "window_minutes > 0 and min_requests >= 0 and cooldown_minutes > 0",
            name=op.f("ck_alert_rules_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_alert_rules_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
    )
    op.create_index("ix_alert_rules_project_id", "alert_rules", ["project_id"], unique=False)
    op.create_table(
        "drift_results",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("dimension", sa.Text(), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("psi", sa.Float(), nullable=False),
        sa.Column("current_count", sa.BigInteger(), nullable=False),
        sa.Column("reference_count", sa.BigInteger(), nullable=False),
        sa.Column("current_distribution", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "reference_distribution", postgresql.JSONB(astext_type=sa.Text()), nullable=False
        ),
        sa.Column(
            "computed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "dimension in ('tier','confidence','input_tokens')",
            name=op.f("ck_drift_results_known_dimension"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_drift_results_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "feature", "dimension", "window_end", name=op.f("pk_drift_results")
        ),
    )
    op.create_table(
        "email_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=True),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("recipients", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status in ('pending','sent')", name=op.f("ck_email_outbox_known_status")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_email_outbox_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_outbox")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_email_outbox_dedupe_key")),
    )
    op.create_index(
        "ix_email_outbox_pending",
        "email_outbox",
        ["next_attempt_at"],
        unique=False,
        postgresql_where="status = 'pending'",
    )
    op.create_table(
        "repricings",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("range_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("range_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts_changed", sa.BigInteger(), nullable=False),
        sa.Column("requests_changed", sa.BigInteger(), nullable=False),
        sa.Column("cost_before_usd", sa.Numeric(), nullable=False),
        sa.Column("cost_after_usd", sa.Numeric(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind in ('unpriced','correction')", name=op.f("ck_repricings_known_kind")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_repricings_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repricings")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("rule_id", sa.BigInteger(), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("limit_value", sa.Float(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.Column("last_evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_reminder_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state in ('firing','resolved')", name=op.f("ck_alerts_known_state")),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_alerts_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name=op.f("fk_alerts_rule_id_alert_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_project_id", "alerts", ["project_id", "fired_at"], unique=False)
    op.create_index(
        "uq_alerts_one_firing_per_rule",
        "alerts",
        ["rule_id"],
        unique=True,
        postgresql_where="state = 'firing'",
    )
    op.create_table(
        "repriced_attempts",
        sa.Column("repricing_id", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("old_cost_usd", sa.Numeric(), nullable=True),
        sa.Column("new_cost_usd", sa.Numeric(), nullable=True),
        sa.Column("old_price_id", sa.BigInteger(), nullable=True),
        sa.Column("new_price_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["repricing_id"],
            ["repricings.id"],
            name=op.f("fk_repriced_attempts_repricing_id_repricings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "repricing_id", "ts", "request_id", "position", name=op.f("pk_repriced_attempts")
        ),
    )
    op.create_index("ix_requests_received_at", "requests", ["received_at"], unique=False)
    op.create_index(
        "ix_requests_unpriced",
        "requests",
        ["project_id", "ts"],
        unique=False,
        postgresql_where="is_unpriced or baseline_cost_usd is null",
    )
    op.create_table(
        "rollup_routing_hourly",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
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
        "ix_rollup_routing_hourly_project_hour",
        "rollup_routing_hourly",
        ["project_id", "hour"],
        unique=False,
    )
    op.create_table(
        "rollup_routing_models_hourly",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
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
        "ix_rollup_routing_models_hourly_project_hour",
        "rollup_routing_models_hourly",
        ["project_id", "hour"],
        unique=False,
    )
    op.create_table(
        "rollup_customers_hourly",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column("revenue_usd", sa.Numeric(), nullable=False),
    )
    op.create_index(
        "ix_rollup_customers_hourly_project_hour",
        "rollup_customers_hourly",
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


def downgrade() -> None:
    op.drop_index(
        "ix_rollup_models_hourly_project_customer_hour", table_name="rollup_models_hourly"
    )
    op.drop_index("ix_rollup_hourly_project_customer_hour", table_name="rollup_hourly")
    op.drop_index("ix_rollup_customers_hourly_project_hour", table_name="rollup_customers_hourly")
    op.drop_table("rollup_customers_hourly")
    op.drop_index(
        "ix_rollup_routing_models_hourly_project_hour", table_name="rollup_routing_models_hourly"
    )
    op.drop_table("rollup_routing_models_hourly")
    op.drop_index("ix_rollup_routing_hourly_project_hour", table_name="rollup_routing_hourly")
    op.drop_table("rollup_routing_hourly")
    op.drop_index(
        "ix_requests_unpriced",
        table_name="requests",
        postgresql_where="is_unpriced or baseline_cost_usd is null",
    )
    op.drop_index("ix_requests_received_at", table_name="requests")
    op.drop_table("repriced_attempts")
    op.drop_index(
        "uq_alerts_one_firing_per_rule", table_name="alerts", postgresql_where="state = 'firing'"
    )
    op.drop_index("ix_alerts_project_id", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("repricings")
    op.drop_index(
        "ix_email_outbox_pending", table_name="email_outbox", postgresql_where="status = 'pending'"
    )
    op.drop_table("email_outbox")
    op.drop_table("drift_results")
    op.drop_index("ix_alert_rules_project_id", table_name="alert_rules")
    op.drop_table("alert_rules")
    op.drop_index("ix_rollup_models_hourly_project_hour", table_name="rollup_models_hourly")
    op.drop_table("rollup_models_hourly")
    op.drop_index("ix_rollup_hourly_project_hour", table_name="rollup_hourly")
    op.drop_table("rollup_hourly")
    op.drop_table("job_watermarks")
    op.drop_table("dirty_hours")
    op.drop_table("customer_margins")
