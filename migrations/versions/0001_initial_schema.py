"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Numeric(), nullable=True),
        sa.Column("cost_source", sa.Text(), nullable=True),
        sa.Column("price_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "(cost_source is null) = (cost_usd is null)"
            " and (cost_source = 'price') = (price_id is not null)",
            name=op.f("ck_attempts_cost_explained"),
        ),
        sa.CheckConstraint(
            "status in ('ok','error','timeout','rejected')", name=op.f("ck_attempts_known_status")
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "ts", "request_id", "position", name=op.f("pk_attempts")
        ),
        postgresql_partition_by="RANGE (ts)",
    )
    op.create_table(
        "price_catalog_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("took_effect_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("models", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_catalog_snapshots")),
        sa.UniqueConstraint(
            "source", "version", name=op.f("uq_price_catalog_snapshots_source_version")
        ),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("baseline_model", sa.Text(), nullable=True),
        sa.Column("baseline_provider", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("length(name) between 1 and 200", name=op.f("ck_projects_name_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.create_table(
        "requests",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("user_tier", sa.Text(), nullable=True),
        sa.Column("task_type", sa.Text(), nullable=True),
        sa.Column("intended_tier", sa.Text(), nullable=False),
        sa.Column("served_tier", sa.Text(), nullable=True),
        sa.Column("served_model", sa.Text(), nullable=True),
        sa.Column("served_provider", sa.Text(), nullable=True),
        sa.Column("attempt_count", sa.SmallInteger(), nullable=False),
        sa.Column("is_fallback", sa.Boolean(), nullable=False),
        sa.Column("is_escalation", sa.Boolean(), nullable=False),
        sa.Column("is_failover", sa.Boolean(), nullable=False),
        sa.Column("is_failed", sa.Boolean(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("unpriced_attempts", sa.SmallInteger(), nullable=False),
        sa.Column("is_unpriced", sa.Boolean(), nullable=False),
        sa.Column("baseline_cost_usd", sa.Numeric(), nullable=True),
        sa.Column("baseline_price_id", sa.BigInteger(), nullable=True),
        sa.Column("quality_score", sa.Float(), nullable=True),
        sa.Column("quality_source", sa.Text(), nullable=True),
        sa.Column("revenue_usd", sa.Numeric(), nullable=True),
        sa.Column("router_strategy", sa.Text(), nullable=True),
        sa.Column("router_version", sa.Text(), nullable=True),
        sa.Column("router_confidence", sa.Float(), nullable=True),
        sa.Column("router_latency_ms", sa.Float(), nullable=True),
        sa.Column("experiment_name", sa.Text(), nullable=True),
        sa.Column("experiment_arm", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("project_id", "ts", "request_id", name=op.f("pk_requests")),
        postgresql_partition_by="RANGE (ts)",
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("display_prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("rate_limit_per_second", sa.Float(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "scopes <@ ARRAY['ingest','read','admin']::text[] and cardinality(scopes) > 0",
            name=op.f("ck_api_keys_known_scopes"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_api_keys_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index("ix_api_keys_project_id", "api_keys", ["project_id"], unique=False)
    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("request_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("score >= 0 and score <= 1", name=op.f("ck_feedback_score_range")),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_feedback_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    op.create_index(
        "ix_feedback_project_request", "feedback", ["project_id", "request_id"], unique=False
    )
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"], unique=False)
    op.create_table(
        "model_prices",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=True),
        sa.Column("provider", sa.Text(), server_default="", nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("input_per_mtok", sa.Numeric(), nullable=False),
        sa.Column("output_per_mtok", sa.Numeric(), nullable=False),
        sa.Column("cache_read_per_mtok", sa.Numeric(), nullable=True),
        sa.Column("cache_write_per_mtok", sa.Numeric(), nullable=True),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("snapshot_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "input_per_mtok >= 0 and output_per_mtok >= 0"
            " and coalesce(cache_read_per_mtok, 0) >= 0 and coalesce(cache_write_per_mtok, 0) >= 0",
            name=op.f("ck_model_prices_non_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_model_prices_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["price_catalog_snapshots.id"],
            name=op.f("fk_model_prices_snapshot_id_price_catalog_snapshots"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_prices")),
        sa.UniqueConstraint(
            "project_id",
            "provider",
            "model",
            "effective_from",
            name=op.f("uq_model_prices_project_id_provider_model_effective_from"),
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_index(
        "ix_model_prices_model", "model_prices", ["model", "effective_from"], unique=False
    )
    op.create_table(
        "policies",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("split", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_policies_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.UniqueConstraint(
            "project_id",
            "feature",
            "effective_from",
            name=op.f("uq_policies_project_id_feature_effective_from"),
        ),
    )
    op.create_table(
        "request_keys",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_request_keys_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "request_id", name=op.f("pk_request_keys")),
    )
    op.create_table(
        "revenue_records",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_usd", sa.Numeric(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "period_end > period_start", name=op.f("ck_revenue_records_period_order")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_revenue_records_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revenue_records")),
    )
    op.create_index(
        "ix_revenue_records_project_customer",
        "revenue_records",
        ["project_id", "customer_id", "period_start"],
        unique=False,
    )
    op.create_table(
        "tiers",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_tiers_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "name", name=op.f("pk_tiers")),
        sa.UniqueConstraint("project_id", "rank", name=op.f("uq_tiers_project_id_rank")),
    )


def downgrade() -> None:
    op.drop_table("tiers")
    op.drop_index("ix_revenue_records_project_customer", table_name="revenue_records")
    op.drop_table("revenue_records")
    op.drop_table("request_keys")
    op.drop_table("policies")
    op.drop_index("ix_model_prices_model", table_name="model_prices")
    op.drop_table("model_prices")
    op.drop_index("ix_feedback_received_at", table_name="feedback")
    op.drop_index("ix_feedback_project_request", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_api_keys_project_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("requests")
    op.drop_table("projects")
    op.drop_table("price_catalog_snapshots")
    op.drop_table("attempts")
