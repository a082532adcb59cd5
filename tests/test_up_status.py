"""What `routeledger up` shows while it runs (issue 16, item 11): one status line of the
processes and the ledger, which in a log is written again only when a process changes state,
and at most once a minute when the figures change."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rich.console import Console

from app.periods import floor_hour, utc_now
from app.services.activity import Activity, ledger_activity
from app.services.ingest import Batch, ingest_batch
from app.services.rollups import run_rollup
from app.supervisor import Child, StatusLine, Supervisor, describe_activity
from tests.helpers import event, free_port, make_project, stop_process_tree


class Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


def test_in_a_log_the_status_line_is_written_on_changes_at_most_once_a_minute(tmp_path):
    port = free_port()
    api = Child("api", [], ready_url=f"http://127.0.0.1:{port}/readyz")
    worker = Child("worker", [])
    supervisor = Supervisor([api, worker], log_dir=tmp_path)
    for child in supervisor.children:  # real processes, asleep
        child.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    stored = [0]
    now = [1000.0]
    out = io.StringIO()
    line = StatusLine(
        Console(file=out, width=200),  # not a terminal: lines are appended, never redrawn
        supervisor,
        lambda: Activity(requests_stored=stored[0], approximate=False, hours_to_roll_up=0),
        clock=lambda: now[0],
    )
    try:
        with line:
            line.update()  # nothing changed
            stored[0], now[0] = 5, 1010.0
            line.update()  # the figures changed, within the minute: not yet
            with ThreadingHTTPServer(("127.0.0.1", port), Ready) as server:
                threading.Thread(target=server.handle_request, daemon=True).start()
                line.update()  # the api serves now: a process changed, written at once
            stored[0], now[0] = 7, 1030.0
            line.update()
            now[0] = 1071.0
            line.update()  # a minute after the last line
            worker.process.kill()
            worker.process.wait()
            line.update()
    finally:
        for child in supervisor.children:
            stop_process_tree(child.process)
    assert out.getvalue().splitlines() == [
        "api … starting  worker ●  │  0 requests stored · rollups up to date",
        "api ●  worker ●  │  5 requests stored · rollups up to date",
        "api ●  worker ●  │  7 requests stored · rollups up to date",
        "api ●  worker ✗ exited  │  7 requests stored · rollups up to date",
    ]


def test_the_figures_read_the_requests_stored_and_the_hours_left_to_roll_up(engine):
    run_rollup(engine)
    with engine.connect() as conn:
        before = ledger_activity(conn)
    assert before.hours_to_roll_up == 0 and not before.approximate
    project = make_project()
    hour = floor_hour(utc_now()).isoformat()  # all three in one hour, whenever the test runs
    events = [event(timestamp=hour) for _ in range(3)]
    ingest_batch(engine, project_id=project.id, batch=Batch(events))
    with engine.connect() as conn:
        after = ledger_activity(conn)
    assert after.requests_stored == before.requests_stored + 3
    assert after.hours_to_roll_up == 1
    run_rollup(engine)
    with engine.connect() as conn:
        assert ledger_activity(conn).hours_to_roll_up == 0
    shown = describe_activity(Activity(1_234_567, approximate=True, hours_to_roll_up=2))
    assert shown == "~1,234,567 requests stored · 2 hours waiting for the rollup"
