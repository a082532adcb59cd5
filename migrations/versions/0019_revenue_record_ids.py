"""revenue records may carry the client's id, stored once

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 17:30:00

A call to POST /v1/revenue that timed out and was sent again stored its records twice, and
doubled the revenue. A record may now carry the client's id (`record_id`, an invoice number
say): a record with an id the project stored before is a duplicate, stored once, as an event
with a stored request_id is. Records without an id are stored as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("revenue_records", sa.Column("record_id", sa.Text(), nullable=True))
    op.create_index(
        "uq_revenue_records_record_id",
        "revenue_records",
        ["project_id", "record_id"],
        unique=True,
        postgresql_where="record_id is not null",
    )


def downgrade() -> None:
    op.drop_index(
        "uq_revenue_records_record_id",
        table_name="revenue_records",
        postgresql_where="record_id is not null",
    )
    op.drop_column("revenue_records", "record_id")
