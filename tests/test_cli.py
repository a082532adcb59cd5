"""The command line, run as a user runs it: real processes, real databases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.helpers import REPO, batch, event, free_port, routeledger


def test_project_create_prints_keys_as_json(database_url):
    created = routeledger(
        "project", "create", "cli-project", "--baseline-model", "gpt-4o", "--json"
    )
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["project"] == "cli-project" and body["baseline_model"] == "gpt-4o"
    assert set(body["keys"]) == {"ingest", "read", "admin"}
    assert all(key.startswith("rl_") for key in body["keys"].values())
    again = routeledger("project", "create", "cli-project", "--json")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    listed = routeledger("key", "list", "--project", "cli-project")
    assert listed.returncode == 0 and listed.stdout.count("live") == 3


def test_commands_without_a_database_say_so(tmp_path):
    env = {"DATABASE_URL": "", "ROUTELEDGER_DATA_DIR": str(tmp_path)}
    result = routeledger("project", "create", "x", env=env)
    assert result.returncode == 1
    assert "DATABASE_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr


def _descendants_and_postgres(pid: int, pgdata: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if pgdata in cmdline:
            found.append(proc)
    try:
        found += psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    return found


@pytest.mark.timeout(240)
def test_up_runs_embedded_postgres_and_api_and_stops_everything(tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "ROUTELEDGER_DATA_DIR": str(data_dir),
        "ROUTELEDGER_API_PORT": str(port),
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert up.poll() is None, up.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("routeledger up did not become ready")

        # Other commands find the running embedded database without DATABASE_URL.
        created = routeledger("project", "create", "embedded", "--json", env=env)
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["keys"]["ingest"]
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/requests",
            json=batch(event()),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200, response.text
        assert _descendants_and_postgres(up.pid, str(data_dir))
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "RouteLedger API: http://127.0.0.1:" in output
    time.sleep(0.5)
    leftovers = [p for p in _descendants_and_postgres(up.pid, str(data_dir)) if p.is_running()]
    assert leftovers == [], f"orphaned processes: {leftovers}"
