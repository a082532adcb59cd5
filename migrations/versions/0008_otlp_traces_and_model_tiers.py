"""OTLP traces: pending spans, held requests, claimed response ids; the model-to-tier map

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00

Spans sent to POST /v1/traces wait in otlp_spans until their request can be assembled (its
request span arrived, or its trace went quiet); a request whose model has no tier waits in
otlp_held_requests until the project maps the model (model_tiers). otlp_response_ids
remembers, for an hour, which request claimed a model call's response id, so one call
reported by two instrumentations counts once. All new tables: nothing existing is rewritten.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _project_id() -> sa.Column:
    return sa.Column("project_id", sa.BigInteger(), nullable=False)


def _project_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["project_id"],
        ["projects.id"],
        name=op.f(f"fk_{table}_project_id_projects"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "model_tiers",
        _project_id(),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "length(model) between 1 and 200", name=op.f("ck_model_tiers_model_length")
        ),
        _project_fk("model_tiers"),
        sa.ForeignKeyConstraint(
            ["project_id", "tier"],
            ["tiers.project_id", "tiers.name"],
            name=op.f("fk_model_tiers_project_id_tiers"),
        ),
        sa.PrimaryKeyConstraint("project_id", "model", name=op.f("pk_model_tiers")),
    )
    op.create_table(
        "otlp_spans",
        _project_id(),
        sa.Column("trace_id", sa.LargeBinary(), nullable=False),
        sa.Column("span_id", sa.LargeBinary(), nullable=False),
        sa.Column("parent_span_id", sa.LargeBinary(), nullable=True),
        sa.Column("parent_is_remote", sa.Boolean(), nullable=False),
        sa.Column("is_attempt", sa.Boolean(), nullable=False),
        sa.Column("held", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fields", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("resource", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        _project_fk("otlp_spans"),
        sa.PrimaryKeyConstraint("project_id", "trace_id", "span_id", name=op.f("pk_otlp_spans")),
    )
    op.create_table(
        "otlp_held_requests",
        _project_id(),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("trace_id", sa.LargeBinary(), nullable=False),
        sa.Column("unmapped_models", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("lookup_names", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
        _project_fk("otlp_held_requests"),
        sa.PrimaryKeyConstraint("project_id", "request_id", name=op.f("pk_otlp_held_requests")),
    )
    op.create_index(
        "ix_otlp_held_requests_project_trace",
        "otlp_held_requests",
        ["project_id", "trace_id"],
        unique=False,
    )
    op.create_table(
        "otlp_response_ids",
        _project_id(),
        sa.Column("response_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        _project_fk("otlp_response_ids"),
        sa.PrimaryKeyConstraint("project_id", "response_id", name=op.f("pk_otlp_response_ids")),
    )
    op.create_index(
        "ix_otlp_response_ids_claimed_at", "otlp_response_ids", ["claimed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_otlp_response_ids_claimed_at", table_name="otlp_response_ids")
    op.drop_table("otlp_response_ids")
    op.drop_index("ix_otlp_held_requests_project_trace", table_name="otlp_held_requests")
    op.drop_table("otlp_held_requests")
    op.drop_table("otlp_spans")
    op.drop_table("model_tiers")
