"""routing advice: quality floors, offline evaluation results and their pairs, the flow
and quality rollups, the calibration_error alert metric

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 09:00:00

New tables only, plus the alert metric in alert_rules' check. The two new rollups (the flow
of requests with their served tokens and router confidence, the scored requests per route
and score) are filled by the rollup job: upgrading marks every hour that holds requests
dirty, so the next run rolls all of history again (about a minute per 10 million requests);
until then the advice sees no traffic.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_METRICS = (
    "'escalation_rate','fallback_rate','failover_rate','cost_per_request','spend',"
    "'negative_margin','drift_psi','unpriced_requests','policy_deviation'"
)


def _metric_check(metrics: str) -> None:
    name = op.f("ck_alert_rules_known_metric")
    op.drop_constraint(name, "alert_rules", type_="check")
    op.create_check_constraint(name, "alert_rules", f"metric in ({metrics})")


def _segment() -> list[sa.Column]:
    return [
        sa.Column("feature", sa.Text(), nullable=False),
        sa.Column("task_type", sa.Text(), nullable=True),
    ]


def _flow_route() -> list[sa.Column]:
    counts = (
        "requests", "served_input_tokens", "served_output_tokens", "served_cache_read_tokens",
        "served_cache_write_tokens",
    )  # fmt: skip
    return [
        sa.Column("intended_tier", sa.Text(), nullable=False),
        sa.Column("first_model", sa.Text(), nullable=False),
        sa.Column("served_tier", sa.Text(), nullable=True),
        sa.Column("served_model", sa.Text(), nullable=True),
        sa.Column("served_provider", sa.Text(), nullable=True),
        sa.Column("confidence_bin", sa.SmallInteger(), nullable=True),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in counts),
        sa.Column("cost_usd", sa.Numeric(), nullable=False),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column("first_accepted", sa.BigInteger(), nullable=False),
        sa.Column("confidence_sum", sa.Float(), nullable=False),
    ]


def _scored_route() -> list[sa.Column]:
    return [
        sa.Column("served_tier", sa.Text(), nullable=False),
        sa.Column("served_model", sa.Text(), nullable=False),
        sa.Column("served_provider", sa.Text(), nullable=True),
        sa.Column("quality_pct", sa.SmallInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
    ]


def _rollup(name: str, columns) -> None:
    for grain, bin_column in (("hourly", "hour"), ("daily", "day")):
        table = f"{name}_{grain}"
        op.create_table(
            table,
            sa.Column("project_id", sa.BigInteger(), nullable=False),
            sa.Column(bin_column, sa.DateTime(timezone=True), nullable=False),
            *_segment(),
            *columns(),
        )
        op.create_index(op.f(f"ix_{table}_project_{bin_column}"), table, ["project_id", bin_column])


def _project_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["project_id"],
        ["projects.id"],
        name=op.f(f"fk_{table}_project_id_projects"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    _metric_check(_METRICS + ",'calibration_error'")
    _rollup("rollup_flow", _flow_route)
    _rollup("rollup_quality", _scored_route)
    op.create_table(
        "quality_floors",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        *_segment(),
        sa.Column("pass_score", sa.Numeric(), nullable=False),
        sa.Column("target", sa.Numeric(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "pass_score >= 0 and pass_score <= 1 and pass_score = round(pass_score, 2)",
            name=op.f("ck_quality_floors_pass_score_range"),
        ),
        sa.CheckConstraint(
            "target > 0 and target <= 1", name=op.f("ck_quality_floors_target_range")
        ),
        _project_fk("quality_floors"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quality_floors")),
        sa.UniqueConstraint(
            "project_id", "feature", "task_type",
            name=op.f("uq_quality_floors_project_id_feature_task_type"),
            postgresql_nulls_not_distinct=True,
        ),
    )  # fmt: skip
    op.create_table(
        "eval_results",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        *_segment(),
        sa.Column("item_id", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("score >= 0 and score <= 1", name=op.f("ck_eval_results_score_range")),
        _project_fk("eval_results"),
        sa.ForeignKeyConstraint(
            ["project_id", "tier"], ["tiers.project_id", "tiers.name"],
            name=op.f("fk_eval_results_project_id_tiers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_results")),
        sa.UniqueConstraint(
            "project_id", "feature", "task_type", "item_id", "model",
            name=op.f("uq_eval_results_project_id_feature_task_type_item_id_model"),
            postgresql_nulls_not_distinct=True,
        ),
    )  # fmt: skip
    op.create_table(
        "eval_pairs",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        *_segment(),
        *(sa.Column(f"{side}_{what}", sa.Text(), nullable=False)
          for side in ("first", "second") for what in ("model", "tier")),
        sa.Column("first_pct", sa.SmallInteger(), nullable=False),
        sa.Column("second_pct", sa.SmallInteger(), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
    )  # fmt: skip
    op.create_index(
        op.f("ix_eval_pairs_project_feature"), "eval_pairs", ["project_id", "feature"]
    )
    # Every hour holding requests, for the rollup job to roll again (the new tables too).
    op.execute(
        """
        insert into dirty_hours (job, project_id, hour)
        select distinct 'rollup', project_id,
               date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00')
        from requests
        on conflict do nothing
        """
    )


def downgrade() -> None:
    op.drop_table("eval_pairs")
    op.drop_table("eval_results")
    op.drop_table("quality_floors")
    for name in ("rollup_quality", "rollup_flow"):
        for grain in ("daily", "hourly"):
            op.drop_table(f"{name}_{grain}")
    op.execute("delete from alert_rules where metric = 'calibration_error'")
    _metric_check(_METRICS)
