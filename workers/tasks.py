"""The Celery tasks: each runs one idempotent job of app.services, with bounded retries."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from app.db import get_engine
from app.services.jobs import run_job
from workers.celery_app import celery_app

# A database that is briefly away (restart, failover) is retried with exponential backoff
# and jitter, at most five times; the next beat tick runs the job again anyway.
RETRYING = {
    "autoretry_for": (DBAPIError, OSError),
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 5,
}


def _job_task(name: str):
    @celery_app.task(name=f"workers.tasks.{name}", **RETRYING)
    def task() -> dict:
        return run_job(get_engine(), name)

    task.__doc__ = f"Runs the {name!r} job."
    return task


rollup = _job_task("rollup")
margins = _job_task("margins")
alerts = _job_task("alerts")
send_emails = _job_task("emails")
reprice = _job_task("reprice")
drift = _job_task("drift")
digest = _job_task("digest")
traces = _job_task("traces")
partitions = _job_task("partitions")
feedback = _job_task("feedback")
