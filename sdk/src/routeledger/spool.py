"""A bounded on-disk spool of encoded events, one JSON object a line.

Each process appends only to its own file, named after its pid, so processes never
write into each other's files. A file becomes replayable once sealed (renamed from
.part to .jsonl); a replayer claims it with an atomic rename, so two processes never
send the same file at once. Files left by a process that died are taken over.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import NamedTuple

logger = logging.getLogger("routeledger")

_SEGMENT_BYTES = 1 << 20  # small files keep a failed replay cheap to retry


class Claim(NamedTuple):
    """A spool file taken for replay: its kind ("requests" or "feedback") and its lines."""

    kind: str
    path: str
    ready_path: str
    lines: list[bytes]


class Spool:
    def __init__(self, directory: str, max_bytes: int) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self._max_bytes = max_bytes
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Forget the parent's open file: this process writes its own."""
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._part_path = ""
        self._part_kind = ""
        self._part_bytes = 0
        self._total_bytes: int | None = None  # measured lazily; other processes add to it too

    def append(self, kind: str, lines: list[bytes]) -> bool:
        """Write lines for later replay; False when the spool is full or cannot be written."""
        data = b"".join(line + b"\n" for line in lines)
        with self._lock:
            if self._total_bytes is None:
                self._total_bytes = self._disk_usage()
            if self._total_bytes + len(data) > self._max_bytes:
                return False
            try:
                if self._fd is not None and (
                    self._part_kind != kind or self._part_bytes >= _SEGMENT_BYTES
                ):
                    self._seal_locked()
                if self._fd is None:
                    self._open_part(kind)
                _write_all(self._fd, data)
            except OSError as error:
                logger.warning(
                    "RouteLedger cannot write its spool in %s: %s", self.directory, error
                )
                return False
            self._part_bytes += len(data)
            self._total_bytes += len(data)
        return True

    def seal(self) -> None:
        """Make what this process spooled so far replayable."""
        with self._lock:
            self._seal_locked()

    def has_pending(self) -> bool:
        return self._fd is not None or bool(self._ready_names())

    def claim_oldest(self) -> Claim | None:
        """Take the oldest replayable file, or None when there is none."""
        self.seal()
        for name in self._ready_names():
            ready_path = os.path.join(self.directory, name)
            path = f"{ready_path}.sending-{os.getpid()}"
            try:
                os.rename(ready_path, path)
                with open(path, "rb") as file:
                    data = file.read()
            except FileNotFoundError:  # another process claimed it first
                continue
            except OSError as error:
                logger.warning("RouteLedger cannot read its spool file %s: %s", path, error)
                continue
            lines = _valid_lines(data, path)
            claim = Claim(name.split("-", 1)[0], path, ready_path, lines)
            if lines:
                return claim
            self.remove(claim)
        return None

    def release(self, claim: Claim) -> None:
        """Put a claimed file back for a later replay."""
        try:
            os.rename(claim.path, claim.ready_path)
        except OSError as error:
            logger.warning("RouteLedger cannot return %s to its spool: %s", claim.path, error)

    def remove(self, claim: Claim) -> None:
        try:
            size = os.path.getsize(claim.path)
            os.unlink(claim.path)
        except OSError as error:
            logger.warning("RouteLedger cannot remove %s from its spool: %s", claim.path, error)
            return
        with self._lock:
            if self._total_bytes is not None:
                self._total_bytes = max(self._total_bytes - size, 0)

    def _open_part(self, kind: str) -> None:
        name = f"{kind}-{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}.part"
        self._part_path = os.path.join(self.directory, name)
        # Unbuffered and append-only: nothing sits in a buffer that a fork could copy.
        self._fd = os.open(self._part_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._part_kind = kind
        self._part_bytes = 0

    def _seal_locked(self) -> None:
        if self._fd is None:
            return
        try:
            os.close(self._fd)
            os.rename(self._part_path, self._part_path[: -len(".part")] + ".jsonl")
        except OSError as error:
            logger.warning("RouteLedger cannot seal its spool file %s: %s", self._part_path, error)
        self._fd = None
        self._total_bytes = self._disk_usage()

    def _ready_names(self) -> list[str]:
        """Sealed files, oldest first, after taking over the files of dead processes."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        ready = []
        for name in names:
            if name.endswith(".jsonl"):
                ready.append(name)
                continue
            stem, owner = _stem_and_owner(name)
            if owner is not None and owner != os.getpid() and not _process_alive(owner):
                try:
                    os.rename(
                        os.path.join(self.directory, name),
                        os.path.join(self.directory, stem + ".jsonl"),
                    )
                    ready.append(stem + ".jsonl")
                except OSError:
                    pass  # another process took it over first
        # Names start with the kind, then the creation time: oldest first within a kind.
        return sorted(ready, key=lambda name: name.split("-", 2)[1])

    def _disk_usage(self) -> int:
        total = 0
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    try:
                        total += entry.stat().st_size
                    except OSError:
                        pass  # removed meanwhile
        except OSError:
            pass
        return total


def _stem_and_owner(name: str) -> tuple[str, int | None]:
    """For a .part or a claimed file: its name without suffix and the pid that owns it."""
    if name.endswith(".part"):
        stem = name[: -len(".part")]
        owner = stem.split("-")[2] if stem.count("-") == 3 else ""
    elif ".jsonl.sending-" in name:
        stem, owner = name.split(".jsonl.sending-", 1)
    else:
        return name, None
    return stem, int(owner) if owner.isdigit() else None


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, safe liveness check: leave the file to its owner
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def _valid_lines(data: bytes, path: str) -> list[bytes]:
    """The lines that parse as JSON; a crash can leave the last one cut short."""
    lines = []
    corrupt = 0
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            json.loads(line)
        except ValueError:
            corrupt += 1
            continue
        lines.append(line)
    if corrupt:
        logger.warning("RouteLedger skipped %d unreadable lines in %s", corrupt, path)
    return lines


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
