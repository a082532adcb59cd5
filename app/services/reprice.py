"""Re-pricing: explicit, audited changes of stored costs.

Two kinds. `unpriced`: requests whose model had no price get one once a price exists (the
periodic job). `correction`: a model's attempts in a time range are priced again with the
prices now in the catalog (for a price that was wrong). Client-sent costs are never touched.
Each run that changes something writes one repricings row, one repriced_attempts row per
attempt and one repriced_baselines row per request whose baseline cost it changed, old and
new, and marks the hours dirty so the rollups follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Connection, Engine, insert, text, update

from app.models import repriced_attempts, repriced_baselines, repricings
from app.services.pricing import MONEY_CONTEXT, PriceBook
from app.services.projects import ProjectContext, load_project_context
from app.services.request_facts import attempt_cost, baseline_cost, request_cost, served_attempt
from app.services.rollups import ROLLUP_JOB, lock_project, mark_written

REQUESTS_PER_TRANSACTION = 2000
REPRICE_JOB = "reprice"


@dataclass(frozen=True)
class RepriceRun:
    repricings: int
    attempts_changed: int
    requests_changed: int


@dataclass(frozen=True)
class Change:
    attempts: int
    requests: int
    cost_before: Decimal
    cost_after: Decimal
    baselines: int = 0


@dataclass
class Audit:
    """The repricings row of one run: its fields (kind, and a correction's model, range and
    reason), and its id once a batch of the run changed something. A run goes in batches,
    a transaction each; they all add to this one row, which says what the run changed."""

    fields: dict
    repricing_id: int | None = None


def _attempts_of(conn: Connection, *, project_id: int, keys: list[tuple]) -> dict[tuple, list]:
    rows = conn.execute(
        text(
            """
            select a.* from attempts a
            join unnest(cast(:ts as timestamptz[]), cast(:ids as uuid[])) as k(ts, request_id)
              on a.ts = k.ts and a.request_id = k.request_id
            where a.project_id = :project_id
            order by a.ts, a.request_id, a.position
            """
        ),
        {"project_id": project_id, "ts": [k[0] for k in keys], "ids": [k[1] for k in keys]},
    )
    grouped: dict[tuple, list] = {}
    for row in rows:
        grouped.setdefault((row.ts, row.request_id), []).append(row)
    return grouped


def reprice_requests(
    conn: Connection,
    *,
    project: ProjectContext,
    requests: list,
    model: str | None,
    audit: Audit,
) -> Change:
    """Prices again the attempts of these requests: every priced or unpriced attempt of
    `model`, or (model None) only the unpriced ones; recomputes the requests' cost and
    missing baselines (every baseline when `model` is the baseline model)."""
    keys = [(r.ts, r.request_id) for r in requests]
    by_request = _attempts_of(conn, project_id=project.project_id, keys=keys)
    names = {(a.model, a.provider) for rows in by_request.values() for a in rows}
    baseline = project.baseline
    if baseline:
        names.add((baseline.model, baseline.provider))
    prices = PriceBook.load(conn, project_id=project.project_id, models=names)
    attempt_changes, request_updates, baseline_changes = [], [], []
    cost_before = cost_after = Decimal(0)
    for request in requests:
        rows = by_request.get((request.ts, request.request_id), [])
        costs = []
        for attempt in rows:
            cost, price_id = attempt.cost_usd, attempt.price_id
            wanted = attempt.model == model if model else attempt.cost_usd is None
            if wanted and attempt.cost_source != "client":
                priced = attempt_cost(attempt, client_cost=None, prices=prices, at=attempt.ts)
                cost, price_id = priced.cost_usd, priced.price_id
                if (cost, price_id) != (attempt.cost_usd, attempt.price_id):
                    attempt_changes.append((attempt, cost, price_id))
            costs.append(cost)
        baseline_usd, baseline_price_id = request.baseline_cost_usd, request.baseline_price_id
        if baseline_usd is None or (baseline is not None and model == baseline.model):
            baseline_usd, baseline_price_id = baseline_cost(
                served_attempt(rows), baseline=baseline, prices=prices, at=request.ts
            )
        if baseline_usd != request.baseline_cost_usd:
            baseline_changes.append((request, baseline_usd, baseline_price_id))
        total = request_cost(costs)
        if (total.known_usd, total.unpriced_attempts, baseline_usd) != (
            request.cost_usd,
            request.unpriced_attempts,
            request.baseline_cost_usd,
        ):
            cost_before = MONEY_CONTEXT.add(cost_before, request.cost_usd)
            cost_after = MONEY_CONTEXT.add(cost_after, total.known_usd)
            request_updates.append(
                {
                    "b_ts": request.ts,
                    "b_id": request.request_id,
                    "cost": total.known_usd,
                    "unpriced": total.unpriced_attempts,
                    "baseline": baseline_usd,
                    "baseline_price_id": baseline_price_id,
                }
            )
    if not request_updates and not attempt_changes:
        return Change(0, 0, Decimal(0), Decimal(0))
    change = Change(
        len(attempt_changes), len(request_updates), cost_before, cost_after, len(baseline_changes)
    )
    _write(conn, project_id=project.project_id, attempt_changes=attempt_changes,
           baseline_changes=baseline_changes, request_updates=request_updates, change=change,
           audit=audit)  # fmt: skip
    # A mark of what this transaction writes, found once it commits: marking the hours
    # dirty here (mark_dirty) adds nothing to an hour already dirty, and a rollup that
    # re-rolled it meanwhile, from before this commit, would leave the new costs out for good.
    mark_written(
        conn,
        job=ROLLUP_JOB,
        project_id=project.project_id,
        hours=[u["b_ts"] for u in request_updates] + [a.ts for a, _, _ in attempt_changes],
    )
    return change


def _write(
    conn: Connection,
    *,
    project_id: int,
    attempt_changes: list,
    baseline_changes: list,
    request_updates: list[dict],
    change: Change,
    audit: Audit,
) -> None:
    if audit.repricing_id is None:
        audit.repricing_id = conn.execute(
            insert(repricings)
            .values(
                project_id=project_id,
                attempts_changed=change.attempts,
                requests_changed=change.requests,
                cost_before_usd=change.cost_before,
                cost_after_usd=change.cost_after,
                baselines_changed=change.baselines,
                **audit.fields,
            )
            .returning(repricings.c.id)
        ).scalar_one()
    else:
        conn.execute(
            update(repricings)
            .where(repricings.c.project_id == project_id, repricings.c.id == audit.repricing_id)
            .values(
                attempts_changed=repricings.c.attempts_changed + change.attempts,
                requests_changed=repricings.c.requests_changed + change.requests,
                cost_before_usd=repricings.c.cost_before_usd + change.cost_before,
                cost_after_usd=repricings.c.cost_after_usd + change.cost_after,
                baselines_changed=repricings.c.baselines_changed + change.baselines,
            )
        )
    repricing_id = audit.repricing_id
    if attempt_changes:
        conn.execute(
            text(
                "update attempts set cost_usd = cast(:cost as numeric), price_id = :price_id, "
                "cost_source = case when cast(:cost as numeric) is null then null "
                "else 'price' end "
                "where project_id = :project_id and ts = :ts and request_id = :request_id "
                "and position = :position"
            ),
            [
                {"cost": cost, "price_id": price_id, "project_id": project_id, "ts": a.ts,
                 "request_id": a.request_id, "position": a.position}
                for a, cost, price_id in attempt_changes
            ],
        )  # fmt: skip
        conn.execute(
            insert(repriced_attempts),
            [
                {"project_id": project_id, "repricing_id": repricing_id, "ts": a.ts,
                 "request_id": a.request_id, "position": a.position, "old_cost_usd": a.cost_usd,
                 "new_cost_usd": cost, "old_price_id": a.price_id, "new_price_id": price_id}
                for a, cost, price_id in attempt_changes
            ],
        )  # fmt: skip
    if baseline_changes:
        conn.execute(
            insert(repriced_baselines),
            [
                {"project_id": project_id, "repricing_id": repricing_id, "ts": r.ts,
                 "request_id": r.request_id, "old_baseline_cost_usd": r.baseline_cost_usd,
                 "new_baseline_cost_usd": cost, "old_price_id": r.baseline_price_id,
                 "new_price_id": price_id}
                for r, cost, price_id in baseline_changes
            ],
        )  # fmt: skip
    if request_updates:
        conn.execute(
            text(
                "update requests set cost_usd = :cost, unpriced_attempts = :unpriced, "
                "is_unpriced = :unpriced > 0, baseline_cost_usd = :baseline, "
                "baseline_price_id = :baseline_price_id "
                "where project_id = :project_id and ts = :b_ts and request_id = :b_id"
            ),
            [{**u, "project_id": project_id} for u in request_updates],
        )


def _candidates(conn: Connection, *, project_id: int, where: str, params: dict, after) -> list:
    return conn.execute(
        text(
            f"""
            select ts, request_id, cost_usd, unpriced_attempts, baseline_cost_usd,
                   baseline_price_id
            from requests r where project_id = :project_id and {where}
              and (ts, request_id) > (:after_ts, :after_id)
            order by ts, request_id limit :limit
            """
        ),
        {
            "project_id": project_id,
            "after_ts": after[0],
            "after_id": after[1],
            "limit": REQUESTS_PER_TRANSACTION,
            **params,
        },
    ).all()


def _run(
    engine: Engine, *, project_id: int, where: str, params: dict, model, audit: dict
) -> Change:
    """Goes through the matching requests of a project in key order, a batch a transaction,
    under one audit record."""
    run = Audit(audit)
    total = Change(0, 0, Decimal(0), Decimal(0))
    after = (datetime(1900, 1, 1, tzinfo=UTC), "00000000-0000-0000-0000-000000000000")
    while True:
        with engine.begin() as conn:
            lock_project(conn, job=REPRICE_JOB, project_id=project_id)
            batch = _candidates(
                conn, project_id=project_id, where=where, params=params, after=after
            )
            if not batch:
                return total
            project = load_project_context(conn, project_id=project_id)
            change = reprice_requests(conn, project=project, requests=batch, model=model, audit=run)
        after = (batch[-1].ts, str(batch[-1].request_id))
        total = Change(
            total.attempts + change.attempts,
            total.requests + change.requests,
            MONEY_CONTEXT.add(total.cost_before, change.cost_before),
            MONEY_CONTEXT.add(total.cost_after, change.cost_after),
            total.baselines + change.baselines,
        )


def run_reprice(engine: Engine) -> RepriceRun:
    """Prices the unpriced requests (and missing baselines) of every project that now can be."""
    with engine.connect() as conn:
        projects = conn.execute(
            text(
                """
                select p.id, p.baseline_model is not null as has_baseline
                from projects p
                where p.id in (select project_id from requests
                               where is_unpriced or baseline_cost_usd is null)
                order by 1
                """
            )
        ).all()
    changes = [
        _run(
            engine,
            project_id=project.id,
            # A project without a baseline model has no baseline cost to find: its requests
            # would be read again every run for nothing.
            where="(is_unpriced or baseline_cost_usd is null)"
            if project.has_baseline
            else "is_unpriced",
            params={},
            model=None,
            audit={"kind": "unpriced"},
        )
        for project in projects
    ]
    return RepriceRun(
        repricings=sum(1 for c in changes if c.requests or c.attempts),
        attempts_changed=sum(c.attempts for c in changes),
        requests_changed=sum(c.requests for c in changes),
    )


def correct_prices(
    engine: Engine,
    *,
    project_id: int,
    model: str,
    start: datetime,
    end: datetime,
    reason: str | None = None,
) -> Change:
    """Prices a model's attempts in [start, end) again with the prices now stored."""
    return _run(
        engine,
        project_id=project_id,
        where="ts >= :start and ts < :end",
        params={"start": start, "end": end},
        model=model,
        audit={"kind": "correction", "model": model, "range_start": start,
               "range_end": end, "reason": reason},
    )  # fmt: skip
