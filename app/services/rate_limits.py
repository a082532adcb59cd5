"""Each API key's rate: a token bucket in PostgreSQL, so every API process counts the same
calls (`rate` calls per second, bursts of two seconds' worth)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from app.db import driver_cursor

# One statement: the bucket's row is locked (two processes counting the same key take turns),
# refilled for the time since it was last counted, and spent if it holds a whole call. The
# first call of a key makes the row. The count may be lost in a crash: the transaction does
# not wait for it to be flushed (synchronous_commit off), so no call waits on the disk.
_TAKE = """
    with current as (
        select tokens, updated_at from rate_limits where key_id = %(key_id)s for update
    ), refilled as (
        select coalesce(least(%(capacity)s, c.tokens + %(rate)s * greatest(0,
                   extract(epoch from cast(%(now)s as timestamptz) - c.updated_at))), %(capacity)s)
               as tokens
        from (select 1) as one left join current c on true
    )
    insert into rate_limits as r (key_id, tokens, updated_at)
    select %(key_id)s, case when tokens >= 1 then tokens - 1 else tokens end, %(now)s from refilled
    on conflict (key_id) do update
        set tokens = excluded.tokens, updated_at = greatest(r.updated_at, excluded.updated_at)
    returning (select tokens from refilled) as available,
              set_config('synchronous_commit', 'off', true)
"""


def take(conn: Connection, *, key_id: int, rate: float, now: datetime) -> float:
    """Counts a call of the key: 0 when it may go ahead, else the seconds until it may."""
    # On every call: psycopg's cursor (app.db.driver_cursor).
    with driver_cursor(conn) as cursor:
        cursor.execute(
            _TAKE, {"key_id": key_id, "rate": rate, "capacity": max(1.0, 2 * rate), "now": now}
        )
        available = cursor.fetchone()[0]
    return 0.0 if available >= 1 else (1 - available) / rate
