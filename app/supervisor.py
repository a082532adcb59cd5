"""`routeledger up`: every process on one machine, each writing its log to a file, stopped
together; and the one status line that says how they and the ledger are doing."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from app.services.activity import Activity

STOP_GRACE_SECONDS = 10
TICK_SECONDS = 3.0
# In a file or a pipe, changed figures are written again at most this often.
QUIET_SECONDS = 60.0
LOG_TAIL_LINES = 20


@dataclass
class Child:
    name: str
    args: list[str]
    # Answers 200 once the process serves; None: running is ready.
    ready_url: str | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    ready: bool = False


def _die_with_parent() -> None:
    # Linux: if `up` itself is killed, its children get SIGTERM instead of lingering.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Supervisor:
    """Runs `routeledger` subcommands, each with its output in LOG_DIR/NAME.log (the previous
    run's in NAME.log.1); with `echo`, shown on that console too, line by line."""

    def __init__(self, children: list[Child], *, log_dir: Path, echo: Console | None = None):
        self.children = children
        self.log_dir = log_dir
        self.echo = echo
        self._stopping = False
        self._copiers: list[threading.Thread] = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            child.log_path = self.log_dir / f"{child.name}.log"
            if child.log_path.exists():
                child.log_path.replace(child.log_path.with_suffix(".log.1"))
            log = child.log_path.open("ab")
            child.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *child.args],
                stdout=subprocess.PIPE if self.echo else log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                start_new_session=True,  # Ctrl-C reaches `up`, which stops the children in order
            )
            if self.echo:
                copier = threading.Thread(target=self._copy, args=(child, log), daemon=True)
                copier.start()
                self._copiers.append(copier)
            else:
                log.close()  # the child holds its own descriptor

    def _copy(self, child: Child, log) -> None:
        with log:
            for line in child.process.stdout:
                log.write(line)
                log.flush()
                text = line.decode(errors="replace").rstrip()
                self.echo.print(f"{child.name:9}| {text}", markup=False, highlight=False)

    def check_ready(self) -> None:
        """Asks the children that serve HTTP whether they do yet."""
        for child in self.children:
            if child.ready or child.ready_url is None:
                continue
            try:
                child.ready = httpx.get(child.ready_url, timeout=1).status_code == 200
            except httpx.TransportError:
                pass

    def run_until_stopped(self, on_tick: Callable[[], None] | None = None) -> int:
        """Waits for SIGINT/SIGTERM or a child's death, calling `on_tick` every few seconds;
        returns the exit status for `up`."""

        def request_stop(signum, _frame):
            self._stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        status = 0
        next_tick = time.monotonic()
        while not self._stopping:
            for child in self.children:
                code = child.process.poll() if child.process else None
                if code is not None:
                    self._report_exit(child, code)
                    self._stopping = True
                    status = 1
            if on_tick and not self._stopping and time.monotonic() >= next_tick:
                on_tick()
                next_tick = time.monotonic() + TICK_SECONDS
            time.sleep(0.2)
        self.stop()
        return status

    def _report_exit(self, child: Child, code: int) -> None:
        print(f"routeledger {child.name} exited with status {code}; stopping", file=sys.stderr)
        if self.echo or child.log_path is None:
            return  # its output was on the console already
        lines = child.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        print(f"the end of {child.log_path}:", *lines, sep="\n", file=sys.stderr)

    def stop(self) -> None:
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for copier in self._copiers:
            copier.join(timeout=5)

    def describe(self) -> str:
        """`api ● worker ● …`, with the state of each: running, starting or exited."""
        marks = []
        for child in self.children:
            if child.process is None or child.process.poll() is not None:
                marks.append(f"{child.name} [red]✗ exited[/]")
            elif child.ready or child.ready_url is None:
                marks.append(f"{child.name} [green]●[/]")
            else:
                marks.append(f"{child.name} [yellow]… starting[/]")
        return "  ".join(marks)


def describe_activity(activity: Activity) -> str:
    stored = f"{'~' if activity.approximate else ''}{activity.requests_stored:,}"
    if activity.hours_to_roll_up == 0:
        rolled = "rollups up to date"
    elif activity.hours_to_roll_up == 1:
        rolled = "1 hour waiting for the rollup"
    else:
        rolled = f"{activity.hours_to_roll_up:,} hours waiting for the rollup"
    return f"{stored} requests stored · {rolled}"


class StatusLine:
    """`up`'s one line of state: the processes, the requests stored and what the rollup has
    yet to read. On a terminal it is redrawn in place; in a file or a pipe it is written
    again when a process changes state, and when the figures change at most once a minute,
    so a long run's log stays short."""

    def __init__(
        self,
        console: Console,
        supervisor: Supervisor,
        read_activity: Callable[[], Activity],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.console = console
        self.supervisor = supervisor
        self.read_activity = read_activity
        self.clock = clock
        self._live: Live | None = None
        self._written = ("", "")
        self._written_at = -QUIET_SECONDS

    def __enter__(self) -> StatusLine:
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self.update()
        return self

    def __exit__(self, *_exc) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self) -> None:
        self.supervisor.check_ready()
        processes = self.supervisor.describe()
        try:
            figures = describe_activity(self.read_activity())
        except SQLAlchemyError:
            figures = "[red]the database does not answer[/]"
        if self._live is not None:
            self._live.update(Text.from_markup(f"{processes}  │  {figures}"), refresh=True)
            return
        quiet = self.clock() - self._written_at < QUIET_SECONDS
        if processes == self._written[0] and (figures == self._written[1] or quiet):
            return
        self.console.print(f"{processes}  │  {figures}")
        self._written = (processes, figures)
        self._written_at = self.clock()
