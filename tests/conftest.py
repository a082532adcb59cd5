"""Shared fixtures: a fresh PostgreSQL database per test session (on the local server,
TEST_DATABASE_URL), migrated by Alembic, and a real API server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


def _configure(url: str) -> None:
    from app.settings import get_settings

    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"routeledger_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    url = _with_database(ADMIN_URL, name)
    _configure(url)
    from app.cli import _migrate

    _migrate()
    yield url
    from app.db import get_engine

    get_engine().dispose()
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def engine(database_url):
    from app.db import get_engine

    return get_engine()


@dataclass
class Project:
    id: int
    name: str
    ingest_key: str
    read_key: str
    admin_key: str

    @property
    def project_id(self) -> int:
        return self.id

    def count_requests(self) -> int:
        return _scalar("select count(*) from requests where project_id = %s", (self.id,))

    def count_attempts(self) -> int:
        return _scalar("select count(*) from attempts where project_id = %s", (self.id,))

    def fetch_request_ids(self) -> set[str]:
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            rows = conn.execute("select request_id from requests where project_id = %s", (self.id,))
            return {str(r[0]) for r in rows}


def _scalar(sql: str, params: tuple):
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        return conn.execute(sql, params).fetchone()[0]


def received_long_ago(project_id: int) -> None:
    """As if the project's requests had been received well before the rollup's lookback: a
    rollup then re-rolls only the hours something else marked."""
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute(
            "update requests set received_at = received_at - interval '1 hour' "
            "where project_id = %s",
            (project_id,),
        )


def make_project(baseline_model: str | None = "gpt-4o", name: str | None = None) -> Project:
    from app.db import transaction
    from app.services.projects import create_project

    name = name or f"project-{uuid.uuid4().hex[:8]}"
    with transaction() as conn:
        project_id, keys = create_project(conn, name=name, baseline_model=baseline_model)
    secrets = {k.scopes[0]: k.secret for k in keys}
    return Project(project_id, name, secrets["ingest"], secrets["read"], secrets["admin"])


@pytest.fixture
def project(database_url) -> Project:
    return make_project()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveApi:
    """A real `routeledger api` process on loopback over the session's database."""

    database_url: str
    port: int = field(default_factory=free_port)
    default_project: Project | None = None
    process: subprocess.Popen | None = None
    log_path: Path = field(
        default_factory=lambda: Path(f"/tmp/routeledger-api-{uuid.uuid4().hex[:6]}.log")
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        env = {**os.environ, "DATABASE_URL": self.database_url}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "info",  # so a failed start leaves a reason in the log
            ],
            env=env,
            cwd=REPO,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API not ready in {timeout}s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    # The default project's keys and counts, for tests that need only one project.
    def __getattr__(self, name):
        if name in ("ingest_key", "read_key", "admin_key", "project_id", "count_requests",
                    "count_attempts", "fetch_request_ids"):  # fmt: skip
            return getattr(self.default_project, name)
        raise AttributeError(name)


@pytest.fixture(scope="session")
def live_api(database_url) -> Iterator[LiveApi]:
    server = LiveApi(database_url=database_url, default_project=make_project(name="live-default"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_project(live_api) -> Project:
    return make_project()


@pytest.fixture(scope="session")
def fake_openai():
    """A fake OpenAI-compatible server on loopback, for the real clients (tests/fake_openai.py)."""
    from tests.fake_openai import FakeOpenAI

    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def http(live_api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_api.url, timeout=30) as client:
        yield client


# --- the dashboard in a real browser (issue 6) -------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"


@dataclass
class LiveDashboard(LiveApi):
    """A real `routeledger dashboard` process on loopback over the session's database
    (stopped like the API's)."""

    log_path: Path = field(
        default_factory=lambda: Path(f"/tmp/routeledger-dashboard-{uuid.uuid4().hex[:6]}.log")
    )

    def start(self, timeout: float = 60) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "dashboard", "--port", str(self.port)],
            env={**os.environ, "DATABASE_URL": self.database_url},
            cwd=REPO,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/login", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"dashboard did not start: {self.log_path.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def live_dashboard(database_url) -> Iterator[LiveDashboard]:
    server = LiveDashboard(database_url=database_url)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_project(live_api):
    """The demo's traffic, smaller, loaded through the SDK into the session's database."""
    from app.services import demo

    plan = demo.plan_ending_now(requests_per_hour=20)
    return demo.load(endpoint=live_api.url, plan=plan)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium driven by chromedriver; its console log is read by the tests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Chromium is missing: run ./scripts/test, which installs it")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.downloads = downloads
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()
