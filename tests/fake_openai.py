"""A small OpenAI-compatible chat completions server on loopback, for the real clients the
tests drive (openai, LiteLLM). The model name says how it answers: one containing "fail"
gets a 500 every time; any other gets a completion (streamed when asked, with usage when
`stream_options.include_usage` is set) whose model is the asked one with a date appended.
Every prompt costs PROMPT_TOKENS, CACHED_TOKENS of them cached, and COMPLETION_TOKENS."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_TOKENS = 42
CACHED_TOKENS = 10
COMPLETION_TOKENS = 7
DATE_SUFFIX = "-2026-01-01"


class FakeOpenAI:
    def __init__(self) -> None:
        self.calls: list[str] = []  # the model of every call, failed ones included
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                model = body["model"]
                with fake.lock:
                    fake.calls.append(model)
                if "fail" in model:
                    self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                elif body.get("stream"):
                    self._stream(model, body.get("stream_options") or {})
                else:
                    self._send(200, _completion(model))

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, model: str, options: dict) -> None:
                completion = _completion(model)
                chunks = [
                    {**_chunk(completion), "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": "hi"},
                         "finish_reason": None}]},
                    {**_chunk(completion), "choices": [
                        {"index": 0, "delta": {}, "finish_reason": "stop"}]},
                ]  # fmt: skip
                if options.get("include_usage"):
                    chunks.append({**_chunk(completion), "choices": [], "usage": _usage()})
                data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
                data += b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _usage() -> dict:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def _completion(model: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model + DATE_SUFFIX,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"},
             "finish_reason": "stop"}
        ],
        "usage": _usage(),
    }  # fmt: skip


def _chunk(completion: dict) -> dict:
    return {key: completion[key] for key in ("id", "created", "model")} | {
        "object": "chat.completion.chunk"
    }
