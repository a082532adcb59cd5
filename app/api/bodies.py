"""ASGI middleware for request bodies: the caller's key first, then a size limit and gzip,
before any route runs."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from app.api.callers import Refused, client_address, resolve_caller
from app.api.errors import UNAVAILABLE, unavailable
from app.services.batches import Batch, BatchTooLarge, BodyNotJson, NotABatch, read_batch

MAX_BODY_BYTES = 5 * 1024 * 1024


class BodyLimitAndGzip:
    """Checks the caller's key before reading a body (every call with a body needs one), and
    hands the caller to the routes; refuses bodies over the limit with 413 (compressed or,
    after gzip, uncompressed); hands routes the decompressed body of a gzip request."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # the first of a repeated header, as routes read it
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        try:
            caller = await run_in_threadpool(
                resolve_caller, authorization, address=client_address(scope)
            )
        except Refused as refused:
            await _error(send, refused.status, refused.detail, refused.headers)
            return
        except UNAVAILABLE as error:
            await unavailable(error)(scope, receive, send)
            return
        scope = {**scope, "state": {**scope.get("state", {}), "caller": caller}}
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _error(send, 413, f"body over {self.max_bytes} bytes")
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _error(send, 413, f"body over {self.max_bytes} bytes")
                return
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding == b"gzip":
            try:
                plain = _gunzip(bytes(body), self.max_bytes)
            except zlib.error:
                await _error(send, 400, "body is not valid gzip")
                return
            except TooManyMembers:
                await _error(
                    send, 400, f"body is not valid gzip: more than {MAX_GZIP_MEMBERS} members"
                )
                return
            if plain is None:
                await _error(send, 413, f"body over {self.max_bytes} bytes once decompressed")
                return
            body = plain
            scope = {
                **scope,
                "headers": [
                    (k, v)
                    for k, v in scope["headers"]
                    if k not in (b"content-encoding", b"content-length")
                ]
                + [(b"content-length", str(len(body)).encode())],
            }
        elif encoding not in (b"identity", b""):
            await _error(send, 415, f"unsupported Content-Encoding {encoding.decode()!r}")
            return

        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


# Each member is decompressed apart, and what follows it copied: a body of many tiny members
# would keep the event loop busy for seconds (a gzip client writes one; `cat a.gz b.gz`, a few).
MAX_GZIP_MEMBERS = 16


class TooManyMembers(ValueError):
    pass


def _gunzip(data: bytes, limit: int) -> bytes | None:
    """The content of every member of a gzip body (members may follow one another, as `cat
    a.gz b.gz` makes them); None beyond `limit` bytes; zlib.error when the body is not whole
    gzip (cut short, or followed by other bytes); TooManyMembers past MAX_GZIP_MEMBERS."""
    plain = bytearray()
    for _ in range(MAX_GZIP_MEMBERS):
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        plain += decompressor.decompress(data, limit + 1 - len(plain))
        if len(plain) > limit or decompressor.unconsumed_tail:
            return None
        if not decompressor.eof:
            raise zlib.error("the body ends inside a gzip member")
        data = decompressor.unused_data
        if not data:
            return bytes(plain)
    raise TooManyMembers


async def _error(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    payload = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def json_body(request: Request) -> bytes:
    """The body of a JSON call, or 415."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(415, "Content-Type must be application/json")
    return await request.body()


@contextmanager
def batch_answers() -> Iterator[None]:
    """The 4xx that says what is wrong with a body that is not a batch."""
    try:
        yield
    except BodyNotJson as error:
        raise HTTPException(400, str(error)) from None
    except NotABatch as error:
        raise HTTPException(422, str(error)) from None
    except BatchTooLarge as error:
        raise HTTPException(413, str(error)) from None


async def read_json_batch(request: Request, key: str) -> Batch:
    """The items of a JSON `{key: [...]}` body, or the 4xx that says what is wrong with it."""
    body = await json_body(request)
    with batch_answers():
        return read_batch(body, key=key)
