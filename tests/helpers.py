"""What the tests share, in one module: builders of events, projects and keys; the live API
and dashboard processes; HTTP and browser helpers; the evaluation data; metrics of the real
clients' traffic; a stand-in ingest API for the SDK's tests; a fake OpenAI-compatible
provider. Fixtures are in the conftest.py files."""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import psycopg
from routeledger import RouteLedger
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


LOGIN_PASSWORD = "correct-horse-battery"


def make_login(email: str, password: str = LOGIN_PASSWORD, **roles: str) -> int:
    """A dashboard login with a role in each project named (project name -> role); its id."""
    from app.db import transaction
    from app.services import users
    from app.services.projects import project_id_by_name

    with transaction() as conn:
        user_id = users.create_user(conn, email=email, password=password)
        for project_name, role in roles.items():
            project_id = project_id_by_name(conn, name=project_name)
            users.grant(conn, user_id=user_id, project_id=project_id, role=role)
    return user_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A real key for the dashboards the tests start (ROUTELEDGER_SECRET_KEY, set for the session by
# the database_url fixture): the dashboard refuses to start without one.
TEST_SECRET_KEY = secrets.token_hex(32)


def process_log(name: str) -> Path:
    """Where a process a test starts writes its output: in the run's own folder (conftest's
    ROUTELEDGER_DATA_DIR, which pytest keeps for the last few runs), not loose in /tmp."""
    folder = Path(os.environ.get("ROUTELEDGER_DATA_DIR") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{uuid.uuid4().hex[:6]}.log"


@dataclass
class LiveApi:
    """A real `routeledger api` process on loopback over the session's database. Whatever
    happens, it does not outlive its test or fixture: a start that fails (the process exits,
    or does not serve in time) stops it again before raising, and `stop` ends the process and
    everything it started. `env` adds to the environment the tests run in."""

    database_url: str
    port: int = field(default_factory=free_port)
    default_project: Project | None = None
    process: subprocess.Popen | None = None
    log_path: Path = field(default_factory=lambda: process_log("api"))
    env: dict[str, str] = field(default_factory=dict)
    ready_path = "/readyz"  # answers 200 once the process serves (a class attribute)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # --log-level info: a failed start leaves its reason in the log.
        return ["api", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"]

    def start(self, timeout: float = 60) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *self.command()],
                env={**os.environ, "DATABASE_URL": self.database_url, **self.env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_serving(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_serving(self, timeout: float) -> None:
        name = self.command()[0]
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                log = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"{name} not serving in {timeout}s: {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_tree(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

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
    (started and stopped like the API's)."""

    log_path: Path = field(default_factory=lambda: process_log("dashboard"))

    ready_path = "/login"

    def command(self) -> list[str]:
        return ["dashboard", "--port", str(self.port)]


# --- processes the tests start ---------------------------------------------------------------


def stop_process_tree(process: subprocess.Popen, grace: float = 15) -> None:
    """Stops a process a test started and every process it started, however they behave:
    SIGTERM to it (it stops its own children in order); SIGKILL to it after `grace` seconds,
    and to whatever of its descendants is left."""
    descendants = _descendants(process.pid)
    outlived = 5.0  # how long its descendants may take to end once it ended by itself
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            descendants += _descendants(process.pid)  # and what it started meanwhile
            process.kill()
            process.wait()
            outlived = 0.0
    _, left = psutil.wait_procs(descendants, timeout=outlived)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=10)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@contextmanager
def running(*args: str, env: dict[str, str], log: Path, grace: float = 60):
    """`routeledger ARGS`, its output appended to `log`; stopped when the block ends, however
    it ends (stop_process_tree). Yields the process."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        stop_process_tree(process, grace)


def adopt_orphans() -> None:
    """Makes this process the parent of every orphan among its descendants (Linux's child
    subreaper): a daemon a test's process started, or a child left by a process that died, is
    then still found among this process's children."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def stop_leftovers(grace: float = 10) -> list[str]:
    """Stops every process this one started that is still running `grace` seconds from now;
    their command lines (none when the tests cleaned up after themselves)."""
    me = psutil.Process()
    deadline = time.monotonic() + grace
    while True:
        left = []
        for proc in me.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
                elif proc.ppid() == me.pid:
                    os.waitpid(proc.pid, os.WNOHANG)  # an adopted orphan that ended
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    described = []
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            described.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            proc.kill()
    psutil.wait_procs(left, timeout=10)
    return described


def processes_of(data_dir: Path) -> list[psutil.Process]:
    """Running processes of a `routeledger up` over this data folder: those started with it
    as ROUTELEDGER_DATA_DIR, and those whose command line names it (its embedded database)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(data_dir) in " ".join(proc.info["cmdline"] or []) or (
                proc.environ().get("ROUTELEDGER_DATA_DIR") == str(data_dir)
            ):
                found.append(proc)
    return found


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


# --- the dashboard over HTTP ------------------------------------------------------------------


def csrf_in(page: str) -> str:
    """The CSRF token of a page's form."""
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def dashboard_login(url: str, email: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    """A client of the dashboard at `url` that posted the login form: (client, answer)."""
    client = httpx.Client(base_url=url, timeout=30)
    token = csrf_in(client.get("/login").text)
    answer = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": token, "next": "/"}
    )
    return client, answer


# --- the dashboard in a browser --------------------------------------------------------------

ADMIN = demo.DEMO_LOGINS["admin"]


VIEWER = demo.DEMO_LOGINS["viewer"]


# path -> a CSS selector that only matches once the page shows data
PAGES = {
    "/": "#overview-spend .trace",
    "/routing": "#routing-splits .trace",
    "/advisor": "#advisor-table td[data-dash-column='recommended']",
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


def routeledger(
    *args: str, env: dict | None = None, unset: tuple[str, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess:
    """`routeledger ARGS` run to its end (killed after `timeout` seconds), in the tests'
    environment with `env` added and the variables `unset` removed."""
    environment = {**os.environ, **(env or {})}
    for name in unset:
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
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


# --- the SDK's tests: a stand-in API and an app's requests -------------------------------

Answer = tuple[int, dict[str, str], dict]  # status, headers, JSON body


class FakeApi:
    """Stores request ids once, like the API; `script` holds answers given before the normal
    ones, `max_events` makes larger batches a 413, and `judge(events)` may answer a batch
    instead (an Answer, or None for the normal one). An endpoint with a path before /v1
    (http://host:port/NAME) names its client: `calls` records (NAME, status, request ids)."""

    def __init__(self, port: int = 0) -> None:
        self.request_ids: set[str] = set()
        self.received: list[dict] = []  # every event judged: stored, duplicate or rejected
        self.posts: list[tuple[str, int]] = []  # (path, events in the batch) of every call
        self.calls: list[tuple[str, int, list[str]]] = []
        self.feedback: list[dict] = []
        self.script: list[Answer] = []
        self.max_events: int | None = None
        self.judge: Callable[[list[dict]], Answer | None] | None = None
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, path: str, body: dict) -> Answer:
        sender, _, path = path.rpartition("/v1/")
        path = "/v1/" + path
        items = body.get("requests") or body.get("feedback") or []
        with self.lock:
            answer = self._judged(path, items)
            ids = [item.get("request_id") for item in items]
            self.calls.append((sender.strip("/"), answer[0], ids))
            return answer

    def _judged(self, path: str, items: list[dict]) -> Answer:
        self.posts.append((path, len(items)))
        if self.script:
            return self.script.pop(0)
        if self.max_events is not None and len(items) > self.max_events:
            return 413, {}, {"detail": "too many events"}
        answer = self.judge(items) if self.judge is not None else None
        if answer is not None:
            return answer
        if path == "/v1/feedback":
            self.feedback.extend(items)
            return 200, {}, {"accepted": len(items), "duplicates": 0, "errors": []}
        accepted = duplicates = 0
        errors = []
        for index, event in enumerate(items):
            self.received.append(event)
            if event.get("feature") == "invalid":
                errors.append(
                    {"index": index, "request_id": event["request_id"], "error": "feature: invalid"}
                )
            elif event["request_id"] in self.request_ids:
                duplicates += 1
            else:
                self.request_ids.add(event["request_id"])
                accepted += 1
        status = 207 if errors else 200
        return status, {}, {"accepted": accepted, "duplicates": duplicates, "errors": errors}

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def do_POST(self) -> None:
                try:
                    raw = self.rfile.read(int(self.headers["Content-Length"]))
                    if self.headers.get("Content-Encoding") == "gzip":
                        raw = gzip.decompress(raw)
                    body = json.loads(raw)
                except (OSError, EOFError, ValueError):  # a client killed halfway through
                    self.close_connection = True
                    return
                status, headers, body = api._answer(self.path, body)
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler


def send_requests(
    client: RouteLedger, count: int, feature: str = "support-chat", **fields
) -> list[str]:
    """Log `count` requests of two attempts each, as an app would; their request ids."""
    ids = []
    for number in range(count):
        with client.request(customer_id=f"customer-{number % 7}", feature=feature, **fields) as req:
            req.attempt(
                "gpt-4o-mini",
                "cheap",
                500,
                200,
                latency_ms=800.0,
                status="rejected",
                reason="quality_check",
                provider="openai",
            )
            req.attempt(
                "gpt-4o",
                "premium",
                520,
                310,
                latency_ms=2100.0,
                cost_usd=Decimal("0.0041"),
                provider="openai",
            )
        ids.append(req.request_id)
    return ids


def nested(levels):
    """A JSON object `levels` deep, valid and small, like the one that poisoned batches."""
    metadata = {"leaf": "x" * 100}
    for _ in range(levels - 1):
        metadata = {"deep": metadata}
    return metadata


def send_with_poison(client, count=500, every=50):
    """count requests, one in `every` with metadata 300 levels deep: (good ids, poison ids)."""
    good, poison = [], []
    for number in range(count):
        bad = number % every == every // 2
        (poison if bad else good).extend(
            send_requests(client, 1, metadata=nested(300) if bad else {"region": "eu"})
        )
    return good, poison


# --- a fake OpenAI-compatible provider ----------------------------------------------------
# A small OpenAI-compatible chat completions server on loopback, for the real clients the
# tests drive (openai, LiteLLM). The model name says how it answers: one containing "fail"
# gets a 500 every time, "ratelimited" a 429 asking to retry after RETRY_AFTER_SECONDS,
# "badrequest" a 400; any other gets a completion (streamed when asked, with usage when
# `stream_options.include_usage` is set) whose model is the asked one with a date appended,
# after SLOW_SECONDS when the name contains "slow".
# Every prompt costs PROMPT_TOKENS, CACHED_TOKENS of them cached, and COMPLETION_TOKENS.

PROMPT_TOKENS = 42
CACHED_TOKENS = 10
COMPLETION_TOKENS = 7
DATE_SUFFIX = "-2026-01-01"
SLOW_SECONDS = 2.0
RETRY_AFTER_SECONDS = 2


class FakeOpenAI:
    def __init__(self) -> None:
        self.calls: list[str] = []  # the model of every call, failed ones included
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                model = body["model"]
                with fake.lock:
                    fake.calls.append(model)
                if "slow" in model:
                    time.sleep(SLOW_SECONDS)
                if "fail" in model:
                    self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                elif "ratelimited" in model:
                    self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}},
                               {"retry-after": str(RETRY_AFTER_SECONDS)})  # fmt: skip
                elif "badrequest" in model:
                    self._send(400, {"error": {"message": "too long", "type": "invalid_request"}})
                elif body.get("stream"):
                    self._stream(model, body.get("stream_options") or {})
                else:
                    self._send(200, _completion(model))

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, model: str, options: dict) -> None:
                completion = _completion(model)
                chunks = [
                    {**_chunk(completion), "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": "hi"},
                         "finish_reason": None}]},
                    {**_chunk(completion), "choices": [
                        {"index": 0, "delta": {}, "finish_reason": "stop"}]},
                ]  # fmt: skip
                if options.get("include_usage"):
                    chunks.append({**_chunk(completion), "choices": [], "usage": _usage()})
                data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
                data += b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _usage() -> dict:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def _completion(model: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model + DATE_SUFFIX,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"},
             "finish_reason": "stop"}
        ],
        "usage": _usage(),
    }  # fmt: skip


def _chunk(completion: dict) -> dict:
    return {key: completion[key] for key in ("id", "created", "model")} | {
        "object": "chat.completion.chunk"
    }
