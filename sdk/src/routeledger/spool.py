"""A bounded on-disk spool of encoded events, one JSON object a line.

Ownership of a spool file is an exclusive lock on the file itself (flock; a byte-range
lock on Windows), never a process id: the kernel releases it when its process ends,
however it ends (kill -9 included), so whatever the pid of a later process, in this
container or after a restart, it finds an abandoned file unlocked and takes it over. A
writer holds the lock on its file while it appends; a replayer holds it while it sends the
file, cutting each delivered batch off the end of the file, so that a process killed
midway leaves only what is still to send (and, at most, the one batch whose answer it did
not live to see).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import weakref
from typing import NamedTuple

try:
    import fcntl
except ImportError:  # Windows: see _try_lock
    fcntl = None  # type: ignore[assignment]
    try:
        import msvcrt
    except ImportError:
        msvcrt = None  # type: ignore[assignment]

logger = logging.getLogger("routeledger")

_SEGMENT_BYTES = 1 << 20  # small files keep a failed replay cheap to retry
HOLD_SECONDS = 300.0  # a held file (events the API failed on) is retried this long after
# Spool files: <kind>-<creation time in ns>-<random>.jsonl, or .held for events set aside.
# Earlier versions named files after their pid (.part while written, .jsonl.sending-<pid>
# while replayed); those are taken over like any other file.
_NAME = re.compile(r"^([a-z]+)-(\d+)-[0-9a-f-]+\.(jsonl|held|part|jsonl\.sending-\d+)$")


class Claim(NamedTuple):
    """A spool file locked for replay: its kind ("requests" or "feedback"), its lines and
    where each starts in the file."""

    kind: str
    path: str
    lines: list[bytes]
    offsets: list[int]
    fd: int


class Spool:
    def __init__(self, directory: str, max_bytes: int) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None  # the file this process appends to, locked
        self._kind = ""
        self._bytes = 0  # written to that file
        self._claims: set[int] = set()  # descriptors of the files claimed now
        self._total_bytes: int | None = None  # measured lazily; other processes add to it too
        _spools.add(self)

    def append(self, kind: str, lines: list[bytes]) -> bool:
        """Write lines for later replay; False when the spool is full or cannot be written."""
        data = b"".join(line + b"\n" for line in lines)
        with self._lock:
            if not self._has_room(len(data)):
                return False
            try:
                if self._fd is not None and (self._kind != kind or self._bytes >= _SEGMENT_BYTES):
                    self._seal_locked()
                if self._fd is None:
                    self._fd, _ = self._create(kind, ".jsonl")
                    self._kind, self._bytes = kind, 0
                _write_whole(self._fd, data, self._bytes)
                failure = None
            except OSError as error:
                failure = error
            else:
                self._bytes += len(data)
                self._total_bytes += len(data)
        if failure is not None:  # logged outside the lock, which a fork waits for
            logger.warning("RouteLedger cannot write its spool in %s: %s", self.directory, failure)
        return failure is None

    def hold(self, kind: str, lines: list[bytes]) -> bool:
        """Set lines aside in a file of their own, replayed after the others and only every
        HOLD_SECONDS; False when the spool is full or cannot be written."""
        data = b"".join(line + b"\n" for line in lines)
        with self._lock:
            if not self._has_room(len(data)):
                return False
            try:
                fd, path = self._create(kind, ".held")
                failure = None
            except OSError as error:
                failure = error
            else:
                try:
                    _write_whole(fd, data, 0)
                except OSError as error:
                    failure = error
                    try:
                        _unlink(fd, path)
                    except OSError:
                        pass  # left empty: the next claim removes it
                else:
                    os.close(fd)
                    self._total_bytes += len(data)
        if failure is not None:
            logger.warning("RouteLedger cannot write its spool in %s: %s", self.directory, failure)
        return failure is None

    def seal(self) -> None:
        """Make what this process spooled so far replayable, by this process or any other."""
        with self._lock:
            self._seal_locked()

    def has_pending(self) -> bool:
        """Whether this process has a file open, or some file could be claimed now (held
        files only once due)."""
        if self._fd is not None:
            return True
        return any(self._claimable(name) for name in self._candidates())

    def has_held(self) -> bool:
        """Whether events are set aside, due or not."""
        return any(name.endswith(".held") for name in self._names())

    def claim_oldest(self) -> Claim | None:
        """Lock the oldest file that no live process holds (held files last, once due),
        or None when there is none."""
        self.seal()
        for name in self._candidates():
            claim = self._claim(name)
            if claim is not None:
                return claim
        return None

    def truncate(self, claim: Claim, index: int) -> None:
        """Cut the claimed file's lines from `index` on: they are delivered."""
        size = _size(claim.fd)
        try:
            os.ftruncate(claim.fd, claim.offsets[index])
        except OSError as error:
            logger.warning("RouteLedger cannot shorten its spool file %s: %s", claim.path, error)
            return
        with self._lock:
            if self._total_bytes is not None:
                self._total_bytes = max(self._total_bytes - size + claim.offsets[index], 0)

    def release(self, claim: Claim) -> None:
        """Unlock a claimed file: what is left in it is replayed later."""
        with self._lock:
            self._claims.discard(claim.fd)
            os.close(claim.fd)

    def remove(self, claim: Claim) -> None:
        """Delete a claimed file, all delivered; unlinked before it is unlocked, so nobody
        can lock it in between and send it again."""
        with self._lock:
            self._claims.discard(claim.fd)
            size = _size(claim.fd)
            try:
                _unlink(claim.fd, claim.path)
                failure = None
            except OSError as error:
                failure = error
            else:
                if self._total_bytes is not None:
                    self._total_bytes = max(self._total_bytes - size, 0)
        if failure is not None:
            logger.warning("RouteLedger cannot remove %s from its spool: %s", claim.path, failure)

    # Internals, called with self._lock held unless said otherwise

    def _has_room(self, size: int) -> bool:
        if self._total_bytes is None:
            self._total_bytes = self._disk_usage()
        return self._total_bytes + size <= self._max_bytes

    def _create(self, kind: str, suffix: str) -> tuple[int, str]:
        """A new file, locked. A replayer may find it in the instant between its creation
        and the lock, take it for an abandoned empty file and delete it: then another name."""
        for _ in range(10):
            path = os.path.join(
                self.directory, f"{kind}-{time.time_ns():020d}-{os.urandom(6).hex()}{suffix}"
            )
            # Unbuffered and append-only: nothing sits in a buffer that a fork could copy.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            if _try_lock(fd) and _still_at(fd, path):
                return fd, path
            os.close(fd)
        raise OSError(f"cannot create a spool file in {self.directory}")

    def _seal_locked(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)  # unlocks: the file is replayable
        self._fd = None
        self._total_bytes = self._disk_usage()

    def _claim(self, name: str) -> Claim | None:
        path = os.path.join(self.directory, name)
        with self._lock:
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # delivered by another process meanwhile
                return None
            except OSError as error:
                failure = error
            else:
                failure = None
                try:
                    if not (_try_lock(fd) and _still_at(fd, path)):
                        os.close(fd)  # in use, or removed between our open and our lock
                        return None
                    data = _read_all(fd)
                except OSError as error:
                    failure = error
                    os.close(fd)
                else:
                    self._claims.add(fd)
        if failure is not None:
            logger.warning("RouteLedger cannot read its spool file %s: %s", path, failure)
            return None
        lines, offsets = _valid_lines(data, path)
        claim = Claim(name.split("-", 1)[0], path, lines, offsets, fd)
        if lines:
            return claim
        self.remove(claim)  # empty: abandoned before its first line, or all cut short
        return None

    def _claimable(self, name: str) -> bool:
        """Whether a file is unlocked now (not locked: only asked in passing)."""
        path = os.path.join(self.directory, name)
        with self._lock:  # a fork must not copy the descriptor, and its lock, midway
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return False
            try:
                return _try_lock(fd)
            finally:
                os.close(fd)

    def _names(self) -> list[str]:
        try:
            return [name for name in os.listdir(self.directory) if _NAME.match(name)]
        except OSError:
            return []

    def _candidates(self) -> list[str]:
        """File names in replay order: oldest first (by creation), then held files due."""
        waiting, held = [], []
        due = time.time() - HOLD_SECONDS
        for name in self._names():
            if not name.endswith(".held"):
                waiting.append((int(name.split("-", 2)[1]), name))
                continue
            try:
                changed = os.stat(os.path.join(self.directory, name)).st_mtime
            except OSError:
                continue
            if changed <= due:
                held.append((changed, name))
        return [name for _, name in sorted(waiting)] + [name for _, name in sorted(held)]

    def _disk_usage(self) -> int:
        total = 0
        for name in self._names():
            try:
                total += os.stat(os.path.join(self.directory, name)).st_size
            except OSError:
                pass  # removed meanwhile
        return total

    def _after_fork_in_child(self) -> None:
        """The child shares the parent's open files, and with them their locks: it closes its
        copies without unlocking, so the parent keeps its files and its claims."""
        self._lock = threading.Lock()
        for fd in [self._fd, *self._claims]:
            if fd is not None:
                os.close(fd)
        self._fd = None
        self._claims = set()
        self._total_bytes = None


