"""Real Celery workers, on the local Redis and on the database broker, run the jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from celery import Celery

from app.db import sqlalchemy_url
from app.services.ingest import Batch, ingest_batch
from tests.helpers import REPO, event, make_project, running

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def worker_env(database_url: str, broker_url: str | None, tmp_path) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "ROUTELEDGER_DATA_DIR": str(tmp_path)}
    env.pop("CELERY_BROKER_URL", None)
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    return env


def rollup_requests(database_url: str, project_id: int) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "select coalesce(sum(requests), 0) from rollup_routing_hourly where project_id = %s",
            (project_id,),
        ).fetchone()[0]


def wait_for(condition, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def ingest_some(engine, project_id: int, count: int = 3) -> None:
    result = ingest_batch(
        engine, project_id=project_id, batch=Batch([event() for _ in range(count)])
    )
    assert result.accepted == count


@pytest.mark.parametrize("broker", ["redis", "database"])
def test_a_worker_runs_the_rollup_task(engine, database_url, tmp_path, broker):
    broker_url = REDIS_URL if broker == "redis" else None
    queue = f"test-{uuid.uuid4().hex[:8]}"
    project = make_project()
    ingest_some(engine, project.id)
    # Its own queue: other test sessions may share the Redis broker.
    worker = ["worker", "--concurrency", "1", "--queues", queue]
    env = worker_env(database_url, broker_url, tmp_path)
    with running(*worker, env=env, log=tmp_path / "worker.log", grace=30):
        client = Celery(broker=broker_url or "sqla+" + sqlalchemy_url(database_url))
        client.send_task("workers.tasks.rollup", queue=queue)
        done = wait_for(lambda: rollup_requests(database_url, project.id) == 3)
        client.close()
    assert done, (tmp_path / "worker.log").read_text()[-3000:]


def test_beat_and_a_worker_keep_the_rollups_within_a_minute_of_ingest(
    engine, database_url, tmp_path
):
    project = make_project()
    ingest_some(engine, project.id, count=4)
    worker = ["worker", "--concurrency", "1"]
    env = worker_env(database_url, None, tmp_path)
    with (
        running(*worker, env=env, log=tmp_path / "worker.log", grace=30),
        running("beat", env=env, log=tmp_path / "beat.log", grace=30),
    ):
        done = wait_for(lambda: rollup_requests(database_url, project.id) == 4, timeout=120)
    assert done, (tmp_path / "beat.log").read_text()[-2000:]


def test_jobs_run_prints_the_summary(engine, database_url):
    project = make_project()
    ingest_some(engine, project.id, count=2)
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "run", "rollup"],
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["projects"] >= 1
    assert rollup_requests(database_url, project.id) == 2


def test_an_unknown_job_is_refused(database_url):
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "run", "nonsense"],
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2 and "rollup" in completed.stderr


def test_every_scheduled_job_is_a_task_the_worker_knows(database_url):
    import workers.tasks  # noqa: F401  (registers the tasks)
    from workers.celery_app import beat_schedule, celery_app

    scheduled = {entry["task"] for entry in beat_schedule().values()}
    assert scheduled <= set(celery_app.tasks), scheduled - set(celery_app.tasks)
    assert "workers.tasks.emails" in scheduled
