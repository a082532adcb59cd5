"""The periodic jobs by name: what `routeledger jobs run NAME` and the Celery tasks run.

Every job takes the engine, works out from the database what is left to do, and is
idempotent: running it twice, or in two workers at once, gives the result of one run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from sqlalchemy import Engine

from app.services.alerts import run_alerts
from app.services.digest import queue_digests
from app.services.drift import run_drift
from app.services.emails import send_pending
from app.services.feedback import settle_held
from app.services.margins import run_margins
from app.services.partitions import run_partitions
from app.services.reprice import run_reprice
from app.services.rollups import run_rollup
from app.services.traces import run_settle

JOBS: dict[str, Callable] = {
    "rollup": run_rollup,
    "margins": run_margins,
    "alerts": run_alerts,
    "emails": send_pending,
    "reprice": run_reprice,
    "drift": run_drift,
    "digest": queue_digests,
    "traces": run_settle,
    "partitions": run_partitions,
    "feedback": settle_held,
}


def run_job(engine: Engine, name: str) -> dict:
    """Runs a job now, in this process; returns its summary."""
    return asdict(JOBS[name](engine))
