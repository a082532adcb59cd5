"""What the tests share: builders of events, projects and keys, the live API and dashboard
processes, HTTP and browser helpers, the evaluation data. Fixtures are in conftest.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app.periods import floor_hour, utc_now
from app.services.rollups import run_rollup
from tools import demo
from tools.replay import Policy

# --- events ----------------------------------------------------------------------------------


def attempt(**overrides) -> dict:
    return {
        "model": "acme-small",
        "provider": "acme",
        "tier": "cheap",
        "input_tokens": 1000,
        "output_tokens": 500,
        "status": "ok",
        **overrides,
    }


def event(*attempts: dict, **overrides) -> dict:
    return {
        "request_id": str(uuid.uuid4()),
        "timestamp": utc_now().isoformat(),
        "customer_id": "acme",
        "feature": "support-chat",
        "attempts": list(attempts) or [attempt()],
        **overrides,
    }


def batch(*events: dict) -> dict:
    return {"requests": list(events)}


# --- projects, keys and the live processes ---------------------------------------------------

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


REPO = Path(__file__).resolve().parent.parent


def with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


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


def make_project(baseline_model: str | None = "gpt-4o", name: str | None = None) -> Project:
    from app.db import transaction
    from app.services.projects import create_project

    name = name or f"project-{uuid.uuid4().hex[:8]}"
    with transaction() as conn:
        project_id, keys = create_project(conn, name=name, baseline_model=baseline_model)
    secrets = {k.scopes[0]: k.secret for k in keys}
    return Project(project_id, name, secrets["ingest"], secrets["read"], secrets["admin"])


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


# --- HTTP calls and stored rows --------------------------------------------------------------


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def post(http: httpx.Client, key: str, body, **kwargs) -> httpx.Response:
    return http.post("/v1/requests", json=body, headers=auth(key), **kwargs)


def stored_request(database_url: str, request_id: str) -> dict | None:
    with psycopg.connect(database_url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute(
            "select * from requests where request_id = %s", (request_id,)
        ).fetchone()


def stored_attempts(database_url: str, request_id: str) -> list[dict]:
    with psycopg.connect(database_url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute(
            "select * from attempts where request_id = %s order by position", (request_id,)
        ).fetchall()


# --- the dashboard in a browser --------------------------------------------------------------

ADMIN = demo.DEMO_LOGINS["admin"]


VIEWER = demo.DEMO_LOGINS["viewer"]


# path -> a CSS selector that only matches once the page shows data
PAGES = {
    "/": "#overview-spend .trace",
    "/routing": "#routing-splits .trace",
    "/customers": "#customers-table td[data-dash-column='requests']",
    "/customers/globex": "#customer-money .trace",
    "/models": "#models-table td[data-dash-column='attempts']",
    "/experiments": "#experiments-arms .trace",
    "/drift": "#drift-psi .trace",
    "/alerts": "#alerts-table td[data-dash-column='rule']",
    "/prices": "#prices-catalog td[data-dash-column='model']",
    "/exports": "#exports-total-cost",
}


def wait_for(browser, selector: str, timeout: float = 20):
    try:
        return WebDriverWait(browser, timeout).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, selector) or False
        )[0]
    except TimeoutException:
        shot(browser, "timeout")
        raise AssertionError(f"{selector} did not appear on {browser.current_url}") from None


def wait_until(condition, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def shot(browser, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


def console_errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def sign_in(browser, site: str, login: tuple[str, str]) -> None:
    browser.delete_all_cookies()
    browser.get(f"{site}/login")
    browser.find_element(By.ID, "email").send_keys(login[0])
    browser.find_element(By.ID, "password").send_keys(login[1])
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, "#whoami")


def choose(browser, dropdown_id: str, value: str) -> None:
    """Picks an option of a Dash dropdown (a button opening a list of options)."""
    browser.find_element(By.ID, dropdown_id).click()
    wait_for(browser, f"[role=option] input[value='{value}']").find_element(
        By.XPATH, "./ancestor::*[@role='option']"
    ).click()


def open_page(browser, site: str, path: str) -> None:
    browser.get(site + path)
    wait_for(browser, PAGES[path.split("?")[0]])
    # Let the remaining callbacks of the page finish.
    wait_until(
        lambda: not browser.find_elements(By.CSS_SELECTOR, "[data-dash-is-loading='true']"),
        what="callbacks to finish",
    )


def text_of(browser, element_id: str) -> str:
    """The element's text now (key figures are re-rendered, so found again each time)."""
    found = browser.find_elements(By.ID, element_id)
    try:
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""


# --- the command line ------------------------------------------------------------------------


def routeledger(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


# --- the RouteLLM evaluation data ------------------------------------------------------------

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm"


GSM8K = DATA / "gsm8k" / "gsm8k_responses.csv"


MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


GPT4 = "gpt-4-1106-preview"


ALL_POLICIES = [
    Policy("cascade"),
    Policy("threshold", premium_share=0.3),
    Policy("all-cheap"),
    Policy("all-premium"),
]


# --- metrics of the real clients' traffic ------------------------------------------------


def set_price(http, project, model: str) -> None:
    """$1 per million input tokens, $2 output, $0.5 cache reads."""
    response = http.post(
        "/v1/prices",
        json={"prices": [{"model": model, "input_per_mtok": "1", "output_per_mtok": "2",
                          "cache_read_per_mtok": "0.5",
                          "effective_from": "2020-01-01T00:00:00Z"}]},
        headers=auth(project.admin_key),
    )  # fmt: skip
    assert response.status_code == 201, response.text


def metrics(http, engine, project, path: str = "routing", **filters) -> dict:
    """Metrics over the hours around now: the real clients stamp spans with the real clock."""
    run_rollup(engine)
    hour = floor_hour(datetime.now(UTC))
    params = {"start": (hour - timedelta(hours=1)).isoformat(),
              "end": (hour + timedelta(hours=2)).isoformat(), **filters}  # fmt: skip
    response = http.get(f"/v1/metrics/{path}", params=params, headers=auth(project.read_key))
    assert response.status_code == 200, response.text
    return response.json()


def by_model(body: dict) -> dict[str, dict]:
    return {m["model"]: m for m in body["by_model"]}
