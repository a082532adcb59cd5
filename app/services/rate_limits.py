"""Each API key's rate: a token bucket in PostgreSQL, so every API process counts the same
calls (`rate` calls per second, bursts of two seconds' worth)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, text


def take(conn: Connection, *, key_id: int, rate: float, now: datetime) -> float:
    """Counts a call of the key: 0 when it may go ahead, else the seconds until it may. The
    bucket's row stays locked to the end of the caller's transaction, so two processes
    counting at once take turns."""
    capacity = max(1.0, 2 * rate)
    params = {"key_id": key_id, "rate": rate, "capacity": capacity, "now": now}
    tokens = conn.execute(
        text(
            """
            insert into rate_limits as r (key_id, tokens, updated_at)
            values (:key_id, :capacity, :now)
            on conflict (key_id) do update set
                tokens = least(:capacity, r.tokens + :rate * greatest(0,
                    extract(epoch from excluded.updated_at - r.updated_at))),
                updated_at = greatest(r.updated_at, excluded.updated_at)
            returning tokens
            """
        ),
        params,
    ).scalar_one()
    if tokens < 1:
        return (1 - tokens) / rate
    conn.execute(text("update rate_limits set tokens = tokens - 1 where key_id = :key_id"), params)
    return 0.0
