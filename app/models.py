"""The schema, as SQLAlchemy Core tables. Only Alembic migrations change the database;
these tables describe it for queries and for autogenerating the next migration."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from app.rollup_figures import (
    ATTEMPT_FIGURES,
    CUSTOMER_FIGURES,
    FLOW_FIGURES,
    LATENCY_FIGURES,
    QUALITY_FIGURES,
    REQUEST_FIGURES,
)
from app.vocabulary import (
    ALERT_METRICS,
    ALERT_STATES,
    ATTEMPT_STATUSES,
    DASHBOARD_ROLES,
    DRIFT_DIMENSIONS,
    GRANULARITIES,
    KEY_SCOPES,
    sql_list,
)

# Alembic's recommended convention: every constraint gets a predictable name.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _created_at() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


projects = Table(
    "projects",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("baseline_model", Text),
    Column("baseline_provider", Text),
    _created_at(),
    CheckConstraint("length(name) between 1 and 200", name="name_length"),
)

tiers = Table(
    "tiers",
    metadata,
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("rank", Integer, nullable=False),
    PrimaryKeyConstraint("project_id", "name"),
    UniqueConstraint("project_id", "rank"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    # The first characters of the key, shown so people can tell keys apart; never the secret.
    Column("display_prefix", Text, nullable=False),
    Column("key_hash", LargeBinary, nullable=False, unique=True),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("rate_limit_per_second", Float),
    _created_at(),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint(
        f"scopes <@ ARRAY[{sql_list(KEY_SCOPES)}]::text[] and cardinality(scopes) > 0",
        name="known_scopes",
    ),
    Index("ix_api_keys_project_id", "project_id"),
)

price_catalog_snapshots = Table(
    "price_catalog_snapshots",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("source", Text, nullable=False),
    Column("version", Text, nullable=False),
    # Prices this snapshot changed apply to requests from this instant on, never before.
    Column("took_effect_at", DateTime(timezone=True), nullable=False),
    Column("models", Integer, nullable=False),
    _created_at(),
    UniqueConstraint("source", "version"),
)

model_prices = Table(
    "model_prices",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # NULL: the shared catalog; otherwise a project's own (negotiated) price.
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE")),
    Column("provider", Text, nullable=False, server_default=""),
    Column("model", Text, nullable=False),
    Column("input_per_mtok", Numeric, nullable=False),
    Column("output_per_mtok", Numeric, nullable=False),
    Column("cache_read_per_mtok", Numeric),
    Column("cache_write_per_mtok", Numeric),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("source", Text, nullable=False),
    Column(
        "snapshot_id",
        BigInteger,
        ForeignKey("price_catalog_snapshots.id", ondelete="RESTRICT"),
    ),
    _created_at(),
    UniqueConstraint(
        "project_id",
        "provider",
        "model",
        "effective_from",
        postgresql_nulls_not_distinct=True,
    ),
    CheckConstraint(
        "input_per_mtok >= 0 and output_per_mtok >= 0"
        " and coalesce(cache_read_per_mtok, 0) >= 0 and coalesce(cache_write_per_mtok, 0) >= 0",
        name="non_negative",
    ),
    Index("ix_model_prices_model", "model", "effective_from"),
)

# One row per stored request_id: the duplicate check for a time-partitioned requests table
# (a unique index there would have to include the timestamp).
request_keys = Table(
    "request_keys",
    metadata,
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("project_id", "request_id"),
)

requests = Table(
    "requests",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("feature", Text, nullable=False),
    Column("user_tier", Text),
    Column("task_type", Text),
    Column("intended_tier", Text, nullable=False),
    Column("served_tier", Text),
    Column("served_model", Text),
    Column("served_provider", Text),
    Column("attempt_count", SmallInteger, nullable=False),
    Column("is_fallback", Boolean, nullable=False),
    Column("is_escalation", Boolean, nullable=False),
    Column("is_failover", Boolean, nullable=False),
    Column("is_failed", Boolean, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("latency_ms", Float),
    # Sum of the known attempt costs; is_unpriced says whether that sum is complete.
    Column("cost_usd", Numeric, nullable=False),
    Column("unpriced_attempts", SmallInteger, nullable=False),
    Column("is_unpriced", Boolean, nullable=False),
    Column("baseline_cost_usd", Numeric),
    Column("baseline_price_id", BigInteger),
    Column("quality_score", Float),
    Column("quality_source", Text),
    Column("revenue_usd", Numeric),
    Column("router_strategy", Text),
    Column("router_version", Text),
    Column("router_confidence", Float),
    Column("router_latency_ms", Float),
    Column("experiment_name", Text),
    Column("experiment_arm", Text),
    Column("metadata", JSONB),
    PrimaryKeyConstraint("project_id", "ts", "request_id"),
    postgresql_partition_by="RANGE (ts)",
)

attempts = Table(
    "attempts",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("position", SmallInteger, nullable=False),
    Column("model", Text, nullable=False),
    Column("provider", Text),
    Column("tier", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("latency_ms", Float),
    # NULL when unpriced: unknown, never 0.
    Column("cost_usd", Numeric),
    # 'client' (sent on the event) or 'price' (price_id says which row priced it).
    Column("cost_source", Text),
    Column("price_id", BigInteger),
    # The request's keys, copied at ingest (they never change), so the attempt rollups and
    # one customer's attempts are read without joining the requests.
    Column("feature", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("experiment_name", Text),
    Column("experiment_arm", Text),
    PrimaryKeyConstraint("project_id", "ts", "request_id", "position"),
    CheckConstraint(f"status in ({sql_list(ATTEMPT_STATUSES)})", name="known_status"),
    CheckConstraint(
        "(cost_source is null) = (cost_usd is null)"
        " and (cost_source = 'price') = (price_id is not null)",
        name="cost_explained",
    ),
    postgresql_partition_by="RANGE (ts)",
)


def _feedback_item() -> list:
    """A feedback item of a project's request: the score, from where, a comment."""
    return [
        Column(
            "project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
        ),
        Column("request_id", UUID(as_uuid=True), nullable=False),
        Column("score", Float, nullable=False),
        Column("source", Text),
        Column("comment", Text),
        CheckConstraint("score >= 0 and score <= 1", name="score_range"),
    ]


