"""`routeledger up`: every process on one machine, stopped together."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

STOP_GRACE_SECONDS = 10


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen | None = None


def _die_with_parent() -> None:
    # Linux: if `up` itself is killed, its children get SIGTERM instead of lingering.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Supervisor:
    def __init__(self, children: list[Child]):
        self.children = children
        self._stopping = False

    def start(self) -> None:
        for child in self.children:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *child.args],
                preexec_fn=_die_with_parent,
                start_new_session=True,  # Ctrl-C reaches `up`, which stops the children in order
            )

    def run_until_stopped(self) -> int:
        """Waits for SIGINT/SIGTERM or a child's death; returns the exit status for `up`."""

        def request_stop(signum, _frame):
            self._stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        status = 0
        while not self._stopping:
            for child in self.children:
                code = child.process.poll() if child.process else None
                if code is not None:
                    print(
                        f"routeledger {child.name} exited with status {code}; stopping",
                        file=sys.stderr,
                    )
                    self._stopping = True
                    status = 1
            time.sleep(0.2)
        self.stop()
        return status

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
