"""Shared fixtures: a fresh PostgreSQL database per test session (on the local server,
TEST_DATABASE_URL), migrated by Alembic, a real API server on loopback, and a check that no
process the tests started outlives the run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.helpers import (
    ADMIN_URL,
    ARTIFACTS,
    CHROMEDRIVER,
    CHROMIUM,
    TEST_SECRET_KEY,
    LiveApi,
    LiveDashboard,
    Project,
    adopt_orphans,
    make_project,
    stop_leftovers,
    with_database,
)


@pytest.fixture(scope="session", autouse=True)
def no_process_left():
    """Every process a test or fixture starts is stopped by the end of the run, however the
    test ended: what is still running then (orphans included) is stopped here, and the run
    fails with their command lines. First set up, so last torn down."""
    adopt_orphans()
    yield
    left = stop_leftovers()
    if left:
        pytest.fail("processes the tests left running (stopped now): " + "; ".join(left))


def _configure(url: str, data_dir: str) -> None:
    from app.settings import get_settings

    os.environ["DATABASE_URL"] = url
    # Local state (the outbox the mail of tests without SMTP goes to) in the run's own folder,
    # for the processes the tests start too: never in the home of whoever runs them.
    os.environ["ROUTELEDGER_DATA_DIR"] = data_dir
    # Tests send events at fixed instants (the same on any day the suite runs): however old
    # they get, they stay within the ledger's age bound (tests of the bound set their own).
    os.environ["ROUTELEDGER_MAX_EVENT_AGE_DAYS"] = "36500"
    os.environ["ROUTELEDGER_SECRET_KEY"] = TEST_SECRET_KEY
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    name = f"routeledger_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    url = with_database(ADMIN_URL, name)
    _configure(url, str(tmp_path_factory.mktemp("routeledger-data")))
    from app.migrate import migrate

    migrate()
    yield url
    from app.db import get_engine

    get_engine().dispose()
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def engine(database_url):
    from app.db import get_engine

    return get_engine()


@pytest.fixture
def project(database_url) -> Project:
    return make_project()


@pytest.fixture(scope="session")
def live_api(database_url) -> Iterator[LiveApi]:
    project = make_project(name="live-default")
    with LiveApi(database_url=database_url, default_project=project) as server:
        yield server


@pytest.fixture
def fresh_project(live_api) -> Project:
    return make_project()


@pytest.fixture(scope="session")
def fake_openai():
    """A fake OpenAI-compatible server on loopback, for the real clients."""
    from tests.helpers import FakeOpenAI

    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def http(live_api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_api.url, timeout=30) as client:
        yield client


# --- the dashboard in a real browser (issue 6) -------------------------------------------


@pytest.fixture(scope="session")
def live_dashboard(database_url) -> Iterator[LiveDashboard]:
    with LiveDashboard(database_url=database_url) as server:
        yield server


@pytest.fixture(scope="session")
def demo_project(live_api):
    """The demo's traffic, smaller, loaded through the SDK into the session's database."""
    from tools import demo

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
