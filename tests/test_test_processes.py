"""The processes the tests start never outlive them (issue 16, item 10): a live API or
dashboard whose start fails is stopped again; a process that ignores SIGTERM is killed with
everything it started; an orphan is still found among the test run's children, where the
end-of-run check (tests/conftest.py, no_process_left) looks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import psutil
import psycopg
import pytest

from tests.helpers import ADMIN_URL, LiveApi, LiveDashboard, stop_process_tree, with_database


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def unmigrated_database():
    """A database the API can reach but not use: its /readyz answers 503 for as long as it
    runs, as it did at a faked date when the API's start failed inside a test."""
    name = f"routeledger_unmigrated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield with_database(ADMIN_URL, name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


def test_a_live_api_that_never_serves_is_stopped_when_its_start_fails(unmigrated_database):
    api = LiveApi(database_url=unmigrated_database)
    with pytest.raises(RuntimeError, match="api not serving in 5s"):
        api.start(timeout=5)
    assert api.process.returncode is not None


def test_a_live_dashboard_that_is_not_up_in_time_is_stopped(database_url):
    dashboard = LiveDashboard(database_url=database_url)
    with pytest.raises(RuntimeError, match="dashboard not serving in 0s"):
        dashboard.start(timeout=0)
    assert dashboard.process.returncode is not None


STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
        start_new_session=True,
    )
    print(child.pid, flush=True)
    time.sleep(300)
    """
)


def test_a_process_that_ignores_sigterm_is_killed_with_what_it_started():
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    try:
        child = int(stubborn.stdout.readline())
        stop_process_tree(stubborn, grace=1)
        assert stubborn.returncode == -signal.SIGKILL
        assert not alive(child)
    finally:
        stubborn.stdout.close()
        if stubborn.poll() is None:  # the test failed: do not leave it to the end-of-run check
            stubborn.kill()
            stubborn.wait()


DAEMON = textwrap.dedent(
    """
    import subprocess, sys
    daemon = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    print(daemon.pid, flush=True)
    """
)


def test_an_orphan_is_still_a_child_of_the_test_run():
    """A process whose parent ended (a daemon, or the child of a killed process) is adopted
    by the test run, so the end-of-run check finds it."""
    started = subprocess.run(
        [sys.executable, "-c", DAEMON], capture_output=True, text=True, timeout=60
    )
    orphan = int(started.stdout)
    try:
        assert psutil.Process(orphan).ppid() == os.getpid()
    finally:
        os.kill(orphan, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # not adopted: init reaps it
            os.waitpid(orphan, 0)
