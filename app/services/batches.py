"""Request bodies of items: `{"requests": [...]}`, `{"feedback": [...]}`, read leniently
enough that one bad item never costs its neighbours."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from app.schemas import MAX_BATCH_EVENTS


class BodyNotJson(ValueError):
    """400: the body cannot be parsed as JSON."""


class NotABatch(ValueError):
    """422: JSON, but not {"requests": [event, ...]} with at least one event."""


class BatchTooLarge(ValueError):
    """413: more events than a batch may hold."""


# --- parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    items: list[Any]
    # True when the body was read leniently (invalid UTF-8, lone surrogates, NaN or
    # Infinity): the items that hold such things are found one by one and refused alone.
    has_bad_text: bool = False


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError as strict_error:
        # orjson refuses the whole body for one bad byte; decode leniently to find out
        # whether it is otherwise JSON, so the good events beside the bad one survive.
        # It also takes NaN and Infinity, which JSON does not have: the items that hold one
        # are refused one by one (every number of the schema must be finite).
        try:
            return json.loads(raw.decode("utf-8", errors="surrogateescape")), True
        except (ValueError, RecursionError):
            raise BodyNotJson(f"body is not valid JSON: {strict_error}") from None


def read_batch(raw: bytes, *, key: str) -> Batch:
    """The items of a `{key: [...]}` body of 1 to 1000 items."""
    value, has_bad_text = _parse_json(raw)
    if not isinstance(value, dict) or not isinstance(value.get(key), list):
        raise NotABatch(f'body must be a JSON object {{"{key}": [...]}}')
    unknown = sorted(set(value) - {key})
    if unknown:
        raise NotABatch(f"unknown field {unknown[0]!r} in the batch; only {key!r} is allowed")
    items = value[key]
    if not items:
        raise NotABatch(f"{key!r} must hold at least one item")
    if len(items) > MAX_BATCH_EVENTS:
        raise BatchTooLarge(f"{len(items)} items in {key!r}; at most {MAX_BATCH_EVENTS} per batch")
    return Batch(items, has_bad_text)


def request_id_of(raw_event: Any) -> str | None:
    if isinstance(raw_event, dict) and isinstance(raw_event.get("request_id"), str):
        return raw_event["request_id"]
    return None
