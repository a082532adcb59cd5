"""The on-disk spool on its own: bounds, sealing, claims between processes, files left by
processes that died (whatever their pid), lines cut short by a crash or a full disk,
delivered batches cut off the end of a claimed file, held files."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from routeledger import spool as spool_module
from routeledger.spool import Spool

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file locks between processes")


def lines(*numbers):
    return [b'{"n":%d}' % number for number in numbers]


def claim_all(spool):
    """Every line that can be claimed now, each file removed once read."""
    found = []
    while (claim := spool.claim_oldest()) is not None:
        found.extend(claim.lines)
        spool.remove(claim)
    return found


def spool_files(directory):
    return sorted(name for name in os.listdir(directory) if spool_module._NAME.match(name))


def test_append_seal_claim_remove(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    assert not spool.has_pending()
    assert spool.append("requests", lines(1, 2))
    assert spool.append("feedback", lines(3))  # another kind seals the first file
    assert spool.has_pending()
    first = spool.claim_oldest()
    second = spool.claim_oldest()
    assert (first.kind, first.lines) == ("requests", lines(1, 2))
    assert (second.kind, second.lines) == ("feedback", lines(3))
    assert spool.claim_oldest() is None
    spool.release(first)
    again = spool.claim_oldest()
    assert again.lines == lines(1, 2)
    spool.remove(again)
    spool.remove(second)
    assert not os.listdir(tmp_path)


def test_bounded_in_bytes(tmp_path):
    line = b'"%s"' % (b"x" * 58)
    spool = Spool(str(tmp_path), max_bytes=100)
    assert spool.append("requests", [line])
    assert not spool.append("requests", [line])
    spool.remove(spool.claim_oldest())
    assert spool.append("requests", [line])


def test_delivered_batches_are_cut_off_the_end(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    spool.append("requests", lines(1, 2, 3, 4, 5))
    claim = spool.claim_oldest()
    spool.truncate(claim, 3)  # 4 and 5 delivered
    spool.release(claim)
    claim = spool.claim_oldest()
    assert claim.lines == lines(1, 2, 3)
    spool.remove(claim)
    assert spool.append("requests", lines(6))  # the byte count followed the cuts
    assert claim_all(spool) == lines(6)


def test_two_spools_never_claim_the_same_file(tmp_path):
    writer = Spool(str(tmp_path), max_bytes=1 << 20)
    for number in range(10):
        writer.append("requests", lines(number))
        writer.seal()
    other = Spool(str(tmp_path), max_bytes=1 << 20)  # stands for a second process
    claims = []
    while (claim := (writer if len(claims) % 2 else other).claim_oldest()) is not None:
        claims.append(claim)  # kept locked: the other spool must pass it by
    assert sorted(line for claim in claims for line in claim.lines) == sorted(lines(*range(10)))
    for claim in claims:
        writer.remove(claim)


def test_a_live_writer_keeps_its_file(tmp_path):
    writer = Spool(str(tmp_path), max_bytes=1 << 20)
    writer.append("requests", lines(1))
    other = Spool(str(tmp_path), max_bytes=1 << 20)
    assert other.claim_oldest() is None and not other.has_pending()
    writer.seal()
    assert claim_all(other) == lines(1)


HOLDER = textwrap.dedent(
    """
    import os, sys, time
    {pid_preamble}
    from routeledger.spool import Spool
    spool = Spool(sys.argv[1], max_bytes=1 << 20)
    spool.append("requests", [b'{{"n":1}}', b'{{"n":2}}'])
    if sys.argv[2] == "claim":
        spool.seal()
        claim = spool.claim_oldest()
        spool.truncate(claim, 1)  # {{"n":2}} delivered, then the process is killed
    print("ready", flush=True)
    time.sleep(60)
    """
)

PRESENT_PID_1 = "os.getpid = lambda: 1  # as pid 1 in its container"


@pytest.mark.parametrize("holding", ["append", "claim"])
def test_files_of_a_killed_process_are_taken_over_whatever_its_pid(tmp_path, holding):
    # The process presents pid 1, as in a container; its files are locked while it lives and
    # taken over once it is killed, by a process of the same pid too.
    script = HOLDER.format(pid_preamble=PRESENT_PID_1)
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), holding], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"ready\n"
        spool = Spool(str(tmp_path), max_bytes=1 << 20)
        assert spool.claim_oldest() is None and not spool.has_pending()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    found = run_as_pid_1(tmp_path)
    assert found == (['{"n":1}', '{"n":2}'] if holding == "append" else ['{"n":1}'])
    assert spool_files(tmp_path) == []


CLAIM_ALL = textwrap.dedent(
    """
    import os, json, sys
    os.getpid = lambda: 1  # as pid 1 in its container
    from routeledger.spool import Spool
    spool = Spool(sys.argv[1], max_bytes=1 << 20)
    found = []
    while (claim := spool.claim_oldest()) is not None:
        found += [line.decode() for line in claim.lines]
        spool.remove(claim)
    print(json.dumps(found))
    """
)


def run_as_pid_1(directory):
    done = subprocess.run(
        [sys.executable, "-c", CLAIM_ALL, str(directory)], capture_output=True, check=True
    )
    return json.loads(done.stdout)


def test_files_named_after_a_pid_by_earlier_versions_are_taken_over(tmp_path):
    # Earlier versions named files after their pid and left a pid 1 container's files for
    # good: the process that sent them, or the one writing them, is never seen dead.
    (tmp_path / f"requests-{1:020d}-1-aaaaaaaa.jsonl.sending-1").write_bytes(b'{"n":1}\n')
    (tmp_path / f"requests-{2:020d}-1-bbbbbbbb.part").write_bytes(b'{"n":2}\n{"n":3')  # cut
    (tmp_path / f"requests-{3:020d}-{os.getpid()}-cccccccc.part").write_bytes(b'{"n":4}\n')
    (tmp_path / f"feedback-{4:020d}-7-dddddddd.jsonl").write_bytes(b'{"n":5}\n')
    assert run_as_pid_1(tmp_path) == ['{"n":1}', '{"n":2}', '{"n":4}', '{"n":5}']
    assert os.listdir(tmp_path) == []


def fork_and_wait_for_child(spool):
    """Fork a child that spools one line of its own, then lives on until told to end;
    returns its pid and a function that ends it."""
    ready_read, ready_write = os.pipe()
    end_read, end_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_read)
            os.close(end_write)
            spool.append("requests", lines(2))
            spool.seal()
            os.write(ready_write, b"x")
            os.read(end_read, 1)
        finally:
            os._exit(0)
    os.close(ready_write)
    os.close(end_read)
    assert os.read(ready_read, 1) == b"x"
    os.close(ready_read)

    def end():
        os.close(end_write)
        os.waitpid(pid, 0)

    return end


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_neither_keeps_nor_takes_the_parents_files(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    spool.append("requests", lines(1))  # the parent's file is open, locked, at the fork
    end_child = fork_and_wait_for_child(spool)
    try:
        other = Spool(str(tmp_path), max_bytes=1 << 20)  # stands for another process
        assert claim_all(other) == lines(2)  # the child's own, not the parent's open file
        spool.append("requests", lines(3))
        spool.seal()  # the child, still alive, must not keep the parent's file locked
        assert claim_all(other) == lines(1, 3)
    finally:
        end_child()


FULL_DISK = textwrap.dedent(
    """
    import json, resource, sys
    from routeledger.spool import Spool
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
    spool = Spool(sys.argv[1], max_bytes=1 << 20)
    results = [
        spool.append("requests", [b'"' + b"a" * 298 + b'"']),
        spool.append("requests", [b'"' + b"b" * 898 + b'"']),  # only part of it fits
        spool.append("requests", [b'"' + b"c" * 298 + b'"']),
    ]
    spool.seal()
    claim = spool.claim_oldest()
    print(json.dumps([results, [line[:2].decode() for line in claim.lines]]))
    """
)


def test_a_write_that_fails_halfway_leaves_no_half_line(tmp_path):
    # A file size limit stands for a full disk: the write that fails midway is cut back,
    # so the next line neither fails on the limit nor runs into half a line.
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, check=True
    )
    results, found = json.loads(done.stdout)
    assert results == [True, False, True]
    assert found == ['"a', '"c']


def test_held_lines_wait_their_turn(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    assert spool.hold("requests", lines(1))
    spool.append("requests", lines(2))
    assert spool.has_held()
    assert claim_all(spool) == lines(2)  # the held file is not due yet
    assert not spool.has_pending() and spool.has_held()
    (held,) = spool_files(tmp_path)
    past = time.time() - spool_module.HOLD_SECONDS - 1
    os.utime(tmp_path / held, (past, past))
    spool.append("requests", lines(3))
    spool.seal()
    assert spool.has_pending()
    assert claim_all(spool) == lines(3, 1)  # held ones after the others
    assert not spool.has_held()