feedback = Table(
    "feedback",
    metadata,
    Column("id", BigInteger, Identity()),
    *_feedback_item(),
    Column("request_ts", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "id"),
    Index("ix_feedback_project_request", "project_id", "request_id"),
    Index("ix_feedback_received_at", "received_at"),
)

# Feedback whose request is not stored yet: applied when it is (app.services.feedback).
held_feedback = Table(
    "held_feedback",
    metadata,
    Column("id", BigInteger, Identity()),
    *_feedback_item(),
    Column("received_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("project_id", "id"),
    Index("ix_held_feedback_received_at", "received_at"),
)


def _one_item_index(table: Table) -> Index:
    """A feedback item (request, score, source, comment) is stored once per project."""
    return Index(
        f"uq_{table.name}_item",
        table.c.project_id,
        table.c.request_id,
        table.c.score,
        func.coalesce(table.c.source, ""),
        func.md5(func.coalesce(table.c.comment, "")),
        unique=True,
    )


_one_item_index(feedback)
_one_item_index(held_feedback)

policies = Table(
    "policies",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("feature", Text, nullable=False),
    Column("split", JSONB, nullable=False),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    _created_at(),
    PrimaryKeyConstraint("project_id", "id"),
    UniqueConstraint("project_id", "feature", "effective_from"),
)

revenue_records = Table(
    "revenue_records",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("amount_usd", Numeric, nullable=False),
    # The client's id of the record, when it gave one: the same id again is a duplicate (a
    # retried call must not count the revenue twice).
    Column("record_id", Text),
    _created_at(),
    PrimaryKeyConstraint("project_id", "id"),
    CheckConstraint("period_end > period_start", name="period_order"),
    Index("ix_revenue_records_project_customer", "project_id", "customer_id", "period_start"),
    Index(
        "uq_revenue_records_record_id",
        "project_id",
        "record_id",
        unique=True,
        postgresql_where="record_id is not null",
    ),
)

# Rows carry the request's own timestamp so a partition can be found for them.
PARTITIONED_TABLES = ("requests", "attempts")


# --- rollups and the jobs that keep them (issue 4) -------------------------------------

# Hours whose rollups (or whatever the job derives) must be recomputed from raw rows.
dirty_hours = Table(
    "dirty_hours",
    metadata,
    Column("job", Text, nullable=False),
    Column("project_id", BigInteger, nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("job", "project_id", "hour"),
)

# Each API key's token bucket, shared by every API process.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key_id", BigInteger, ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Hours whose rows were written (requests, feedback, revenue records), appended in the same
# transaction as the rows: a job moves the marks it can see into dirty_hours, so it finds every
# committed row whatever its timestamps (see app.services.rollups).
dirty_marks = Table(
    "dirty_marks",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("job", Text, nullable=False),
    Column("project_id", BigInteger, nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("project_id", "id"),
)

# Requests stored since the rollup job last added them to their hours' rollup rows: ingest
# appends their keys, one row per hour of a batch, in the same transaction as the requests;
# the job takes (deletes) the rows it can see and adds those requests' figures to the hourly
# rollups, so each request is added once, whenever its transaction commits (see
# app.services.rollups).
rollup_pending = Table(
    "rollup_pending",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("project_id", BigInteger, nullable=False),
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("ts", ARRAY(DateTime(timezone=True)), nullable=False),
    Column("request_ids", ARRAY(UUID(as_uuid=True)), nullable=False),
    PrimaryKeyConstraint("project_id", "id"),
)


def _request_figures() -> list[Column]:
    """The summed figures of a request rollup row, and its latency histogram."""
    return [*(figure.column() for figure in REQUEST_FIGURES), *_latency_histogram()]


def _latency_figures() -> list[Column]:
    return [*(figure.column() for figure in LATENCY_FIGURES), *_latency_histogram()]


def _latency_histogram() -> list[Column]:
    # Sparse latency histogram: bucket numbers (see app.services.rollups), their counts.
    return [
        Column("latency_buckets", ARRAY(SmallInteger), nullable=False),
        Column("latency_counts", ARRAY(BigInteger), nullable=False),
    ]


def _routing_dimensions() -> list[Column]:
    return [
        Column("intended_tier", Text, nullable=False),
        Column("served_tier", Text),
        Column("served_model", Text),
        *_experiment(),
    ]


def _attempt_figures() -> list[Column]:
    return [
        Column("model", Text, nullable=False),
        Column("tier", Text, nullable=False),
        *(figure.column() for figure in ATTEMPT_FIGURES),
    ]


def _project_bin(table: str, bin_column: str) -> list:
    # Rows are replaced bin by bin (an hour, or a day) under a lock on that bin, so no unique
    # key is needed; a narrow index keeps inserting them cheap and serves the range queries.
    return [
        Column("project_id", BigInteger, nullable=False),
        Column(bin_column, DateTime(timezone=True), nullable=False),
        Index(f"ix_{table}_project_{bin_column}", "project_id", bin_column),
    ]


def _rollup_tables(
    name: str, *columns_of, by_customer: bool = False, hourly: bool = True
) -> tuple[Table, ...]:
    """A daily rollup table, binned by UTC day, and (unless `hourly` is false) its hourly
    twin: `({name}_hourly, {name}_daily)`, or `({name}_daily,)`. `columns_of` builds fresh
    columns for each table; `by_customer` adds the index that metrics of one customer read."""

    def table(grain: str, bin_column: str) -> Table:
        name_of_grain = f"{name}_{grain}"
        customer_index = (
            [
                Index(
                    f"ix_{name_of_grain}_project_customer_{bin_column}",
                    "project_id",
                    "customer_id",
                    bin_column,
                )
            ]  # fmt: skip
            if by_customer
            else []
        )
        return Table(
            name_of_grain,
            metadata,
            *_project_bin(name_of_grain, bin_column),
            *(column for build in columns_of for column in build()),
            *customer_index,
        )

    daily = table("daily", "day")
    return (table("hourly", "hour"), daily) if hourly else (daily,)


def _feature() -> list:
    return [Column("feature", Text, nullable=False)]


def _customer() -> list:
    return [Column("customer_id", Text, nullable=False)]


def _served_tier() -> list:
    return [Column("served_tier", Text)]


def _experiment() -> list:
    return [Column("experiment_name", Text), Column("experiment_arm", Text)]


def _customer_figures() -> list:
    return [figure.column() for figure in CUSTOMER_FIGURES]


# Requests per day, feature, customer, intended and served tier, served model and arm, and
# attempts per model and tier with the same keys: what metrics of one customer read. Daily
# only: by the hour, the customer makes about a row per request (app.services.rollups reads
# one customer's hours from the requests themselves).
(rollup_daily,) = _rollup_tables(
    "rollup", _feature, _customer, _routing_dimensions, _request_figures, by_customer=True,
    hourly=False,
)  # fmt: skip
(rollup_models_daily,) = _rollup_tables(
    "rollup_models", _feature, _customer, _experiment, _attempt_figures, by_customer=True,
    hourly=False,
)  # fmt: skip
# The same two without the customer, hourly and daily: what routing metrics read when no
# customer is asked for.
rollup_routing_hourly, rollup_routing_daily = _rollup_tables(
    "rollup_routing", _feature, _routing_dimensions, _request_figures
)
# When each hour was last rolled: shows which hours a run re-rolled.
rollup_routing_hourly.append_column(
    Column("rolled_at", DateTime(timezone=True), nullable=False, server_default=func.now())
)
rollup_routing_models_hourly, rollup_routing_models_daily = _rollup_tables(
    "rollup_routing_models", _feature, _experiment, _attempt_figures
)
# Latency histograms by feature and arm, and per customer by day: what the latency
# percentiles of metrics read (a few rows a day, where the routing rollups hold a hundred).
rollup_latency_hourly, rollup_latency_daily = _rollup_tables(
    "rollup_latency", _feature, _experiment, _latency_figures
)
(rollup_customer_latency_daily,) = _rollup_tables(
    "rollup_customer_latency", _feature, _customer, _experiment, _latency_figures,
    by_customer=True, hourly=False,
)  # fmt: skip
# Per customer and served tier: what the Customer page draws over time (the customers' own
# figures below are folded from it).
rollup_customer_tiers_hourly, rollup_customer_tiers_daily = _rollup_tables(
    "rollup_customer_tiers", _customer, _served_tier, _customer_figures, by_customer=True
)
# Per customer: what the customers' metrics and margins read.
rollup_customers_hourly, rollup_customers_daily = _rollup_tables(
    "rollup_customers", _customer, _customer_figures
)
customer_margins = Table(
    "customer_margins",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("granularity", Text, nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost_usd", Numeric, nullable=False),
    Column("revenue_usd", Numeric, nullable=False),
    Column("margin_usd", Numeric, nullable=False),
    Column("margin_pct", Numeric),
    Column("unpriced_requests", BigInteger, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "granularity", "period_start", "customer_id"),
    CheckConstraint(f"granularity in ({sql_list(GRANULARITIES)})", name="known_granularity"),
)

drift_results = Table(
    "drift_results",
    metadata,
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("feature", Text, nullable=False),
    Column("dimension", Text, nullable=False),
    # The current window is [window_end - 24 h, window_end), the reference the 7 days before.
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("psi", Float, nullable=False),
    Column("current_count", BigInteger, nullable=False),
    Column("reference_count", BigInteger, nullable=False),
    Column("current_distribution", JSONB, nullable=False),
    Column("reference_distribution", JSONB, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "feature", "dimension", "window_end"),
    CheckConstraint(f"dimension in ({sql_list(DRIFT_DIMENSIONS)})", name="known_dimension"),
)

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("metric", Text, nullable=False),
    # {} (the project) or one of {"feature": ...}, {"customer_id": ...}, {"model": ...}.
    Column("scope", JSONB, nullable=False),
    Column("window_minutes", Integer, nullable=False),
    Column("threshold", Numeric),
    Column("baseline_multiplier", Numeric),
    Column("min_requests", Integer, nullable=False),
    Column("cooldown_minutes", Integer, nullable=False),
    Column("recipients", ARRAY(Text), nullable=False),
    Column("enabled", Boolean, nullable=False, server_default="true"),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "id"),
    CheckConstraint(f"metric in ({sql_list(ALERT_METRICS)})", name="known_metric"),
    CheckConstraint(
        "threshold is not null or baseline_multiplier is not null", name="has_condition"
    ),
    CheckConstraint(
        "window_minutes > 0 and min_requests >= 0 and cooldown_minutes > 0", name="positive"
    ),
    Index("ix_alert_rules_project_id", "project_id"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("rule_id", BigInteger, nullable=False),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("state", Text, nullable=False),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    # The figures when it fired, and the latest ones while it fires.
    Column("value", Float, nullable=False),
    # Some requests of the window unpriced: a cost figure counted them as unknown.
    Column("value_is_lower_bound", Boolean, nullable=False, server_default="false"),
    Column("limit_value", Float, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("last_value", Float, nullable=False),
    Column("last_evaluated_at", DateTime(timezone=True), nullable=False),
    # Which emails have been queued (in the same transaction as the change of state).
    Column("fired_notified_at", DateTime(timezone=True)),
    Column("last_reminder_at", DateTime(timezone=True)),
    Column("resolved_notified_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("project_id", "id"),
    ForeignKeyConstraint(
        ["project_id", "rule_id"],
        ["alert_rules.project_id", "alert_rules.id"],
        name="fk_alerts_project_id_alert_rules",
        ondelete="CASCADE",
    ),
    CheckConstraint(f"state in ({sql_list(ALERT_STATES)})", name="known_state"),
    Index("ix_alerts_project_id", "project_id", "fired_at"),
    # One open alert per rule, whatever races.
    Index(
        "uq_alerts_one_firing_per_rule",
        "project_id",
        "rule_id",
        unique=True,
        postgresql_where="state = 'firing'",
    ),
)

email_outbox = Table(
    "email_outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE")),
    # What this email is for: the same key is queued once (alert 7 fired, digest of a day).
    Column("dedupe_key", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("recipients", ARRAY(Text), nullable=False),
    Column("subject", Text, nullable=False),
    Column("text_body", Text, nullable=False),
    Column("html_body", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_error", Text),
    _created_at(),
    Column("sent_at", DateTime(timezone=True)),
    CheckConstraint("status in ('pending','sent')", name="known_status"),
    Index("ix_email_outbox_pending", "next_attempt_at", postgresql_where="status = 'pending'"),
)

repricings = Table(
    "repricings",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    # 'unpriced': requests that had no price got one; 'correction': an explicit re-pricing.
    Column("kind", Text, nullable=False),
    Column("model", Text),
    Column("range_start", DateTime(timezone=True)),
    Column("range_end", DateTime(timezone=True)),
    Column("reason", Text),
    Column("attempts_changed", BigInteger, nullable=False),
    Column("requests_changed", BigInteger, nullable=False),
    Column("cost_before_usd", Numeric, nullable=False),
    Column("cost_after_usd", Numeric, nullable=False),
    Column("baselines_changed", BigInteger, nullable=False, server_default="0"),
    _created_at(),
    PrimaryKeyConstraint("project_id", "id"),
    CheckConstraint("kind in ('unpriced','correction')", name="known_kind"),
)

repriced_attempts = Table(
    "repriced_attempts",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("repricing_id", BigInteger, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("position", SmallInteger, nullable=False),
    Column("old_cost_usd", Numeric),
    Column("new_cost_usd", Numeric),
    Column("old_price_id", BigInteger),
    Column("new_price_id", BigInteger),
    PrimaryKeyConstraint("project_id", "repricing_id", "ts", "request_id", "position"),
    ForeignKeyConstraint(
        ["project_id", "repricing_id"],
        ["repricings.project_id", "repricings.id"],
        name="fk_repriced_attempts_project_id_repricings",
        ondelete="CASCADE",
    ),
)

# A re-pricing of the baseline model changes requests' baseline costs (their savings): each
# one, old and new, as repriced_attempts keeps each attempt's cost.
repriced_baselines = Table(
    "repriced_baselines",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("repricing_id", BigInteger, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("old_baseline_cost_usd", Numeric),
    Column("new_baseline_cost_usd", Numeric),
    Column("old_price_id", BigInteger),
    Column("new_price_id", BigInteger),
    PrimaryKeyConstraint("project_id", "repricing_id", "ts", "request_id"),
    ForeignKeyConstraint(
        ["project_id", "repricing_id"],
        ["repricings.project_id", "repricings.id"],
        name="fk_repriced_baselines_project_id_repricings",
        ondelete="CASCADE",
    ),
)

# Indexes on the partitioned event tables (created on every partition).
# Metrics of one customer read the hours outside its whole days from the requests and
# attempts.
Index(
    "ix_requests_project_customer_ts", requests.c.project_id, requests.c.customer_id, requests.c.ts
)
Index(
    "ix_attempts_project_customer_ts", attempts.c.project_id, attempts.c.customer_id, attempts.c.ts
)
Index(
    "ix_requests_unpriced",
    requests.c.project_id,
    requests.c.ts,
    postgresql_where="is_unpriced or baseline_cost_usd is null",
)


# --- dashboard logins (issue 6) ----------------------------------------------------------

users = Table(
    "users",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # Stored lower-cased: one login per address whatever its spelling.
    Column("email", Text, nullable=False, unique=True),
    # argon2id, as argon2-cffi's PasswordHasher writes it (parameters inside the hash).
    Column("password_hash", Text, nullable=False),
    _created_at(),
    Column("last_login_at", DateTime(timezone=True)),
    CheckConstraint("email = lower(email) and length(email) between 3 and 200", name="email"),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", BigInteger, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("role", Text, nullable=False),
    _created_at(),
    PrimaryKeyConstraint("user_id", "project_id"),
    CheckConstraint(f"role in ({sql_list(DASHBOARD_ROLES)})", name="known_role"),
    Index("ix_memberships_project_id", "project_id"),
)

# A signed-in dashboard session (issue 16): the cookie holds a random token, this row its
# SHA-256. Signing out or changing the password deletes rows, which ends those sessions in
# every dashboard process at once.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("token_hash", LargeBinary, primary_key=True),
    Column("user_id", BigInteger, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("expires_at > created_at", name="expires_after_start"),
    Index("ix_dashboard_sessions_user_id", "user_id"),
    Index("ix_dashboard_sessions_expires_at", "expires_at"),
)

# Failed sign-ins of the last window, counted per account (the email as typed, whether or
# not a login has it) and per address, by every dashboard process alike.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("account", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("length(account) <= 200", name="account_length"),
    CheckConstraint("length(address) <= 100", name="address_length"),
    Index("ix_login_failures_account", "account", "failed_at"),
    Index("ix_login_failures_address", "address", "failed_at"),
    Index("ix_login_failures_failed_at", "failed_at"),
)

# The Experiments page compares arms request by request (intervals need more than sums);
# the index holds what it reads, so it alone answers.
Index(
    "ix_requests_experiment",
    requests.c.project_id,
    requests.c.experiment_name,
    requests.c.ts,
    postgresql_include=[
        "experiment_arm",
        "is_escalation",
        "is_unpriced",
        "cost_usd",
        "quality_score",
    ],
    postgresql_where="experiment_name is not null",
)


# --- OTLP traces and the model-to-tier map (issue 14) ------------------------------------

# The project's model-to-tier map: the tier of a span's model (events carry their tiers).
model_tiers = Table(
    "model_tiers",
    metadata,
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("model", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "model"),
    ForeignKeyConstraint(
        ["project_id", "tier"],
        ["tiers.project_id", "tiers.name"],
        name="fk_model_tiers_project_id_tiers",
    ),
    CheckConstraint("length(model) between 1 and 200", name="model_length"),
)

# Spans of requests not assembled yet: kept only what assembly reads (never message content).
otlp_spans = Table(
    "otlp_spans",
    metadata,
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("trace_id", LargeBinary, nullable=False),
    Column("span_id", LargeBinary, nullable=False),
    Column("parent_span_id", LargeBinary),
    Column("parent_is_remote", Boolean, nullable=False),
    Column("is_attempt", Boolean, nullable=False),
    # An attempt of a held request: waits for its model's tier, not for the settle time.
    Column("held", Boolean, nullable=False, server_default="false"),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # The span's attempt and request fields, already checked (app.services.otlp).
    Column("fields", JSONB, nullable=False),
    Column("resource", JSONB, nullable=False),
    PrimaryKeyConstraint("project_id", "trace_id", "span_id"),
)

# Requests whose attempts name a model with no tier: listed, and assembled once mapped.
otlp_held_requests = Table(
    "otlp_held_requests",
    metadata,
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("trace_id", LargeBinary, nullable=False),
    # The request models to map (what the API lists), and every name that would map them.
    Column("unmapped_models", ARRAY(Text), nullable=False),
    Column("lookup_names", ARRAY(Text), nullable=False),
    Column("held_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("project_id", "request_id"),
    Index("ix_otlp_held_requests_project_trace", "project_id", "trace_id"),
)

# Which request a model call's gen_ai.response.id went to, kept an hour: the same call reported
# by two instrumentations (possibly in two traces) counts once. No foreign key: a claim lives
# an hour and is forgotten by age, and the key cost a third of its insert (migration 0014).
otlp_response_ids = Table(
    "otlp_response_ids",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("response_id", Text(collation="C"), nullable=False),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("project_id", "response_id"),
    Index("ix_otlp_response_ids_claimed_at", "claimed_at"),
)


# --- routing advice (issue 15) ------------------------------------------------------------


def _segment() -> list:
    return [Column("feature", Text, nullable=False), Column("task_type", Text)]


def _flow_route() -> list:
    return [
        Column("intended_tier", Text, nullable=False),
        Column("first_model", Text, nullable=False),
        Column("served_tier", Text),
        Column("served_model", Text),
        Column("served_provider", Text),
        # Router confidence in ten equal bins on [0, 1] (app.services.rollups.FLOW); NULL
        # when the request carried none.
        Column("confidence_bin", SmallInteger),
        *(figure.column() for figure in FLOW_FIGURES),
    ]


def _scored_route() -> list:
    return [
        Column("served_tier", Text, nullable=False),
        Column("served_model", Text, nullable=False),
        Column("served_provider", Text),
        # floor(score × 100): a pass at pass_score p (two decimals) is quality_pct >= 100 p.
        Column("quality_pct", SmallInteger, nullable=False),
        *(figure.column() for figure in QUALITY_FIGURES),
    ]


# Requests from the intended tier through the first attempt's model to the served route, with
# the served attempt's tokens and the router's confidence; and the scored requests per route
# and score: what the advice, the routing flow and router calibration read.
rollup_flow_hourly, rollup_flow_daily = _rollup_tables("rollup_flow", _segment, _flow_route)
rollup_quality_hourly, rollup_quality_daily = _rollup_tables(
    "rollup_quality", _segment, _scored_route
)

# A feature's quality floor, or one task type's within it (task_type NULL: the feature's).
quality_floors = Table(
    "quality_floors",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("feature", Text, nullable=False),
    Column("task_type", Text),
    # A case passes from this score on; two decimals at most (app.services.rollups.QUALITY).
    Column("pass_score", Numeric, nullable=False),
    # The share of the reference tier's pass rate a cheaper tier must reach.
    Column("target", Numeric, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "id"),
    UniqueConstraint("project_id", "feature", "task_type", postgresql_nulls_not_distinct=True),
    CheckConstraint(
        "pass_score >= 0 and pass_score <= 1 and pass_score = round(pass_score, 2)",
        name="pass_score_range",
    ),
    CheckConstraint("target > 0 and target <= 1", name="target_range"),
)

# Offline evaluation results: one model's score on one item of a feature (and task type).
# The same item and model again replaces the score.
eval_results = Table(
    "eval_results",
    metadata,
    Column("id", BigInteger, Identity()),
    Column("project_id", BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("feature", Text, nullable=False),
    Column("task_type", Text),
    Column("item_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    # From the result, else the project's model-to-tier map when it was recorded.
    Column("tier", Text, nullable=False),
    Column("score", Float, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "id"),
    UniqueConstraint(
        "project_id", "feature", "task_type", "item_id", "model",
        postgresql_nulls_not_distinct=True,
    ),
    ForeignKeyConstraint(
        ["project_id", "tier"], ["tiers.project_id", "tiers.name"],
        name="fk_eval_results_project_id_tiers",
    ),
    CheckConstraint("score >= 0 and score <= 1", name="score_range"),
)  # fmt: skip

# The evaluation results of a segment, paired item by item: per pair of (model, tier) of the
# segment, in order, how many items scored each pair of hundredths (a model paired with
# itself counts its own items). A pass rate at any pass score, alone or of both models of a
# pair on the same items, is a sum of these. Recomputed for a segment whenever results of it
# are recorded (app.services.evals), in the same transaction.
eval_pairs = Table(
    "eval_pairs",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    *_segment(),
    Column("first_model", Text, nullable=False),
    Column("first_tier", Text, nullable=False),
    Column("second_model", Text, nullable=False),
    Column("second_tier", Text, nullable=False),
    Column("first_pct", SmallInteger, nullable=False),
    Column("second_pct", SmallInteger, nullable=False),
    Column("items", BigInteger, nullable=False),
    Index("ix_eval_pairs_project_feature", "project_id", "feature"),
)
