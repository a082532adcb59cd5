"""Request bodies of items: `{"requests": [...]}`, `{"feedback": [...]}`, read leniently
enough that one bad item never costs its neighbours."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError

from app.schemas import MAX_BATCH_EVENTS, describe_errors, field_path


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


def find_bad_text(value: Any, loc: tuple = ()) -> tuple | None:
    """The path of the first string holding invalid UTF-8 (a lone surrogate), if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return loc
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = find_bad_text(k, loc) or find_bad_text(v, (*loc, k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find_bad_text(v, (*loc, i))
            if found is not None:
                return found
    return None


def bad_text_error(raw_item: Any, *, whole: str) -> str | None:
    """The error of an item holding text that is not valid UTF-8 (read leniently: it cannot
    be stored, nor sent back), naming where; None for an item without any."""
    found = find_bad_text(raw_item)
    return None if found is None else f"{field_path(found, whole=whole)}: not valid UTF-8"


Item = TypeVar("Item")


@cache
def _adapter(item_type: type) -> TypeAdapter:
    return TypeAdapter(item_type)


def validate_item(
    item_type: type[Item], raw_item: Any, *, whole: str, check_text: bool
) -> Item | str:
    """One item of a batch as `item_type` (a model or a pydantic dataclass), or the error
    that names what is wrong with it: text that is not UTF-8 (looked for when `check_text`: a
    body read leniently), else the type's rules. `whole` names the item itself in a
    message."""
    if check_text:
        bad_text = bad_text_error(raw_item, whole=whole)
        if bad_text is not None:
            return bad_text
    try:
        return _adapter(item_type).validate_python(raw_item)
    except ValidationError as error:
        return describe_errors(error.errors(include_url=False), whole=whole)


def text_of(raw_item: Any, key: str) -> str | None:
    """An item's text field as sent (its request id, say), to name the item in an error;
    None when it has none, or none that can be sent back."""
    if isinstance(raw_item, dict):
        found = raw_item.get(key)
        if isinstance(found, str) and find_bad_text(found) is None:
            return found
    return None


def request_id_of(raw_item: Any) -> str | None:
    return text_of(raw_item, "request_id")
