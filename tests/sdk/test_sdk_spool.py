"""The on-disk spool on its own: bounds, sealing, claims between processes, files left by
dead processes, lines cut short by a crash."""

import os
import subprocess
import sys

from routeledger.spool import Spool


def lines(*numbers):
    return [b'{"n":%d}' % number for number in numbers]


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
    assert spool.claim_oldest().lines == lines(1, 2)
    spool.remove(first)
    spool.remove(second)
    assert not os.listdir(tmp_path)


def test_bounded_in_bytes(tmp_path):
    line = b'"%s"' % (b"x" * 58)
    spool = Spool(str(tmp_path), max_bytes=100)
    assert spool.append("requests", [line])
    assert not spool.append("requests", [line])
    spool.remove(spool.claim_oldest())
    assert spool.append("requests", [line])


def test_two_processes_never_claim_the_same_file(tmp_path):
    writer = Spool(str(tmp_path), max_bytes=1 << 20)
    for number in range(10):
        writer.append("requests", lines(number))
        writer.seal()
    other = Spool(str(tmp_path), max_bytes=1 << 20)  # stands for a second process
    claimed = []
    while True:
        claim = (writer if len(claimed) % 2 else other).claim_oldest()
        if claim is None:
            break
        claimed.extend(claim.lines)
    assert sorted(claimed) == sorted(lines(*range(10)))


def test_files_of_dead_processes_are_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    (tmp_path / f"requests-{1:020d}-{pid}-aaaaaaaa.part").write_bytes(
        b'{"n":1}\n{"n":2'
    )  # cut short
    (tmp_path / f"requests-{2:020d}-{pid}-bbbbbbbb.jsonl.sending-{pid}").write_bytes(b'{"n":3}\n')
    (tmp_path / f"requests-{3:020d}-{os.getppid()}-cccccccc.part").write_bytes(
        b'{"n":4}\n'
    )  # owner alive
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    first = spool.claim_oldest()
    second = spool.claim_oldest()
    assert (first.lines, second.lines) == (lines(1), lines(3))
    assert spool.claim_oldest() is None


def test_writes_survive_a_fork(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=1 << 20)
    spool.append("requests", lines(1))
    pid = os.fork()
    if pid == 0:
        spool.reset_after_fork()
        spool.append("requests", lines(2))
        spool.seal()
        os._exit(0)
    os.waitpid(pid, 0)
    spool.append("requests", lines(3))
    spool.seal()
    found = []
    while (claim := spool.claim_oldest()) is not None:
        found.extend(claim.lines)
    assert sorted(found) == lines(1, 2, 3)
