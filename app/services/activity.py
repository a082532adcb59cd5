"""What the ledger is doing, in figures cheap enough to read every few seconds: the status line
of `routeledger up`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from app.services.rollups import ROLLUP_JOB

# Past this many stored requests, the planner's estimate stands in for an exact count.
EXACT_COUNT_UP_TO = 200_000


@dataclass(frozen=True)
class Activity:
    requests_stored: int
    approximate: bool  # requests_stored is the planner's estimate
    hours_to_roll_up: int  # hours of some project whose new rows the rollup has not read yet


def ledger_activity(conn: Connection) -> Activity:
    estimate = conn.execute(
        text("select reltuples::bigint from pg_class where oid = 'request_keys'::regclass")
    ).scalar_one()
    approximate = estimate > EXACT_COUNT_UP_TO
    stored = (
        estimate
        if approximate
        else conn.execute(text("select count(*) from request_keys")).scalar_one()
    )
    waiting = conn.execute(
        text(
            """
            select count(*) from (
                select project_id, hour from dirty_marks where job = :job
                union
                select project_id, hour from dirty_hours where job = :job
                union
                select project_id, hour from rollup_pending
            ) as waiting
            """
        ),
        {"job": ROLLUP_JOB},
    ).scalar_one()
    return Activity(requests_stored=stored, approximate=approximate, hours_to_roll_up=waiting)
