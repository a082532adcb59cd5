"""The key that signs dashboard sessions (ROUTELEDGER_SECRET_KEY): the dashboard refuses to
start without a real one, and `routeledger up` makes one once and keeps it, readable by its
owner only, in the data folder."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

VARIABLE = "ROUTELEDGER_SECRET_KEY"
MIN_LENGTH = 32
MIN_DISTINCT_CHARACTERS = 10
# Words of the values people paste from examples and forget ("change-me", "dev-insecure-…").
PLACEHOLDER_WORDS = ("change", "example", "placeholder", "insecure", "secret", "password")
HOW_TO_MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_hex(32))'"


class InsecureSecretKey(ValueError):
    pass


def weakness(value: str | None) -> str | None:
    """What makes this value unfit to sign sessions, or None."""
    if not value:
        return "is not set"
    lowered = value.lower()
    for word in PLACEHOLDER_WORDS:
        if word in lowered:
            return f"looks like a placeholder (it contains {word!r})"
    if len(value) < MIN_LENGTH:
        return f"is too short ({len(value)} characters; at least {MIN_LENGTH})"
    if len(set(value)) < MIN_DISTINCT_CHARACTERS:
        return f"is too repetitive (fewer than {MIN_DISTINCT_CHARACTERS} distinct characters)"
    return None


def checked(value: str | None, *, source: str = VARIABLE) -> str:
    """The value when it is fit to sign sessions; else InsecureSecretKey naming `source`."""
    problem = weakness(value)
    if problem:
        raise InsecureSecretKey(
            f"{source} {problem}: the dashboard signs its sessions with it, and anyone who "
            f"knows it could sign in as anyone. Set {VARIABLE} to a long random value, e.g. "
            f"the output of: {HOW_TO_MAKE_ONE}"
        )
    return value


def local_secret_key(path: Path) -> str:
    """The key kept in `path` (mode 0600), made on first use: `routeledger up`'s own, so its
    sessions outlive a restart without anyone choosing a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _create(path)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # made or copied with a looser mode: only its owner may read it
    return checked(path.read_text().strip(), source=str(path))


def _create(path: Path) -> None:
    """Writes a new key to a private temporary file and links it into place: another `up`
    starting at the same moment sees either no file or the whole key, and one key wins."""
    key = secrets.token_hex(32)
    while weakness(key):  # hex has no placeholder word; repetition is merely improbable
        key = secrets.token_hex(32)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(key + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
