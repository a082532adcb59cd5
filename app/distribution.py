"""Where each table lives when RouteLedger runs on Citus (docs/citus.md). Every table of the
schema is in exactly one of the three sets; tests/test_citus_layout.py fails on a table
that is in none, so a new table forces the decision.

- distributed: sharded by DISTRIBUTION_COLUMN, all co-located, so one project's rows of
  every table sit on one node and a query of one project runs there whole;
- reference: small, global, read with any project's rows: a full copy on every node;
- local: state of the coordinator only (queues, sessions, counters), never joined with the
  distributed tables.
"""

from __future__ import annotations

DISTRIBUTION_COLUMN = "project_id"

DISTRIBUTED = frozenset(
    {
        # events, partitioned by month inside each shard
        "requests", "attempts", "request_keys",
        # per-project settings and records
        "tiers", "policies", "revenue_records", "feedback", "held_feedback",
        "alert_rules", "alerts", "repricings", "repriced_attempts", "repriced_baselines",
        "quality_floors", "eval_results", "eval_pairs", "model_tiers",
        # OTLP spans waiting for assembly
        "otlp_spans", "otlp_held_requests", "otlp_response_ids",
        # the jobs' marks, written in the same transaction as the rows they mark
        "dirty_marks", "dirty_hours", "rollup_pending",
        # what the jobs derive
        "rollup_daily", "rollup_models_daily",
        "rollup_routing_hourly", "rollup_routing_daily",
        "rollup_routing_models_hourly", "rollup_routing_models_daily",
        "rollup_customer_tiers_hourly", "rollup_customer_tiers_daily",
        "rollup_customers_hourly", "rollup_customers_daily",
        "rollup_flow_hourly", "rollup_flow_daily",
        "rollup_quality_hourly", "rollup_quality_daily",
        "rollup_latency_hourly", "rollup_latency_daily", "rollup_customer_latency_daily",
        "customer_margins", "drift_results",
    }
)  # fmt: skip

REFERENCE = frozenset(
    {
        # found by name or by key hash before the project is known
        "projects", "api_keys",
        # the shared catalog (project_id NULL) beside each project's own prices
        "model_prices", "price_catalog_snapshots",
        # dashboard logins span projects
        "users", "memberships",
    }
)  # fmt: skip

LOCAL = frozenset(
    {
        "alembic_version",
        # written on every API call, by key: a reference table would write every node
        "rate_limits",
        # one queue for every project, deduplicated by a global key
        "email_outbox",
        "dashboard_sessions", "login_failures",
    }
)  # fmt: skip
