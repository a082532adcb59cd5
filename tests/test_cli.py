"""The command line, run as a user runs it: real processes, real databases."""

from __future__ import annotations

import json
import os
import re
import socket

import httpx
import pytest

from app.secret_key import weakness
from tests.helpers import (
    batch,
    event,
    free_port,
    processes_of,
    routeledger,
    running,
    wait_until,
)


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


@pytest.mark.timeout(240)
def test_up_runs_everything_quietly_and_stops_everything(tmp_path):
    """`up` on a first run: an embedded database and every process, their logs in files, on
    the terminal only the URLs, the logins, where the logs are and a status line; a secret
    key made and kept private; everything stopped at the end (issue 16 B, 10, 11)."""
    api_port, dashboard_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "ROUTELEDGER_DATA_DIR": str(data_dir),
        "ROUTELEDGER_API_PORT": str(api_port),
        "ROUTELEDGER_DASHBOARD_PORT": str(dashboard_port),
    }
    env.pop("ROUTELEDGER_SECRET_KEY", None)  # `up` makes its own
    output = tmp_path / "up.log"
    try:
        with running("up", env=env, log=output) as up:

            def serving() -> bool:
                assert up.poll() is None, output.read_text()
                return all(
                    _answers(url)
                    for url in (f"http://127.0.0.1:{api_port}/readyz",
                                f"http://127.0.0.1:{dashboard_port}/login")
                )  # fmt: skip

            wait_until(serving, timeout=120, what="routeledger up to serve")
            # Other commands find the running embedded database without DATABASE_URL.
            created = routeledger("project", "create", "embedded", "--json", env=env)
            assert created.returncode == 0, created.stderr
            key = json.loads(created.stdout)["keys"]["ingest"]
            response = httpx.post(
                f"http://127.0.0.1:{api_port}/v1/requests",
                json=batch(event()),
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 200, response.text
            assert processes_of(data_dir)
            wait_until(
                lambda: "api ●  worker ●  beat ●  dashboard ●" in output.read_text(),
                what="the status line to show every process running",
            )
    finally:
        leftovers = processes_of(data_dir)
        for process in leftovers:
            process.kill()
    assert up.returncode == 0, output.read_text()
    assert leftovers == [], f"orphaned processes: {leftovers}"

    shown = output.read_text()
    assert f"RouteLedger API: http://127.0.0.1:{api_port}" in shown
    assert f"RouteLedger dashboard: http://127.0.0.1:{dashboard_port}" in shown
    assert "no dashboard login yet: routeledger user create EMAIL --project NAME" in shown
    assert f"logs: {data_dir / 'logs'}" in shown
    assert "requests stored" in shown
    for noise in ("celery@", "[tasks]", "SecurityWarning", "INFO/MainProcess", "beat: Starting"):
        assert noise not in shown, noise
    assert len(shown.splitlines()) < 20, shown
    worker_log = (data_dir / "logs" / "worker.log").read_text()
    assert "celery@" in worker_log and "[tasks]" in worker_log

    secret_key = data_dir / "secret_key"
    assert secret_key.stat().st_mode & 0o777 == 0o600
    assert weakness(secret_key.read_text().strip()) is None


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_up_refuses_a_placeholder_secret_key_and_starts_nothing(tmp_path):
    env = {
        "DATABASE_URL": "",
        "ROUTELEDGER_DATA_DIR": str(tmp_path),
        "ROUTELEDGER_SECRET_KEY": "change-me-to-a-long-random-string",
    }
    refused = routeledger("up", env=env, timeout=60)
    assert refused.returncode == 1
    assert "Error: ROUTELEDGER_SECRET_KEY looks like a placeholder" in refused.stderr
    assert list(tmp_path.iterdir()) == []  # no database, no process, no key file


def test_a_second_up_on_one_data_folder_or_a_taken_port_is_refused_at_once(tmp_path):
    """Before anything starts (a second beat, logs turned over, a database): a data folder
    another `up` holds, or a port something listens on, is said by name."""
    import fcntl

    env = {"DATABASE_URL": "", "ROUTELEDGER_DATA_DIR": str(tmp_path)}
    with (tmp_path / "up.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `up` holds it
        second = routeledger("up", env=env, timeout=60)
    assert second.returncode == 1
    assert "`routeledger up` is already running with this data folder" in second.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "pgdata").exists()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        taken = routeledger("up", env={**env, "ROUTELEDGER_API_PORT": str(port)}, timeout=60)
    assert taken.returncode == 1
    assert f"cannot serve the API on 127.0.0.1:{port}" in taken.stderr
    assert "ROUTELEDGER_API_PORT" in taken.stderr and "Traceback" not in taken.stderr
    assert not (tmp_path / "pgdata").exists()


@pytest.mark.timeout(240)
def test_up_stops_everything_and_shows_why_when_a_process_fails(database_url, tmp_path):
    """The worker and the beat cannot start (a broker of no known kind): `up` stops everything
    it started and shows the end of the log of the first to exit."""
    env = {
        **os.environ,
        "ROUTELEDGER_DATA_DIR": str(tmp_path),
        "ROUTELEDGER_API_PORT": str(free_port()),
        "ROUTELEDGER_DASHBOARD_PORT": str(free_port()),
        "CELERY_BROKER_URL": "nosuchbroker://127.0.0.1:1//",
    }
    output = tmp_path / "up.log"
    with running("up", env=env, log=output) as up:
        up.wait(180)
    left = processes_of(tmp_path)
    assert up.returncode == 1
    assert left == []
    shown = output.read_text()
    exited = re.search(r"routeledger (worker|beat) exited with status \d+; stopping", shown)
    assert exited, shown
    assert f"the end of {tmp_path / 'logs' / exited.group(1)}.log:" in shown
    assert "nosuchbroker" in shown.lower()


def test_bad_command_line_values_are_named_not_tracebacks(database_url, tmp_path):
    cases = {
        ("key", "revoke", "--project", "p", str(2**70)): "KEY_ID",
        ("api", "--port", "99999"): "--port",
        ("dashboard", "--port", "0"): "--port",
        ("export", "requests", "--project", "p", "-o", str(tmp_path / "no" / "r.csv")): "--output",
        ("jobs", "run", "reprice", "--project", "p", "--model", "m", "--start", "2026-12-06",
         "--end", "2026-12-05", "--reason", "r"): "--end",
    }  # fmt: skip
    for args, named in cases.items():
        result = routeledger(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    # A correction's audit record says why: a correction without a reason is not run.
    unexplained = routeledger("jobs", "run", "reprice", "--project", "p", "--model", "m",
                              "--start", "2026-12-05", "--end", "2026-12-06")  # fmt: skip
    assert unexplained.returncode == 2 and "--reason" in unexplained.stderr, unexplained.stderr
    blank = routeledger("jobs", "run", "reprice", "--reason", "")  # not the plain job
    assert blank.returncode == 2 and "--reason" in blank.stderr, blank.stderr


def test_values_a_command_refuses_are_named_as_the_api_names_them(database_url):
    created = routeledger("project", "create", "cli-refusals", "--json")
    assert created.returncode == 0, created.stderr
    cases = {
        ("user", "sign-out", "not an email"): "is not an email address",
        ("key", "create", "--project", "cli-refusals", "--name", "", "--scope", "read"):
            "name: String should have at least 1 character",
        ("key", "create", "--project", "cli-refusals", "--name", "k" * 201, "--scope", "read"):
            "name: String should have at most 200 characters",
    }  # fmt: skip
    for args, message in cases.items():
        result = routeledger(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    listed = routeledger("key", "list", "--project", "cli-refusals")
    assert listed.stdout.count("live") == 3  # no key made of a refused name
