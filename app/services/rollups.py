"""Rollups: the tables every metric reads, recomputed hour by hour and day by day from raw
rows.

New requests are added to their hours' rollups: ingest appends their keys to rollup_pending
in the transaction that stores them (`record_pending`); the job, under the day's lock, lists
the pending rows it can see, adds those requests' figures to the hourly rows of their groups
and deletes those rows, by id, in one transaction (`take_pending`). A pending row is visible
exactly when its requests are, whatever order the transactions commit in (which ids or
timestamps would not tell), and is taken once: each request is added once, and a run costs
what was written since the last one, not the hours it falls in (which under a steady load is
the whole current hour so far).

An hour is "dirty" when rows it was computed from changed (feedback arrived, a re-pricing,
or rows written by SQL outside ingest): whoever writes them appends a mark of their hours
(`mark_written`) in the same transaction; the job moves the marks it can see into
dirty_hours, then recomputes each dirty hour of a project whole, from raw rows: delete its
rollup rows, insert them again, leaving out the requests still pending (they are added when
taken). Recomputing whole hours makes those runs idempotent, and makes late feedback re-roll
only the hours it touches.

Each hourly table has a daily twin, the same rows by UTC day, so that long periods read a row
per day instead of 24. A re-rolled hour marks its day; a marked day is folded again once it
is over. Metrics read a day from the daily tables only when it is not marked (see
app.services.metrics.coverage), so the two tiers never disagree. The tables by customer and
route keep days only (by the hour the customer makes about a row per request): their days
are computed from raw rows, and metrics of one customer read its other hours from the raw
rows too. By customer alone, and by customer and served tier, the tables are hourly.

The work is split into one day of one project per transaction (so a large backlog is not one
huge transaction), rolled on several connections at once. An advisory lock per day keeps two
transactions off the same day (one re-rolling an hour of it, the other folding it, say), and
another lock serialises finding dirty hours, so two workers at once give the same result as
one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from uuid import UUID as UUIDValue

from sqlalchemy import BigInteger, Connection, Engine, TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import DateTime

from app.periods import BIN_ORIGIN_SQL, DAY, HOUR, floor_day, floor_hour, utc_now
from app.rollup_figures import (
    ATTEMPT_FIGURES,
    CUSTOMER_FIGURES,
    FLOW_FIGURES,
    LATENCY_FIGURES,
    QUALITY_FIGURES,
    REQUEST_FIGURES,
    Figure,
)
from app.settings import get_settings
from app.vocabulary import SERVED_STATUS

ROLLUP_JOB = "rollup"
# Days whose hourly rollups changed, to be folded into the daily tables once they are over.
ROLLUP_DAILY_JOB = "rollup_daily"
MARGINS_JOB = "margins"

# Latency buckets: bucket 0 is [0, 1 ms), bucket k is [2^((k-1)/4), 2^(k/4)) ms, the last one
# is everything from 2^20 ms (about 17 minutes) up: quarter-octaves, at most 19% wide.
LATENCY_BOUNDS_MS = tuple(2 ** (k / 4) for k in range(81))

_HOURS = bindparam("hours", type_=ARRAY(DateTime(timezone=True)))


def lock_project(conn: Connection, *, job: str, project_id: int) -> None:
    """Waits until no other transaction works on this job for this project."""
    conn.execute(
        text("select pg_advisory_xact_lock(hashtext(:job), :project_id)"),
        {"job": f"routeledger.{job}", "project_id": project_id},
    )


def lock_day(conn: Connection, *, project_id: int, day: datetime) -> None:
    """Waits until no other transaction rolls up this day of the project: re-rolls one of its
    hours, or folds it."""
    conn.execute(
        text("select pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"routeledger.{ROLLUP_JOB}.{project_id}.{day.isoformat()}"},
    )


def mark_dirty(conn: Connection, *, job: str, project_id: int, hours: Iterable[datetime]) -> None:
    """Marks hours dirty for `job` at once, for a transaction that holds the lock under
    which `job` takes them (the day's, for the daily fold). Without it, use mark_written: an
    hour already dirty gains nothing here, and `job` may take it, and work from rows as they
    were before this transaction commits."""
    _insert_hours(conn, "dirty_hours", job=job, project_id=project_id, hours=hours)


def mark_written(conn: Connection, *, job: str, project_id: int, hours: Iterable[datetime]) -> None:
    """Marks the hours of rows this transaction writes, for `job` to find once they commit.
    An append: it never waits on the job (dirty_hours' unique key would)."""
    _insert_hours(conn, "dirty_marks", job=job, project_id=project_id, hours=hours)


def _insert_hours(
    conn: Connection, table: str, *, job: str, project_id: int, hours: Iterable[datetime]
) -> None:
    hours = sorted({floor_hour(h) for h in hours})
    if hours:
        conflict = " on conflict do nothing" if table == "dirty_hours" else ""
        conn.execute(
            text(
                f"insert into {table} (job, project_id, hour) "
                f"select :job, :project_id, h from unnest(:hours) as h{conflict}"
            ).bindparams(_HOURS),
            {"job": job, "project_id": project_id, "hours": hours},
        )


def collect_dirty_hours(conn: Connection, *, job: str) -> None:
    """Moves the marks of committed writes for `job` into its dirty hours (a mark committed
    meanwhile stays for the next run)."""
    conn.execute(
        text(
            """
            with taken as (delete from dirty_marks where job = :job returning project_id, hour)
            insert into dirty_hours (job, project_id, hour)
            select distinct :job, project_id, hour from taken
            on conflict do nothing
            """
        ),
        {"job": job},
    )


def take_dirty_hours(
    conn: Connection,
    *,
    job: str,
    project_id: int,
    limit: int | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
) -> list[datetime]:
    """Removes and returns a project's dirty hours of a job (up to `limit`, in [`since`,
    `before`) when given); the caller holds the locks that keep other transactions off
    them, and a rollback puts them back."""
    rows = conn.execute(
        text(
            """
            delete from dirty_hours
            where job = :job and project_id = :project_id and hour in (
                select hour from dirty_hours
                where job = :job and project_id = :project_id
                  and (cast(:since as timestamptz) is null or hour >= :since)
                  and (cast(:before as timestamptz) is null or hour < :before)
                order by hour limit :limit
            ) returning hour
            """
        ),
        {"job": job, "project_id": project_id, "limit": limit, "since": since, "before": before},
    )
    return sorted(row.hour for row in rows)


def dirty_projects(conn: Connection, *, job: str) -> list[int]:
    rows = conn.execute(
        text("select distinct project_id from dirty_hours where job = :job order by 1"),
        {"job": job},
    )
    return [row.project_id for row in rows]


_ROUTING = ("intended_tier", "served_tier", "served_model", "experiment_name", "experiment_arm")
_EXPERIMENT = ("experiment_name", "experiment_arm")


@dataclass(frozen=True)
class Grain:
    """A rollup bin size: the tables' name suffix, their bin column, the bin's width."""

    suffix: str
    column: str
    width: timedelta

    def bin_of(self, column: str) -> str:
        """SQL: the start of the bin holding the timestamp `column`."""
        width = f"interval '{int(self.width.total_seconds())} seconds'"
        return f"date_bin({width}, {column}, {BIN_ORIGIN_SQL})"


HOURLY = Grain("hourly", "hour", HOUR)
DAILY = Grain("daily", "day", DAY)


@dataclass(frozen=True)
class RollupTable:
    """A rollup table of requests (or of their attempts, `of_attempts`), binned at each of
    its `grains` (`{name}_hourly` by `hour`, `{name}_daily` by `day`): what it groups by,
    what it sums, and whether it keeps a latency histogram. A grain the table does not keep
    is computed from the raw rows when read (see `raw_select`).

    A dimension is the raw rows' column of its name, or the SQL of `derived[name]`; `joins`
    adds rows beside each raw row of requests (SQL after its FROM, where `{attempts_table}`
    stands for the attempts read and `{attempts}` for the condition on attempts `a` that
    picks the attempts of the rows read), and `only` keeps the raw rows that pass it. A
    table `folded_from` another computes its bins from that table's rows of the same bins
    rather than from raw rows (its daily rows, when it keeps hours, from its own hourly
    rows): far fewer rows to read, when its dimensions are some of the other's."""

    name: str
    dimensions: tuple[str, ...]
    figures: tuple[Figure, ...]
    histogram: bool = False
    of_attempts: bool = False
    grains: tuple[Grain, ...] = (HOURLY, DAILY)
    derived: Mapping[str, str] = field(default_factory=dict)
    joins: str = ""
    only: str | None = None
    folded_from: RollupTable | None = None

    def at(self, grain: Grain) -> str:
        """The table of this grain."""
        return f"{self.name}_{grain.suffix}"

    @property
    def hourly(self) -> str:
        return self.at(HOURLY)

    @property
    def raw_alias(self) -> str:
        """How SQL here names the raw rows this table counts: requests `r`, attempts `a`."""
        return "a" if self.of_attempts else "r"

    @property
    def figures_only(self) -> RollupTable:
        """The table read without its latency histogram: computed from raw rows, a
        histogram costs a grouping of its own per row."""
        return replace(self, histogram=False)

    @property
    def insert_order(self) -> str | None:
        """The column this table's rows are inserted in the order of: one customer's rows of
        a bin side by side, on a few pages, as metrics of one customer read them (through
        the customer index: 3 times faster from memory than rows spread over a page each,
        20 times from disk)."""
        return "customer_id" if "customer_id" in self.dimensions else None

    @property
    def columns(self) -> tuple[str, ...]:
        histogram = ("latency_buckets", "latency_counts") if self.histogram else ()
        return (*self.dimensions, *(figure.name for figure in self.figures), *histogram)


# Requests by feature, customer and route, and attempts by model with the same keys: what
# metrics of one customer read. By the hour the customer makes about a row per request, so
# these keep whole days only; the other hours of a customer are read from raw rows.
REQUESTS = RollupTable(
    "rollup", ("feature", "customer_id", *_ROUTING), REQUEST_FIGURES, histogram=True,
    grains=(DAILY,),
)  # fmt: skip
ATTEMPTS = RollupTable(
    "rollup_models", ("feature", "customer_id", *_EXPERIMENT, "model", "tier"),
    ATTEMPT_FIGURES, of_attempts=True, grains=(DAILY,),
)  # fmt: skip
# The same without the customer (what metrics read when no customer is asked for), and the
# customers' own figures (customer metrics, margins), hourly and daily.
ROUTING = RollupTable("rollup_routing", ("feature", *_ROUTING), REQUEST_FIGURES, True)
ROUTING_ATTEMPTS = RollupTable(
    "rollup_routing_models", ("feature", *_EXPERIMENT, "model", "tier"), ATTEMPT_FIGURES,
    of_attempts=True,
)  # fmt: skip
# Per customer and served tier, hourly and daily: what the Customer page draws over time
# (cost, revenue and served tiers in 3-hour points, where the customer rollups by route keep
# whole days only). A few rows per customer and hour; the customers' own figures are folded
# from them, so the raw rows are grouped once for both.
CUSTOMER_TIERS = RollupTable(
    "rollup_customer_tiers", ("customer_id", "served_tier"), CUSTOMER_FIGURES
)
CUSTOMERS = RollupTable(
    "rollup_customers", ("customer_id",), CUSTOMER_FIGURES, folded_from=CUSTOMER_TIERS
)

# Routing advice and router calibration (issue 15). The flow of requests by feature and task
# type from the intended tier through the first attempt's model to the served route, with
# the served attempt's tokens and the router's confidence in CONFIDENCE_BINS equal bins on
# [0, 1] (bin k holds [k/10, (k+1)/10), the last one 1 too); and the scored requests by route
# and score, to the hundredth. The first and the served attempt (the last whose status is
# ok) come from the attempts of the same rows (attempts carry their request's timestamp and
# keys), hashed: four times faster than looking each request's attempts up by key.
CONFIDENCE_BINS = 10
_FIRST_AND_SERVED = f"""
    join (
        select a.ts, a.request_id, a.model from {{attempts_table}} a
        where {{attempts}} and a.position = 0
    ) f on f.ts = r.ts and f.request_id = r.request_id
    left join (
        select distinct on (a.ts, a.request_id) a.ts, a.request_id, a.position, a.input_tokens,
               a.output_tokens, a.cache_read_tokens, a.cache_write_tokens
        from {{attempts_table}} a where {{attempts}} and a.status = '{SERVED_STATUS}'
        order by a.ts, a.request_id, a.position desc
    ) s on s.ts = r.ts and s.request_id = r.request_id
"""
# numeric, not float: 0.7 is in bin 7 and a score of 0.29 passes at 0.29, exactly.
FLOW = RollupTable(
    "rollup_flow",
    ("feature", "task_type", "intended_tier", "first_model", "served_tier", "served_model",
     "served_provider", "confidence_bin"),
    FLOW_FIGURES,
    derived={
        "first_model": "f.model",
        # (Not least(): it would put a request without a confidence in the last bin.)
        "confidence_bin": f"(case when r.router_confidence >= 1 then {CONFIDENCE_BINS - 1} "
                          f"else floor(r.router_confidence::numeric * {CONFIDENCE_BINS}) end)"
                          "::smallint",
    },
    joins=_FIRST_AND_SERVED,
)  # fmt: skip
QUALITY = RollupTable(
    "rollup_quality",
    ("feature", "task_type", "served_tier", "served_model", "served_provider", "quality_pct"),
    QUALITY_FIGURES,
    derived={"quality_pct": "floor(r.quality_score::numeric * 100)::smallint"},
    only="r.quality_score is not null and not r.is_failed",
)
# Latency histograms by feature and arm, and per customer by day: what the latency
# percentiles of metrics read. The routing rollups keep histograms too (per served model, for
# the Models page), but a hundred rows a day with twenty buckets each made the percentiles of
# 90 days the slowest part of a metrics call.
LATENCY = RollupTable(
    "rollup_latency", ("feature", *_EXPERIMENT), LATENCY_FIGURES, histogram=True,
    folded_from=ROUTING,
)  # fmt: skip
CUSTOMER_LATENCY = RollupTable(
    "rollup_customer_latency", ("feature", "customer_id", *_EXPERIMENT), LATENCY_FIGURES,
    histogram=True, grains=(DAILY,), folded_from=REQUESTS,
)  # fmt: skip
# In the order they are computed: a table after the one it is folded from.
ROLLUPS = (
    REQUESTS, ROUTING, ATTEMPTS, ROUTING_ATTEMPTS, CUSTOMER_TIERS, CUSTOMERS, FLOW, QUALITY,
    LATENCY, CUSTOMER_LATENCY,
)  # fmt: skip

_BINS = bindparam("bins", type_=ARRAY(DateTime(timezone=True)))
_BOUNDS_SQL = "cast('{" + ",".join(map(repr, LATENCY_BOUNDS_MS)) + "}' as float8[])"


def raw_rows(table: RollupTable, *, low: str, high: str) -> str:
    """SQL condition: the project's raw rows that `table` counts, with timestamps in
    [`low`, `high`) (SQL expressions)."""
    side = table.raw_alias
    return f"{side}.project_id = :project_id and {side}.ts >= {low} and {side}.ts < {high}"


def raw_select(
    table: RollupTable,
    *,
    bin_sql: str,
    where: str,
    requests: str = "requests",
    attempts: str = "attempts",
) -> str:
    """SQL: `table`'s rows computed from the raw rows that pass `where` (over requests `r`,
    or attempts `a` for an attempts table: they carry their request's keys), binned by the
    SQL expression `bin_sql` (say, a grain's `bin_of` the row's timestamp), as columns
    project_id, bin, then `table.columns`. The raw rows are read from the tables (or WITH
    queries) `requests` and `attempts`."""
    side = table.raw_alias
    keys = [f"{table.derived.get(d, f'{side}.{d}')} as {d}" for d in table.dimensions]
    # The attempts of the requests read pass the same condition: they carry the request's
    # project, timestamp, feature, customer and arm, the only columns it names.
    joins = (
        table.joins.format(attempts_table=attempts, attempts=re.sub(r"\br\.", "a.", where))
        if table.joins
        else ""
    )
    source = (f"{attempts} a" if table.of_attempts else f"{requests} r") + joins
    if table.only:
        where = f"({where}) and ({table.only})"
    group_by = ", ".join(str(i) for i in range(1, len(keys) + 3))
    head = f"{side}.project_id, {bin_sql} as bin, {', '.join(keys)}"
    figures = ", ".join(f"{figure.aggregate} as {figure.name}" for figure in table.figures)
    if not table.histogram:
        return f"select {head}, {figures} from {source} where {where} group by {group_by}"
    # Each group lists its requests' latency buckets, then counts them into a sparse
    # histogram: far cheaper than grouping by the bucket too, which makes a group of every
    # few requests and carries every figure's running sum in each.
    return f"""
        select project_id, bin, {", ".join(table.columns)}
        from (
            select {head}, {figures},
                array_agg(width_bucket(r.latency_ms, {_BOUNDS_SQL})::smallint)
                    filter (where r.latency_ms is not null) as latency_list
            from {source} where {where}
            group by {group_by}
        ) grouped
        cross join lateral (
            select coalesce(array_agg(bucket order by bucket), '{{}}') as latency_buckets,
                coalesce(array_agg(n order by bucket), '{{}}') as latency_counts
            from (
                select bucket, count(*) as n from unnest(latency_list) as bucket group by bucket
            ) counted
        ) histogram
    """


def _roll(table: RollupTable, *, grain: Grain) -> TextClause:
    """Inserts `table`'s rows of the `grain` bins `:bins` computed from raw rows. Hourly rows
    leave out the requests still pending in these hours: the job adds those later (each
    statement sees a request and its pending row committed together, or neither)."""
    side = table.raw_alias
    bin_of_row = grain.bin_of(f"{side}.ts")
    where = f"{raw_rows(table, low=':low', high=':high')} and {bin_of_row} = any(:bins)"
    if grain == HOURLY:
        where += f"""
            and not exists (
                select from rollup_pending p, unnest(p.ts, p.request_ids) as k(ts, request_id)
                where p.project_id = :project_id and p.hour = any(:bins)
                  and k.ts = {side}.ts and k.request_id = {side}.request_id
            )"""
    return _insert(table, grain=grain, rows=raw_select(table, bin_sql=bin_of_row, where=where))


def _insert(table: RollupTable, *, grain: Grain, rows: str, ctes: str = "") -> TextClause:
    """Inserts the rows of the select `rows` (project_id, the bin, then `table.columns`)
    into `table` at `grain`, in its insert order; `ctes` are WITH queries `rows` reads."""
    columns = ", ".join(table.columns)
    insert = f"insert into {table.at(grain)} (project_id, {grain.column}, {columns})"
    if table.insert_order is None:
        return text(f"with {ctes} {insert} {rows}" if ctes else f"{insert} {rows}").bindparams(
            _BINS
        )
    # Computed first, then sorted: an ORDER BY beside the GROUP BY made the planner read the
    # raw rows in that order through an index, one random page at a time (2.6 s for a day
    # of attempts instead of 0.3).
    ctes = f"{ctes}, " if ctes else ""
    return text(
        f"with {ctes}computed as materialized ({rows}) "
        f"{insert} select * from computed order by {table.insert_order}"
    ).bindparams(_BINS)


def _rows_of(table: RollupTable, *, grain: Grain) -> TextClause:
    """Inserts `table`'s rows of the `grain` bins `:bins`: daily ones folded from its hourly
    rows, or the rows of a table it is folded from, or computed from raw rows."""
    if grain == DAILY and HOURLY in table.grains:
        return _fold(table, grain=grain, source=table.hourly, source_bin=HOURLY.column)
    if table.folded_from is not None:
        assert grain in table.folded_from.grains, f"{table.name} folds {grain.suffix} rows"
        return _fold(
            table, grain=grain, source=table.folded_from.at(grain), source_bin=grain.column
        )
    return _roll(table, grain=grain)


def _fold(table: RollupTable, *, grain: Grain, source: str, source_bin: str) -> TextClause:
    """`table`'s rows of the bins `:bins` of `grain`, folded from the rows of the table
    `source` (binned by its column `source_bin`, at `grain` or finer)."""
    bin_of_source = grain.bin_of(source_bin)
    where = (
        f"project_id = :project_id and {source_bin} >= :low and {source_bin} < :high "
        f"and {bin_of_source} = any(:bins)"
    )
    rows = _summed(table, source=source, bin_sql=bin_of_source, where=where)
    return _insert(table, grain=grain, rows=rows)


def _summed(table: RollupTable, *, source: str, bin_sql: str, where: str) -> str:
    """SQL: `table`'s rows summed from the rows of `source` (project_id and `table.columns`)
    that pass `where`, binned by the SQL `bin_sql` over them. A histogram is merged bucket by
    bucket, each source row's other figures counted once (with its first bucket)."""
    dimensions = ", ".join(table.dimensions)
    sums = ", ".join(f"sum({figure.name})" for figure in table.figures)
    if not table.histogram:
        return f"""
            select project_id, {bin_sql} as bin, {dimensions}, {sums}
            from {source} where {where}
            group by project_id, bin, {dimensions}
        """
    first_bucket_only = ", ".join(
        f"sum({figure.name}) filter (where coalesce(h.k, 1) = 1) as {figure.name}"
        for figure in table.figures
    )
    return f"""
        select project_id, bin, {dimensions}, {sums},
            coalesce(array_agg(bucket order by bucket) filter (where bucket is not null), '{{}}'),
            coalesce(array_agg(latency_count order by bucket) filter (where bucket is not null),
                     '{{}}')
        from (
            select project_id, {bin_sql} as bin, {dimensions}, h.bucket,
                sum(h.n) as latency_count, {first_bucket_only}
            from {source}
            left join lateral unnest(latency_buckets, latency_counts) with ordinality
                as h(bucket, n, k) on true
            where {where}
            group by project_id, bin, {dimensions}, h.bucket
        ) by_bucket
        group by project_id, bin, {dimensions}
    """


_PENDING = bindparam("pending", type_=ARRAY(BigInteger))


def _pending_rows(raw: str, alias: str) -> str:
    """SQL: the rows of the raw table `raw` of the requests of the rows `:pending` (ids) of
    rollup_pending, each request's looked up by its key (a lateral subquery, which the
    planner cannot turn into a scan of the hour)."""
    return f"""
        select {alias}.* from rollup_pending p
        cross join lateral unnest(p.ts, p.request_ids) as k(ts, request_id)
        cross join lateral (
            select * from {raw} {alias}
            where {alias}.project_id = :project_id
              and {alias}.ts = k.ts and {alias}.request_id = k.request_id
            offset 0
        ) {alias}
        where p.project_id = :project_id and p.id = any(:pending)
    """


def _add(table: RollupTable) -> TextClause:
    """Adds to `table`'s hourly rows of the hours `:bins` the figures of the requests of the
    rows `:pending` of rollup_pending: their rows are computed from raw rows, then each is
    summed with the row of its group, if there is one, into a new row."""
    side = table.raw_alias
    bin_of_row = HOURLY.bin_of(f"{side}.ts")
    added = raw_select(
        table,
        bin_sql=bin_of_row,
        where=f"{side}.project_id = :project_id",
        requests="pending_requests",
        attempts="pending_attempts",
    )
    # A group is its hour and dimensions; as text, where NULL and '' differ, so that both
    # sides hash.
    group = ", ".join(table.dimensions)
    columns = ", ".join(table.columns)
    ctes = f"""
        pending_requests as materialized ({_pending_rows("requests", "r")}),
        pending_attempts as materialized ({_pending_rows("attempts", "a")}),
        added as materialized ({added}),
        replaced as (
            delete from {table.hourly} t
            where t.project_id = :project_id and t.hour = any(:bins)
              and row(t.hour, {", ".join(f"t.{d}" for d in table.dimensions)})::text in (
                  select row(bin, {group})::text from added
              )
            returning t.project_id, t.hour as bin, {", ".join(f"t.{c}" for c in table.columns)}
        ),
        summed as (
            select project_id, bin, {columns} from replaced
            union all select project_id, bin, {columns} from added
        )"""
    rows = _summed(table, source="summed", bin_sql="bin", where="true")
    return _insert(table, grain=HOURLY, rows=rows, ctes=ctes).bindparams(_PENDING)


_HOURLY = tuple(_rows_of(table, grain=HOURLY) for table in ROLLUPS if HOURLY in table.grains)
_ADD_HOURLY = tuple(_add(table) for table in ROLLUPS if HOURLY in table.grains)
_DAILY = tuple(_rows_of(table, grain=DAILY) for table in ROLLUPS)


def _tune_for_rollups(conn: Connection) -> None:
    # Each statement runs once: JIT-compiling one (PostgreSQL does when its estimated cost is
    # high) took up to half a second when it was measured, for nothing.
    conn.execute(text("set local jit = off"))
    conn.execute(text("set local plan_cache_mode = force_custom_plan"))
    # Room to group in memory: the default 4 MB sends these sorts to disk.
    conn.execute(text("set local work_mem = '64MB'"))
    # Hash the groups rather than sort the rows: with no statistics yet on fresh rows the
    # planner would sort hundreds of thousands of rows by eight keys, twice.
    conn.execute(text("set local enable_sort = off"))
    # The flow joins each request to its attempts: on fresh rows the planner took a nested
    # loop over the day's requests and attempts, minutes for what a hash join does in a second.
    conn.execute(text("set local enable_nestloop = off"))


def _replace(
    conn: Connection, *, grain: Grain, statements, project_id: int, bins: list[datetime]
) -> None:
    """Deletes the rollup rows of these bins of one grain and runs the statements that
    insert them again."""
    params = {"project_id": project_id, "bins": bins, "low": min(bins),
              "high": max(bins) + grain.width}  # fmt: skip
    _tune_for_rollups(conn)
    for table in (table for table in ROLLUPS if grain in table.grains):
        conn.execute(
            text(
                f"delete from {table.at(grain)} "
                f"where project_id = :project_id and {grain.column} = any(:bins)"
            ).bindparams(_BINS),
            params,
        )
    for statement in statements:
        conn.execute(statement, params)


def reroll_hours(conn: Connection, *, project_id: int, hours: list[datetime]) -> None:
    """Recomputes the hourly rollups of these hours of a project from raw rows (but the
    requests still pending), and marks their days for the daily fold and for the margins."""
    _replace(conn, grain=HOURLY, statements=_HOURLY, project_id=project_id, bins=hours)
    _mark_rolled(conn, project_id=project_id, hours=hours)


def _mark_rolled(conn: Connection, *, project_id: int, hours: Iterable[datetime]) -> None:
    """Marks hours whose hourly rollups changed, and their days, for the margins and the
    daily fold."""
    hours = list(hours)
    # The margins job takes its hours under a lock of its own: it finds these marks once
    # this transaction commits (see mark_written). The daily fold takes them under the day's
    # lock, held here: it may find them dirty at once.
    mark_written(conn, job=MARGINS_JOB, project_id=project_id, hours=hours)
    mark_dirty(conn, job=ROLLUP_DAILY_JOB, project_id=project_id, hours=map(floor_day, hours))


def record_pending(cursor, *, project_id: int, keys: Sequence[tuple[datetime, UUIDValue]]) -> None:
    """Appends the keys (timestamp, request_id) of requests this transaction stores, for the
    rollup job to add to their hours once they commit (one row per hour). `cursor` is the
    driver's (psycopg) cursor, with lists dumped as binary arrays."""
    cursor.execute(
        "insert into rollup_pending (project_id, hour, ts, request_ids) "
        f"select %s, {HOURLY.bin_of('k.ts')}, array_agg(k.ts), array_agg(k.request_id) "
        "from unnest(%s::timestamptz[], %s::uuid[]) as k(ts, request_id) group by 2",
        (project_id, [ts for ts, _ in keys], [request_id for _, request_id in keys]),
        binary=True,
    )


# Pending requests of an hour beyond which the job re-rolls the hour whole instead of adding
# them (a backlog, say after the worker was down): whole, a request costs a few times less,
# and the keys of a run's additions stay a few megabytes in memory.
ADD_AT_MOST = 100_000


@dataclass(frozen=True)
class Taken:
    """The hours whose pending requests were added, and those to re-roll whole."""

    added: list[datetime]
    whole: list[datetime]


def take_pending(
    conn: Connection, *, project_id: int, day: datetime, at_most: int = ADD_AT_MOST
) -> Taken:
    """Takes the pending requests of a (UTC) day of a project that this transaction can see
    and adds them to their hours' rollups (marked as `reroll_hours` marks its hours), up to
    `at_most` at a time; an hour with more is returned, for the caller to re-roll whole in
    this transaction. The caller holds the day's lock (which keeps every other taker off
    these rows); a rollback puts the requests back."""
    pending = conn.execute(
        text(
            "select id, hour, cardinality(request_ids) as n from rollup_pending "
            "where project_id = :project_id and hour >= :day and hour < :next_day "
            "order by hour, id"
        ),
        {"project_id": project_id, "day": day, "next_day": day + DAY},
    ).all()
    by_hour: dict[datetime, list] = {}
    for row in pending:
        by_hour.setdefault(row.hour, []).append(row)
    whole = [hour for hour, rows in by_hour.items() if sum(r.n for r in rows) > at_most]
    _delete_pending(conn, project_id=project_id, ids=[r.id for h in whole for r in by_hour[h]])
    # The other hours in runs of at most `at_most` requests.
    runs: list[list] = []
    size = at_most
    for rows in by_hour.values():
        n = sum(r.n for r in rows)
        if n <= at_most:
            if size + n > at_most:
                runs.append([])
                size = 0
            runs[-1].extend(rows)
            size += n
    added: list[datetime] = []
    if runs:
        _tune_for_rollups(conn)  # local to the transaction: once serves every run
    for run in runs:
        hours = sorted({row.hour for row in run})
        ids = [row.id for row in run]
        params = {"project_id": project_id, "bins": hours, "pending": ids}
        for statement in _ADD_HOURLY:
            conn.execute(statement, params)
        _delete_pending(conn, project_id=project_id, ids=ids)
        _mark_rolled(conn, project_id=project_id, hours=hours)
        added += hours
    return Taken(added=added, whole=whole)


def _delete_pending(conn: Connection, *, project_id: int, ids: list[int]) -> None:
    if ids:
        conn.execute(
            text(
                "delete from rollup_pending where project_id = :project_id and id = any(:pending)"
            ).bindparams(_PENDING),
            {"project_id": project_id, "pending": ids},
        )


def fold_days(conn: Connection, *, project_id: int, days: list[datetime]) -> None:
    """Recomputes the daily rollups of these (whole, UTC) days: from their hourly rows, or
    from raw rows for the tables without hourly rows."""
    _replace(conn, grain=DAILY, statements=_DAILY, project_id=project_id, bins=days)


@dataclass(frozen=True)
class RollupRun:
    projects: int
    hours: int  # re-rolled whole
    days: int
    hours_added: int  # hours that pending requests were added to


def drain_dirty_hours(
    engine: Engine,
    *,
    job: str,
    limit: int,
    work: Callable[[Connection, int, list[datetime]], None],
) -> tuple[int, int]:
    """Hands every project's dirty hours of a job to `work`, up to `limit` at a time, each
    batch in one transaction under the project's lock for the job; a failure puts the batch
    back. Returns how many projects and hours were done."""
    with engine.connect() as conn:
        projects = dirty_projects(conn, job=job)
    hours_done = 0
    for project_id in projects:
        while True:
            with engine.begin() as conn:
                lock_project(conn, job=job, project_id=project_id)
                hours = take_dirty_hours(conn, job=job, project_id=project_id, limit=limit)
                if not hours:
                    break
                work(conn, project_id, hours)
            hours_done += len(hours)
    return len(projects), hours_done


def drain_by_day(
    engine: Engine,
    *,
    job: str,
    work: Callable[[Connection, int, datetime, list[datetime]], None],
    connections: int,
    before: datetime | None = None,
    pending: bool = False,
) -> tuple[int, int]:
    """Hands the dirty hours of a job (those before `before`, when given) to `work`, one day
    of one project at a time, each in one transaction holding the day's lock, on up to
    `connections` connections at once (the database works on each with one CPU core); with
    `pending`, the days holding pending requests too, even without dirty hours. A failure
    puts its day back, lets the others finish, and is raised. Returns how many projects and
    hours were done."""
    days = f"""
        select distinct project_id, {DAILY.bin_of("hour")} as day from dirty_hours
        where job = :job and (cast(:before as timestamptz) is null or hour < :before)
    """
    if pending:
        days += f" union select distinct project_id, {DAILY.bin_of('hour')} from rollup_pending"
    with engine.connect() as conn:
        batches = conn.execute(text(f"{days} order by 1, 2"), {"job": job, "before": before}).all()

    def roll(project_id: int, day: datetime) -> int:
        with engine.begin() as conn:
            lock_day(conn, project_id=project_id, day=day)
            hours = take_dirty_hours(
                conn, job=job, project_id=project_id, since=day, before=day + DAY
            )
            if hours or pending:
                work(conn, project_id, day, hours)
        return len(hours)

    with ThreadPoolExecutor(max_workers=max(1, connections)) as pool:
        futures = [pool.submit(roll, batch.project_id, batch.day) for batch in batches]
        wait(futures)
    projects = {batch.project_id for batch in batches}
    return len(projects), sum(future.result() for future in futures)


def run_rollup(
    engine: Engine, *, now: datetime | None = None, connections: int | None = None
) -> RollupRun:
    """Rolls up everything committed so far: the pending requests and the dirty hours, then
    the days that are over at `now` (default: the service's clock) and whose hours changed,
    on up to `connections` connections at once (default: the ROUTELEDGER_ROLLUP_CONNECTIONS
    setting)."""
    connections = connections or get_settings().routeledger_rollup_connections
    now = now or utc_now()
    with engine.begin() as conn:
        collect_dirty_hours(conn, job=ROLLUP_JOB)
    # The current day is folded once it is over: until then metrics read its hours (a day
    # waiting for its fold is read hour by hour).
    today = floor_day(now)
    folded: list[int] = []
    added: list[datetime] = []
    backlog: list[datetime] = []

    def roll_then_fold(
        conn: Connection, project_id: int, day: datetime, hours: list[datetime]
    ) -> None:
        # First, so that a re-rolled hour counts the requests taken here: no longer pending.
        taken = take_pending(conn, project_id=project_id, day=day)
        added.extend(taken.added)
        backlog.extend(taken.whole)
        hours = sorted({*hours, *taken.whole})
        if hours:
            reroll_hours(conn, project_id=project_id, hours=hours)
        # The transaction holds the day's lock, and its rows are still in memory: a day that
        # is over is folded now rather than read again later.
        if day < today and take_dirty_hours(
            conn, job=ROLLUP_DAILY_JOB, project_id=project_id, since=day, before=day + DAY
        ):
            fold_days(conn, project_id=project_id, days=[day])
            folded.append(1)

    projects, hours = drain_by_day(
        engine, job=ROLLUP_JOB, work=roll_then_fold, connections=connections, pending=True
    )
    # Then the days marked otherwise: a day that has ended since its hours were rolled.
    _, days = drain_by_day(
        engine,
        job=ROLLUP_DAILY_JOB,
        work=lambda conn, project_id, _day, days: fold_days(conn, project_id=project_id, days=days),
        connections=connections,
        before=today,
    )
    return RollupRun(
        projects=projects,
        hours=hours + len(backlog),
        days=days + len(folded),
        hours_added=len(added),
    )


# --- reading the latency histogram -----------------------------------------------------


def latency_quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The q-quantile of a latency histogram {bucket: count}, interpolated linearly within
    its bucket; None for an empty histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        count = histogram[bucket]
        if count and seen + count >= rank:
            low, high = bucket_bounds(bucket)
            return low + (high - low) * (rank - seen) / count
        seen += count
    return bucket_bounds(max(histogram))[1]


def bucket_bounds(bucket: int) -> tuple[float, float]:
    last = len(LATENCY_BOUNDS_MS)
    if bucket == 0:
        return 0.0, LATENCY_BOUNDS_MS[0]
    if bucket >= last:
        return LATENCY_BOUNDS_MS[-1], LATENCY_BOUNDS_MS[-1]
    return LATENCY_BOUNDS_MS[bucket - 1], LATENCY_BOUNDS_MS[bucket]
