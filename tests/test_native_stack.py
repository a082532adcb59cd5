"""The processes `routeledger up` starts, against the local PostgreSQL and Redis (the same
set docker-compose runs): an event goes in through the API, the beat-scheduled worker rolls
it up, and the dashboard shows it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime

import httpx
import pytest

from app.periods import HOUR, floor_hour
from tests.helpers import (
    REPO,
    attempt,
    batch,
    event,
    free_port,
    make_project,
    open_page,
    running,
    sign_in,
    text_of,
    wait_until,
)


def _wait_ready(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in time")


@pytest.mark.timeout(420)
def test_up_with_redis_ingests_rolls_up_and_shows_on_the_dashboard(database_url, browser, tmp_path):
    api_port, dashboard_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/11",
        "ROUTELEDGER_DATA_DIR": str(tmp_path),
        "ROUTELEDGER_API_PORT": str(api_port),
        "ROUTELEDGER_DASHBOARD_PORT": str(dashboard_port),
    }
    project = make_project()
    login = (f"pm-{uuid.uuid4().hex[:6]}@example.com", "a long enough password")
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "user", "create", login[0], "--project", project.name,
         "--role", "viewer", "--password", login[1]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    api = f"http://127.0.0.1:{api_port}"
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    output = tmp_path / "up.log"
    with running("up", "--verbose", env=env, log=output) as up:
        deadline = time.monotonic() + 120
        _wait_ready(f"{api}/readyz", deadline)
        _wait_ready(f"{dashboard}/login", deadline)

        events = [event(attempt(model="gpt-4o-mini", provider="openai")) for _ in range(7)]
        response = httpx.post(
            f"{api}/v1/requests",
            json=batch(*events),
            headers={"Authorization": f"Bearer {project.ingest_key}"},
        )
        assert response.status_code == 200, response.text

        # No job is run by hand: beat schedules the rollup, the worker runs it.
        hour = floor_hour(datetime.fromisoformat(events[0]["timestamp"]))
        end = (hour + HOUR).isoformat()
        hour = hour.isoformat()

        def rolled_up() -> bool:
            metrics = httpx.get(
                f"{api}/v1/metrics/routing",
                params={"start": hour, "end": end},
                headers={"Authorization": f"Bearer {project.read_key}"},
            )
            return metrics.status_code == 200 and metrics.json()["requests"] == 7

        wait_until(rolled_up, timeout=180, what="the worker to roll the events up")

        sign_in(browser, dashboard, login)
        open_page(browser, dashboard, "/")
        assert text_of(browser, "kf-requests") == "7"
    assert up.returncode == 0, output.read_text()[-3000:]
    # --verbose: every process's log on the terminal too, each line marked with its process.
    shown = output.read_text()
    assert "worker   | " in shown and "celery@" in shown
    assert "dashboard login: " in shown  # the first few of the session's logins
