"""The periodic jobs by name: what `routeledger jobs run NAME` and the Celery tasks run.

Every job takes the engine, works out from the database what is left to do, and is
idempotent: running it twice, or in two workers at once, gives the result of one run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, is_dataclass

from sqlalchemy import Engine

from app.services.margins import run_margins
from app.services.rollups import run_rollup

JOBS: dict[str, Callable] = {
    "rollup": run_rollup,
    "margins": run_margins,
}


def run_job(engine: Engine, name: str) -> dict:
    """Runs a job now, in this process; returns its summary."""
    result = JOBS[name](engine)
    return asdict(result) if is_dataclass(result) else {"result": result}
