"""feedback stored once and held for requests not stored yet; rate limits shared by processes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 18:00:00

The same feedback item posted twice was stored twice; now an item (request, score, source,
comment) is stored once per project (the duplicates already stored are removed, the first
kept). Feedback whose request has not arrived yet waits in held_feedback (bounded in count
and age) and is applied when the request is stored. Each API key's rate is counted in
rate_limits, so several API processes share it instead of each allowing the whole rate.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _item() -> list:
    """The columns and expressions that make one feedback item."""
    return [
        "project_id",
        "request_id",
        "score",
        sa.text("coalesce(source, '')"),
        sa.text("md5(coalesce(comment, ''))"),
    ]


def upgrade() -> None:
    op.execute(
        """
        delete from feedback f using feedback first
        where first.project_id = f.project_id and first.request_id = f.request_id
          and first.score = f.score and coalesce(first.source, '') = coalesce(f.source, '')
          and coalesce(first.comment, '') = coalesce(f.comment, '') and first.id < f.id
        """
    )
    op.create_index("uq_feedback_item", "feedback", _item(), unique=True)
    op.create_table(
        "held_feedback",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("request_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("score >= 0 and score <= 1", name=op.f("ck_held_feedback_score_range")),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_held_feedback_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_held_feedback")),
    )
    op.create_index("uq_held_feedback_item", "held_feedback", _item(), unique=True)
    op.create_index("ix_held_feedback_received_at", "held_feedback", ["received_at"])
    op.create_table(
        "rate_limits",
        sa.Column("key_id", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("fk_rate_limits_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_rate_limits")),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    op.drop_index("ix_held_feedback_received_at", table_name="held_feedback")
    op.drop_index("uq_held_feedback_item", table_name="held_feedback")
    op.drop_table("held_feedback")
    op.drop_index("uq_feedback_item", table_name="feedback")
