"""Usage read from provider responses: real objects when the provider packages are
installed, their dict shapes always."""

from types import SimpleNamespace

import pytest
from routeledger import RouteLedger, Usage, read_usage

CHAT_COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"}},
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 80,
        "total_tokens": 1280,
        "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 100},
    },
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "model": "gpt-4.1",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 900,
        "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 0},
        "output_tokens": 300,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1200,
    },
}
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4",
    "content": [{"type": "text", "text": "Hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 50,
        "output_tokens": 310,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 400,
    },
}
EXPECTED = {
    "chat": Usage("gpt-4o-mini-2024-07-18", 76, 80, 1024, 100),
    "response": Usage("gpt-4.1", 388, 300, 512, 0),
    "message": Usage("claude-sonnet-4", 50, 310, 2000, 400),
}


@pytest.mark.parametrize(
    "shape, body",
    [("chat", CHAT_COMPLETION), ("response", RESPONSE), ("message", MESSAGE)],
)
def test_dict_shapes(shape, body):
    assert read_usage(body) == EXPECTED[shape]


def test_openai_objects():
    chat = pytest.importorskip("openai.types.chat")
    responses = pytest.importorskip("openai.types.responses")
    assert read_usage(chat.ChatCompletion.model_validate(CHAT_COMPLETION)) == EXPECTED["chat"]
    assert read_usage(responses.Response.model_validate(RESPONSE)) == EXPECTED["response"]


def test_anthropic_message_object():
    message = pytest.importorskip("anthropic.types").Message.model_validate(MESSAGE)
    assert read_usage(message) == EXPECTED["message"]


def test_attribute_objects_without_details():
    """Older or compatible servers leave the details out, or set them to None."""
    usage = SimpleNamespace(prompt_tokens=10, completion_tokens=5, prompt_tokens_details=None)
    assert read_usage(SimpleNamespace(model="m", usage=usage)) == Usage("m", 10, 5, 0, 0)


def test_usage_part_alone_and_own_terms():
    assert read_usage({"input_tokens": 7, "output_tokens": 3, "cache_read_tokens": 2}) == Usage(
        None, 7, 3, 2, 0
    )


def test_unknown_response_reads_as_zero():
    assert read_usage("plain text answer") == Usage(None, 0, 0, 0, 0)
    assert read_usage({"usage": {"input_tokens": "many"}}) == Usage(None, 0, 0, 0, 0)


def test_attempt_from_response_records_cached_tokens(tmp_path):
    client = RouteLedger(api_key="k", endpoint="http://127.0.0.1:9", spool_dir=tmp_path)
    request = client.request(customer_id="acme", feature="chat")
    request.attempt_from_response(CHAT_COMPLETION, tier="cheap", latency_ms=12.5, provider="openai")
    request.attempt_from_response(
        MESSAGE, tier="premium", model="claude-sonnet-4-20250514", status="rejected", reason="judge"
    )
    first, second = request.attempts
    assert (
        first["model"],
        first["input_tokens"],
        first["cache_read_tokens"],
        first["latency_ms"],
    ) == (
        "gpt-4o-mini-2024-07-18",
        76,
        1024,
        12.5,
    )
    assert (second["model"], second["cache_write_tokens"], second["status"], second["reason"]) == (
        "claude-sonnet-4-20250514",
        400,
        "rejected",
        "judge",
    )
    client.shutdown(timeout=0)
