"""keys that include project_id: every table Citus would distribute by project_id can be

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 09:00:00

Citus distributes a table by a column only when each of its primary keys, unique indexes and
foreign keys to another distributed table includes that column (docs/citus.md). The tables
keyed by their `id` alone get the key (project_id, id); an alert points at its rule by
(project_id, rule_id); repriced_attempts gets its repricing's project_id. Each key is rebuilt
once: small tables, but feedback and eval_results are read whole (seconds per million rows),
and writes to them wait meanwhile.
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Tables whose primary key was (id) alone.
_KEYED_BY_ID = (
    "alert_rules", "alerts", "dirty_marks", "eval_results", "feedback", "held_feedback",
    "policies", "quality_floors", "repricings", "revenue_records",
)  # fmt: skip


def _primary_key(table: str, columns: str) -> None:
    op.execute(f"alter table {table} drop constraint pk_{table}")
    op.execute(f"alter table {table} add constraint pk_{table} primary key ({columns})")


def upgrade() -> None:
    # The foreign keys that lean on the old keys go first.
    op.drop_constraint("fk_alerts_rule_id_alert_rules", "alerts", type_="foreignkey")
    op.drop_constraint(
        "fk_repriced_attempts_repricing_id_repricings", "repriced_attempts", type_="foreignkey"
    )
    for table in _KEYED_BY_ID:
        _primary_key(table, "project_id, id")
    op.execute(
        "alter table alerts add constraint fk_alerts_project_id_alert_rules "
        "foreign key (project_id, rule_id) references alert_rules (project_id, id) "
        "on delete cascade"
    )
    op.drop_index("uq_alerts_one_firing_per_rule", "alerts")
    op.create_index(
        "uq_alerts_one_firing_per_rule",
        "alerts",
        ["project_id", "rule_id"],
        unique=True,
        postgresql_where="state = 'firing'",
    )
    op.execute("alter table repriced_attempts add column project_id bigint")
    op.execute(
        "update repriced_attempts ra set project_id = r.project_id "
        "from repricings r where r.id = ra.repricing_id"
    )
    op.execute("alter table repriced_attempts alter column project_id set not null")
    _primary_key("repriced_attempts", "project_id, repricing_id, ts, request_id, position")
    op.execute(
        "alter table repriced_attempts add constraint fk_repriced_attempts_project_id_repricings "
        "foreign key (project_id, repricing_id) references repricings (project_id, id) "
        "on delete cascade"
    )


def downgrade() -> None:
    op.drop_constraint(
        "fk_repriced_attempts_project_id_repricings", "repriced_attempts", type_="foreignkey"
    )
    _primary_key("repriced_attempts", "repricing_id, ts, request_id, position")
    op.drop_column("repriced_attempts", "project_id")
    op.drop_index("uq_alerts_one_firing_per_rule", "alerts")
    op.create_index(
        "uq_alerts_one_firing_per_rule",
        "alerts",
        ["rule_id"],
        unique=True,
        postgresql_where="state = 'firing'",
    )
    op.drop_constraint("fk_alerts_project_id_alert_rules", "alerts", type_="foreignkey")
    for table in _KEYED_BY_ID:
        _primary_key(table, "id")
    op.execute(
        "alter table alerts add constraint fk_alerts_rule_id_alert_rules "
        "foreign key (rule_id) references alert_rules (id) on delete cascade"
    )
    op.execute(
        "alter table repriced_attempts add constraint "
        "fk_repriced_attempts_repricing_id_repricings foreign key (repricing_id) "
        "references repricings (id) on delete cascade"
    )
