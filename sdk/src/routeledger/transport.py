"""HTTP to the RouteLedger API over one kept-alive connection, used by the worker thread only."""

from __future__ import annotations

import email.utils
import gzip
import http.client
import json
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from routeledger._version import __version__


class Reply(NamedTuple):
    status: int
    payload: Any  # the decoded JSON body, None when the body is not JSON
    text: str  # the start of the body, for log messages
    retry_after: float | None  # seconds, from a Retry-After header


class Transport:
    def __init__(self, endpoint: str, api_key: str, timeout: float) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"endpoint must be an http or https URL, not {endpoint!r}")
        self._connection_class = (
            http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        )
        self._host = url.hostname
        self._port = url.port
        self._base_path = url.path.rstrip("/")
        self._timeout = timeout
        if not api_key.isprintable() or not api_key.isascii() or " " in api_key:
            # http.client would refuse the header on every call, and every event with it.
            raise ValueError("the API key holds characters a key never has (spaces, line breaks)")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": f"routeledger-python/{__version__}",
        }
        self._connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> Reply:
        """POST a JSON body, gzipped. Network errors propagate as OSError or HTTPException."""
        compressed = gzip.compress(
            body, compresslevel=1
        )  # JSON shrinks well even at the cheapest level
        reused = self._connection is not None
        try:
            return self._exchange(path, compressed)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed the idle kept-alive connection; one retry on a fresh one.
            return self._exchange(path, compressed)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def forget_connection(self) -> None:
        """After a fork: the socket belongs to the parent, leave it alone."""
        self._connection = None

    def _exchange(self, path: str, body: bytes) -> Reply:
        if self._connection is None:
            self._connection = self._connection_class(self._host, self._port, timeout=self._timeout)
        try:
            self._connection.request("POST", self._base_path + path, body, self._headers)
            response = self._connection.getresponse()
            raw = response.read()
        except BaseException:
            self.close()
            raise
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        text = raw[:500].decode("utf-8", "replace")
        return Reply(response.status, payload, text, _seconds(response.getheader("Retry-After")))


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After as seconds from now; it is either a number of seconds or an HTTP date."""
    if not retry_after:
        return None
    try:
        return max(float(retry_after), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None
