"""dashboard users and project memberships; an index for comparing experiment arms

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 05:38:41.209987
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# What the arms' figures need, kept in the index so it alone answers them.
EXPERIMENT_COLUMNS = ["experiment_arm", "is_escalation", "is_unpriced", "cost_usd", "quality_score"]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "email = lower(email) and length(email) between 3 and 200", name=op.f("ck_users_email")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("role in ('viewer','admin')", name=op.f("ck_memberships_known_role")),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_memberships_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_memberships_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "project_id", name=op.f("pk_memberships")),
    )
    op.create_index("ix_memberships_project_id", "memberships", ["project_id"], unique=False)
    op.create_index(
        "ix_requests_experiment",
        "requests",
        ["project_id", "experiment_name", "ts"],
        unique=False,
        postgresql_include=EXPERIMENT_COLUMNS,
        postgresql_where=sa.text("experiment_name is not null"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_requests_experiment",
        table_name="requests",
        postgresql_where=sa.text("experiment_name is not null"),
    )
    op.drop_index("ix_memberships_project_id", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("users")
