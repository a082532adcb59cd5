"""alerts say when their value is a lower bound

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 14:00:00

A spend, cost-per-request or negative-margin alert measured over a window with unpriced
requests counts their cost as unknown: its value is then a lower bound (DESIGN.md: "while
some requests are unpriced, the cost is a lower bound and says so"). The alert keeps whether
it was, beside its value; alerts fired before are taken as exact, as they were shown.
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "alerts",
        sa.Column("value_is_lower_bound", sa.Boolean(), server_default="false", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("alerts", "value_is_lower_bound")
