"""Token usage read from provider responses, duck-typed so no provider package is imported."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class Usage(NamedTuple):
    model: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


def read_usage(response: Any) -> Usage:
    """Usage of an OpenAI chat completion or response, an Anthropic message, or the same
    shapes as plain dicts (a whole response or just its usage part).

    RouteLedger's input_tokens excludes cache reads and writes: OpenAI counts them inside
    its input figure, Anthropic reports them apart.
    """
    usage = _field(response, "usage")
    if usage is None:
        usage = response
    model = _field(response, "model")
    if _field(usage, "prompt_tokens") is not None:  # OpenAI chat completions
        return _openai_usage(
            model, usage, "prompt_tokens", "completion_tokens", "prompt_tokens_details"
        )
    if _field(usage, "input_tokens_details") is not None:  # OpenAI responses
        return _openai_usage(model, usage, "input_tokens", "output_tokens", "input_tokens_details")
    return Usage(  # Anthropic messages, or a plain dict in RouteLedger's own terms
        model,
        _tokens(_field(usage, "input_tokens")),
        _tokens(_field(usage, "output_tokens")),
        _tokens(_field(usage, "cache_read_input_tokens") or _field(usage, "cache_read_tokens")),
        _tokens(
            _field(usage, "cache_creation_input_tokens") or _field(usage, "cache_write_tokens")
        ),
    )


def _openai_usage(
    model: str | None, usage: Any, input_name: str, output_name: str, details_name: str
) -> Usage:
    details = _field(usage, details_name)
    cache_read = _tokens(_field(details, "cached_tokens"))
    cache_write = _tokens(_field(details, "cache_write_tokens"))
    input_tokens = max(_tokens(_field(usage, input_name)) - cache_read - cache_write, 0)
    return Usage(model, input_tokens, _tokens(_field(usage, output_name)), cache_read, cache_write)


def _field(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _tokens(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0
