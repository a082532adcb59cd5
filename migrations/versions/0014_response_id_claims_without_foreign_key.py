"""response-id claims without a foreign key, compared bytewise

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 10:00:00

Every model call a trace reports claims its gen_ai.response.id in otlp_response_ids, about
three rows per request. The foreign key to projects cost a third of each claim's database
time: a claim lives an hour, is read only by its own project and is forgotten by age, so
the key guarded nothing. A response id is an opaque token compared only for equality:
collation "C" compares its bytes, not the database locale's rules.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint(
        "fk_otlp_response_ids_project_id_projects", "otlp_response_ids", type_="foreignkey"
    )
    op.alter_column(
        "otlp_response_ids",
        "response_id",
        type_=sa.Text(collation="C"),
        existing_type=sa.Text(),
        existing_nullable=False,
    )


def downgrade() -> None:
    op.alter_column(
        "otlp_response_ids",
        "response_id",
        type_=sa.Text(),
        existing_type=sa.Text(collation="C"),
        existing_nullable=False,
    )
    op.create_foreign_key(
        "fk_otlp_response_ids_project_id_projects",
        "otlp_response_ids",
        "projects",
        ["project_id"],
        ["id"],
        ondelete="CASCADE",
    )
