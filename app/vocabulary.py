"""The closed vocabularies of the ledger (DESIGN.md), named once.

The schema's check constraints, the API's types, the services, the command line and the
dashboard's pages all read these; this module imports nothing, so any layer may use it.
"""

# Every project starts with these tiers (name: rank); a project can define its own.
DEFAULT_TIERS = {"cheap": 1, "standard": 2, "premium": 3}

# What an API key may do: write events and feedback, read metrics and exports, administer.
KEY_SCOPES = ("ingest", "read", "admin")
INGEST, READ, ADMIN = KEY_SCOPES

# One model call's outcome; `rejected`: an answer came back and failed a quality check.
ATTEMPT_STATUSES = ("ok", "error", "timeout", "rejected")
# The status of the attempt that served the request (the last one with it).
SERVED_STATUS = "ok"
# An attempt with one of these makes its request a failover.
FAILOVER_STATUSES = ("error", "timeout")

# Alert rules measure one of these over their window.
ALERT_METRICS = (
    "escalation_rate",
    "fallback_rate",
    "failover_rate",
    "cost_per_request",
    "spend",
    "negative_margin",
    "drift_psi",
    "unpriced_requests",
    "policy_deviation",
    # The router's expected calibration error over the window (app.services.calibration).
    "calibration_error",
)
ALERT_STATES = ("firing", "resolved")

# A dashboard login's role in a project: a viewer reads, an admin also changes settings.
DASHBOARD_ROLES = ("viewer", "admin")

# Customer figures are kept and exported per day or per month.
GRANULARITIES = ("day", "month")

# Evidence of a tier's quality: scores of served requests, or evaluation results per item.
EVIDENCE_SOURCES = ("online", "offline")

# The distributions whose drift is measured.
DRIFT_DIMENSIONS = ("tier", "confidence", "input_tokens")


def sql_list(values: tuple[str, ...]) -> str:
    """`'a','b'`: the values as a SQL list, for check constraints."""
    return ",".join(f"'{value}'" for value in values)
