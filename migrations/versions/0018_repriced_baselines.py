"""re-pricings keep the baseline costs they change

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 17:00:00

A correction of the project's baseline model prices requests' baseline costs again (and so
their savings). Until now a re-pricing recorded only attempt costs, old and new: the
baseline costs it changed are kept now too, one row per request, and counted on the
re-pricing. Re-pricings run before keep 0 (none was recorded).
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "repricings",
        sa.Column("baselines_changed", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_table(
        "repriced_baselines",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("repricing_id", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("old_baseline_cost_usd", sa.Numeric(), nullable=True),
        sa.Column("new_baseline_cost_usd", sa.Numeric(), nullable=True),
        sa.Column("old_price_id", sa.BigInteger(), nullable=True),
        sa.Column("new_price_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id", "repricing_id"],
            ["repricings.project_id", "repricings.id"],
            name="fk_repriced_baselines_project_id_repricings",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "repricing_id", "ts", "request_id", name=op.f("pk_repriced_baselines")
        ),
    )


def downgrade() -> None:
    op.drop_table("repriced_baselines")
    op.drop_column("repricings", "baselines_changed")