# Forks wait for each spool's lock, so that no file is forked halfway through being opened
# or claimed; the child then lets go of the parent's files.
_spools: weakref.WeakSet[Spool] = weakref.WeakSet()
_forking: list[Spool] = []


def _before_fork() -> None:
    _forking[:] = list(_spools)
    for spool in _forking:
        spool._lock.acquire()


def _after_fork_in_parent() -> None:
    for spool in _forking:
        spool._lock.release()
    _forking.clear()


def _after_fork_in_child() -> None:
    for spool in _forking:
        spool._after_fork_in_child()
    _forking.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


if fcntl is not None:

    def _try_lock(fd: int) -> bool:
        """An exclusive flock, without waiting. flock (not fcntl/lockf) locks belong to the
        open file, so two opens in one process exclude each other too, and closing another
        descriptor of the same file never drops a lock by surprise."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlink(fd: int, path: str) -> None:
        try:
            os.unlink(path)
        finally:
            os.close(fd)

else:
    # Windows: a byte-range lock far past any data, so that it blocks no read or write.
    _LOCK_AT = (1 << 31) - 2

    def _try_lock(fd: int) -> bool:
        if msvcrt is None:
            return True  # a platform without file locks: one process per spool folder
        position = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, _LOCK_AT, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, position, os.SEEK_SET)
        return True

    def _unlink(fd: int, path: str) -> None:
        # An open file cannot be deleted here: emptied first, so that a process that locks
        # it between the close and the unlink finds nothing to send again.
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # that process removed the empty file


def _size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0  # the byte count is remeasured at the next seal


def _still_at(fd: int, path: str) -> bool:
    """Whether the path still names the file open as fd (not deleted, not replaced)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _valid_lines(data: bytes, path: str) -> tuple[list[bytes], list[int]]:
    """The lines that parse as JSON, and their offsets; a crash can leave the last one cut short."""
    lines, offsets = [], []
    corrupt = 0
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        line = data[start:end]
        if line:
            try:
                json.loads(line)
            except ValueError:
                corrupt += 1
            else:
                lines.append(line)
                offsets.append(start)
        start = end + 1
    if corrupt:
        logger.warning("RouteLedger skipped %d unreadable lines in %s", corrupt, path)
    return lines, offsets


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_whole(fd: int, data: bytes, size: int) -> None:
    """Append all of data or none of it: a failed write (a full disk, a file size limit) is
    cut back to `size`, where the file ended, so no half line is left for the next append
    to run into."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass  # then the half line is skipped as unreadable at replay
        raise
