"""Builders of valid events for tests; override any field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def attempt(**overrides) -> dict:
    return {
        "model": "acme-small",
        "provider": "acme",
        "tier": "cheap",
        "input_tokens": 1000,
        "output_tokens": 500,
        "status": "ok",
        **overrides,
    }


def event(*attempts: dict, **overrides) -> dict:
    return {
        "request_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "customer_id": "acme",
        "feature": "support-chat",
        "attempts": list(attempts) or [attempt()],
        **overrides,
    }


def batch(*events: dict) -> dict:
    return {"requests": list(events)}
