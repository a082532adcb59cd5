"""The Celery application: broker, reliability settings and the beat schedule.

The broker is CELERY_BROKER_URL (Redis or RabbitMQ) or, when unset, PostgreSQL itself
through kombu's SQLAlchemy transport. Tasks are acknowledged after they finish (a worker
that dies mid-task leaves it to another), one at a time per process, and every task is
idempotent, so a redelivery is harmless.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from celery.schedules import crontab

from app.db import sqlalchemy_url
from app.settings import get_settings

# Metrics show an event after the next tick's rollup: waiting up to a period, then the run.
# A tick with nothing dirty costs a few milliseconds; a busy one re-rolls only the hours
# written since (see app.services.rollups and BENCHMARKS.md, "Freshness").
ROLLUP_EVERY = timedelta(seconds=5)
# Well under ROUTELEDGER_OTLP_SETTLE_SECONDS, so a quiet trace waits little past it.
TRACES_EVERY = timedelta(seconds=10)


def broker_url() -> str:
    settings = get_settings()
    if settings.celery_broker_url:
        return settings.celery_broker_url
    if not settings.database_url:
        raise RuntimeError("set CELERY_BROKER_URL or DATABASE_URL (the database is the broker)")
    return "sqla+" + sqlalchemy_url(settings.database_url)


def beat_schedule() -> dict:
    # A periodic task expires after its period: a backlog queued while no worker ran is
    # dropped instead of run many times over (each run catches up on its own anyway).
    def every(task: str, period: timedelta | crontab, expires: timedelta) -> dict:
        return {
            "task": f"workers.tasks.{task}",
            "schedule": period,
            "options": {"expires": expires.total_seconds()},
        }

    minute = timedelta(minutes=1)
    return {
        "rollup": every("rollup", ROLLUP_EVERY, ROLLUP_EVERY),
        "traces": every("traces", TRACES_EVERY, TRACES_EVERY),
        "alerts": every("alerts", minute, minute),
        "emails": every("emails", timedelta(seconds=20), minute),
        "margins": every("margins", 5 * minute, 5 * minute),
        "reprice": every("reprice", 10 * minute, 10 * minute),
        "drift": every("drift", crontab(minute=7), 60 * minute),
        "digest": every("digest", crontab(hour=7, minute=0), 24 * 60 * minute),
        "partitions": every("partitions", crontab(minute=23), 60 * minute),
        "feedback": every("feedback", 5 * minute, 5 * minute),
    }


def create_celery() -> Celery:
    settings = get_settings()
    celery = Celery("routeledger", include=["workers.tasks"])
    celery.conf.update(
        broker_url=broker_url(),
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=240,
        task_time_limit=300,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        beat_schedule=beat_schedule(),
        beat_schedule_filename=str(settings.routeledger_data_dir / "celerybeat-schedule"),
        worker_hijack_root_logger=False,
    )
    return celery


celery_app = create_celery()
