"""A property of the spool, with real processes: whatever the crashes (kill -9 at random
points), pids (every process pid 1, as in containers, in a PID namespace of its own when
the machine allows one) and disks (a file size limit stands for a full disk), and however
many processes share the spool folder at once, once a last process has flushed, every event
that reached the spool is stored, nothing is left in the spool, and an event is sent again
only if it was in the last call of a process, the one it may not have lived (or, at its
exit deadline, waited) to note the answer of: the at-least-once window, which the API's
request_id deduplication covers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from routeledger.client import _open_spool

from tests.helpers import FakeApi

pytestmark = pytest.mark.skipif(os.name != "posix", reason="kill -9 and file locks")

CHILD = str(Path(__file__).with_name("spool_crash_child.py"))
KEY = "test-key"


def _pid_namespaces_work() -> bool:
    try:
        return (
            subprocess.run(
                ["unshare", "--pid", "--fork", "--kill-child", "true"],
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


PID_NAMESPACES = _pid_namespaces_work()

process_st = st.fixed_dictionaries(
    {
        "events": st.integers(0, 150),
        "end": st.sampled_from(["kill", "kill", "kill", "exit", "abandon"]),
        "kill_after": st.floats(0.1, 0.8),  # seconds; starting takes about 0.2
        "pid_1": st.booleans(),
        "file_size_limit": st.one_of(st.none(), st.integers(1_000, 30_000)),
        "batch_size": st.sampled_from([3, 20, 500]),
        "max_queue": st.sampled_from([10, 10_000]),
    }
)
round_st = st.fixed_dictionaries(
    {
        "service": st.sampled_from(["up", "down", "flaky"]),
        "processes": st.lists(process_st, min_size=1, max_size=2),  # at once, one spool
    }
)


class Run:
    """The processes of one example, each sending under its own endpoint path so the
    stand-in API can tell their calls apart, all through one spool folder."""

    def __init__(self, api: FakeApi, base: Path) -> None:
        self.api = api
        self.base = base
        self.shared = base / "spool"
        self.shared.mkdir()
        self.spooled: set[str] = set()
        self.senders: list[str] = []
        self.running: list[subprocess.Popen] = []

    def start(self, ids: list[str], end: str, **options) -> subprocess.Popen:
        sender = f"p{len(self.senders)}"
        self.senders.append(sender)
        endpoint = f"{self.api.url}/{sender}"
        args = dict(
            endpoint=endpoint, spool_dir=str(self._spool_dir(sender, endpoint)), ids=ids, end=end
        )
        args.update(options)
        pid_1 = args.pop("pid_1", False)
        command = [sys.executable, CHILD, json.dumps(args)]
        if pid_1 and PID_NAMESPACES:
            command = ["unshare", "--pid", "--fork", "--kill-child", *command]
        elif pid_1:
            args["present_pid_1"] = True
            command[-1] = json.dumps(args)
        process = subprocess.Popen(command, stdout=subprocess.PIPE)
        self.running.append(process)
        return process

    def finish(self, process: subprocess.Popen, kill_after: float | None) -> int:
        """Kill the process after a while, or wait for its end; collect what it spooled."""
        if kill_after is not None:
            timer = threading.Timer(kill_after, process.send_signal, [signal.SIGKILL])
            timer.start()
        # Until the pipe closes: with a PID namespace, when the process inside it is gone too.
        output, _ = process.communicate(timeout=90)
        if kill_after is not None:
            timer.cancel()
        self.running.remove(process)
        for line in output.decode().splitlines():
            if line.startswith("spooled ") and len(line) == len("spooled ") + 36:
                self.spooled.add(line.removeprefix("spooled "))
        return process.returncode

    def kill_all(self) -> None:
        for process in self.running:
            process.kill()
            process.communicate()

    def _spool_dir(self, sender: str, endpoint: str) -> Path:
        """A spool_dir whose folder for this endpoint and key is the shared folder."""
        probe = _open_spool(str(self.base / "probe"), endpoint, KEY, 1).directory
        os.rmdir(probe)
        spool_dir = self.base / sender
        spool_dir.mkdir()
        (spool_dir / os.path.basename(probe)).symlink_to(self.shared)
        return spool_dir


def answer_as(service: str, chance: random.Random):
    """A FakeApi judge: the service up, down (503 to every call) or flaky (one call in three)."""
    down = (503, {}, {"detail": "unavailable"})
    if service == "down":
        return lambda events: down
    if service == "flaky":
        return lambda events: down if chance.random() < 1 / 3 else None
    return None


@pytest.mark.timeout(600)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rounds=st.lists(round_st, min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_crashes_pids_and_full_disks_never_lose_nor_repeat_an_event(rounds, seed):
    api = FakeApi()
    chance = random.Random(seed)
    with tempfile.TemporaryDirectory() as base:
        run = Run(api, Path(base))
        try:
            for round_ in rounds:
                api.judge = answer_as(round_["service"], chance)
                started = []
                for spec in round_["processes"]:
                    ids = [str(uuid.uuid4()) for _ in range(spec["events"])]
                    options = {k: v for k, v in spec.items() if k not in ("events", "kill_after")}
                    started.append((run.start(ids, **options), spec))
                for process, spec in started:
                    run.finish(process, spec["kill_after"] if spec["end"] == "kill" else None)

            api.judge = None
            last = run.start([], "flush", pid_1=True, batch_size=500, max_queue=10_000)
            assert run.finish(last, None) == 0, "the last process could not flush everything"
        finally:
            run.kill_all()
            api.close()
        assert os.listdir(run.shared) == [], "files left in the spool"

    assert run.spooled <= api.request_ids, "events spooled and never stored"
    stored = Counter(
        request_id for _, status, ids in api.calls if 200 <= status < 300 for request_id in ids
    )
    last_calls = {}  # each process's last call: the one it may not have lived to settle
    for sender, _, ids in api.calls:
        last_calls[sender] = ids
    in_a_window = Counter(request_id for ids in last_calls.values() for request_id in ids)
    for request_id, times in stored.items():
        assert times <= 1 + in_a_window[request_id], f"{request_id} sent {times} times"
