"""What can be checked here, without Citus, of running RouteLedger on it (docs/citus.md): each
table has a place (app.distribution); the keys of the distributed tables include project_id;
and every statement the service runs for one project reads and writes the distributed tables
of that project only, so Citus routes it to the one node that holds the project."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
import sqlglot
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlglot import exp

from app.distribution import DISTRIBUTED, DISTRIBUTION_COLUMN, LOCAL, REFERENCE
from app.main import app
from app.periods import Period, floor_day, floor_hour, utc_now
from app.services import calibration, dashboard_queries
from app.services.jobs import run_job
from app.services.reprice import correct_prices
from tests import otlp_spans
from tests.helpers import attempt, auth, make_project
from tests.helpers import event as routed_event

# --- (a) the layout -----------------------------------------------------------------------

_TABLES = """
    select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
"""
# Each primary key, unique constraint and unique index (partitioned tables' own included),
# with the names of its key columns (an expression's columns count too).
_UNIQUE_KEYS = """
    select c.relname as table_name, i.relname as key_name,
        array(select a.attname from pg_attribute a
              where a.attrelid = c.oid
                and (a.attnum = any(x.indkey)
                     or pg_get_expr(x.indexprs, c.oid) ~ ('\\m' || a.attname || '\\M'))
        )::text[] as columns
    from pg_index x
    join pg_class c on c.oid = x.indrelid
    join pg_class i on i.oid = x.indexrelid
    join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and x.indisunique and not c.relispartition
"""
_FOREIGN_KEYS = """
    select con.conname, c.relname as table_name, r.relname as referenced,
        -- In the key's own order, so that the two arrays pair each column with its target.
        array(select a.attname from unnest(con.conkey) with ordinality as k(attnum, n)
              join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum
              order by k.n)::text[] as columns,
        array(select a.attname from unnest(con.confkey) with ordinality as k(attnum, n)
              join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.attnum
              order by k.n)::text[] as referred
    from pg_constraint con
    join pg_class c on c.oid = con.conrelid
    join pg_class r on r.oid = con.confrelid
    where con.contype = 'f' and not c.relispartition
"""


def test_every_table_has_one_place(engine):
    with engine.connect() as conn:
        tables = set(conn.execute(text(_TABLES)).scalars())
    places = (DISTRIBUTED, REFERENCE, LOCAL)
    assert not (DISTRIBUTED & REFERENCE or DISTRIBUTED & LOCAL or REFERENCE & LOCAL)
    unplaced = tables - set().union(*places)
    assert not unplaced, f"say in app/distribution.py where these tables go: {sorted(unplaced)}"
    assert not set().union(*places) - tables, "app/distribution.py names tables that are gone"


def test_keys_of_distributed_tables_include_project_id(engine):
    with engine.connect() as conn:
        keys = conn.execute(text(_UNIQUE_KEYS)).all()
    without = [
        f"{key.table_name}.{key.key_name}"
        for key in keys
        if key.table_name in DISTRIBUTED and DISTRIBUTION_COLUMN not in key.columns
    ]
    assert not without, f"unique keys Citus cannot enforce per node: {without}"


def test_foreign_keys_stay_on_one_node(engine):
    """Between distributed tables a foreign key pairs project_id with project_id; otherwise it
    points at a reference table (present on every node), or goes between local tables."""
    with engine.connect() as conn:
        foreign_keys = conn.execute(text(_FOREIGN_KEYS)).all()
    wrong = []
    for fk in foreign_keys:
        if fk.referenced in REFERENCE:
            ok = True
        elif fk.table_name in DISTRIBUTED and fk.referenced in DISTRIBUTED:
            ok = (DISTRIBUTION_COLUMN, DISTRIBUTION_COLUMN) in zip(
                fk.columns, fk.referred, strict=True
            )
        else:
            ok = fk.table_name in LOCAL and fk.referenced in LOCAL
        if not ok:
            wrong.append(f"{fk.conname}: {fk.table_name} -> {fk.referenced}")
    assert not wrong, f"foreign keys Citus cannot keep: {wrong}"


# --- (b) the statements of one project ---------------------------------------------------------

# Statements that touch every project by design, each with its reason: the jobs find their
# work across projects, then do it one project at a time (those statements are checked).
# In Citus each of these runs on every node, in parallel.
ACROSS_PROJECTS = {
    r"^with taken as \(delete from dirty_marks where job = ": (
        "rollup, margins: take every project's marks of committed writes"
    ),
    r"^select distinct project_id(, date_bin\(.*\) as day)? from dirty_hours where job = ": (
        "rollup, margins: the projects (and days) with dirty hours (or pending requests)"
    ),
    r"^select distinct project_id from rollup_routing_hourly where hour >= ": (
        "drift: the projects with traffic in the window"
    ),
    r"^SELECT alert_rules.project_id, alert_rules.id FROM alert_rules WHERE alert_rules.enabled": (
        "alerts: the enabled rules of every project"
    ),
    r"^select r.project_id, p.name, array_agg\(distinct x\) as recipients from alert_rules r": (
        "digest: who gets each project's digest"
    ),
    r"^select p.id, p.baseline_model is not null as has_baseline from projects p where p.id in": (
        "reprice: the projects with unpriced requests"
    ),
    r"^select project_id, trace_id from otlp_spans group by project_id, trace_id having": (
        "traces: the traces that went quiet, in every project"
    ),
    r"^delete from otlp_response_ids c where c.claimed_at < ": (
        "traces: response ids an hour old, but for those a held report needs (joined by "
        "project: co-located)"
    ),
    r"^DELETE FROM held_feedback WHERE held_feedback.received_at < ": (
        "feedback: held feedback past its hold time"
    ),
    r"^SELECT DISTINCT held_feedback.project_id, request_keys.request_id, request_keys.ts "
    r"FROM held_feedback JOIN request_keys ON request_keys.project_id = held_feedback.project_id": (
        "feedback: held feedback whose request is stored (joined by project: co-located)"
    ),
    r"^create table if not exists (requests|attempts)_p\d{4}_\d{2} partition of ": (
        "partitions: a month's partitions (Citus makes them on every node)"
    ),
}

_BLOCKS = (exp.Select, exp.Update, exp.Delete)
_CONSTANTS = (exp.Placeholder, exp.Parameter, exp.Literal)
_COPY_IN = re.compile(r"^copy (\w+) \(([^)]*)\) from stdin", re.IGNORECASE)
_COPY_OUT = re.compile(r"^\s*copy \((.*)\) to stdout", re.IGNORECASE | re.DOTALL)


def _block_of(node: exp.Expression) -> exp.Expression | None:
    """The nearest SELECT, UPDATE or DELETE around `node` (not `node` itself)."""
    parent = node.parent
    while parent is not None and not isinstance(parent, _BLOCKS):
        parent = parent.parent
    return parent


def _bare(node: exp.Expression) -> exp.Expression:
    while isinstance(node, (exp.Paren, exp.Cast)):
        node = node.this
    return node


def _terms(condition: exp.Expression) -> Iterator[exp.Expression]:
    condition = _bare(condition)
    if isinstance(condition, exp.And):
        yield from _terms(condition.this)
        yield from _terms(condition.expression)
    else:
        yield condition


def _conjuncts(block: exp.Expression) -> Iterator[exp.Expression]:
    """The conditions that hold for every row of the block: its WHERE's and its joins' ON
    terms joined by AND (one under an OR does not narrow anything)."""
    conditions = [block.args.get("where")] + [j.args.get("on") for j in block.args.get("joins", [])]
    for condition in conditions:
        if condition is not None:
            yield from _terms(condition.this if isinstance(condition, exp.Where) else condition)


def _unconstrained(block: exp.Expression, tables: list[exp.Table], outer: set[str]) -> list[str]:
    """The distributed tables of `block` whose project_id is neither equal to a parameter or
    a literal nor joined to the project_id of a table that is (in the block, or in an
    enclosing block: `outer`). Returns their names; adds the constrained aliases to
    `outer`."""
    aliases = {table.alias_or_name: table.name for table in tables}
    distributed = [alias for alias, name in aliases.items() if name in DISTRIBUTED]

    def source(column: exp.Column) -> str | None:
        if column.table:
            return column.table
        return distributed[0] if len(distributed) == 1 else None

    constrained: set[str] = set()
    pairs: list[tuple[str | None, str | None]] = []
    for term in _conjuncts(block):
        if not isinstance(term, exp.EQ):
            continue
        sides = [_bare(term.this), _bare(term.expression)]
        columns = [s for s in sides if isinstance(s, exp.Column) and s.name == DISTRIBUTION_COLUMN]
        if len(columns) == 2:
            pairs.append((source(columns[0]), source(columns[1])))
        elif len(columns) == 1 and any(isinstance(s, _CONSTANTS) for s in sides):
            constrained.add(source(columns[0]))
    known = constrained | outer
    changed = True
    while changed:
        changed = False
        for left, right in pairs:
            if (left in known) != (right in known):
                known |= {left, right}
                changed = True
    outer |= known & set(distributed)
    return [f"{aliases[alias]} {alias}" for alias in distributed if alias not in known]


def problems_of(sql: str) -> list[str]:
    """Why Citus could not run this statement on the one node of its project (none: it can)."""
    normalized = " ".join(sql.split())
    if not normalized.strip("; ") or any(re.search(p, normalized) for p in ACROSS_PROJECTS):
        return []
    copy_in = _COPY_IN.match(normalized)
    if copy_in:  # each row goes to the node of its own project_id
        table, columns = copy_in.group(1), copy_in.group(2)
        routed = table not in DISTRIBUTED or DISTRIBUTION_COLUMN in columns.replace(" ", "")
        return [] if routed else [f"copy into {table} without {DISTRIBUTION_COLUMN}"]
    copy_out = _COPY_OUT.match(sql)
    if copy_out:  # an export: its query is what runs
        sql = copy_out.group(1)
    sql = re.sub(r"%[bt]\b", "%s", sql)  # psycopg's binary and text placeholders
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except sqlglot.errors.ParseError as error:
        return [f"cannot parse: {error}"]
    tables = [t for t in tree.find_all(exp.Table) if t.name]
    names = {t.name for t in tables}
    found = []
    if names & DISTRIBUTED and names & LOCAL:
        found.append(f"joins coordinator tables {sorted(names & LOCAL)} with distributed ones")
    by_block: dict[int, list[exp.Table]] = {}
    for table in tables:
        block = _block_of(table)
        if block is None:
            target = isinstance(tree, exp.Insert) and table is tree.find(exp.Table)
            if table.name in DISTRIBUTED and not target:
                found.append(f"{table.name} outside a query (DDL?)")
        else:
            by_block.setdefault(id(block), []).append(table)
    # Outer blocks first, so a correlated subquery sees what its enclosing block constrains.
    constrained_outside: dict[int, set[str]] = {}
    for block in tree.find_all(*_BLOCKS, bfs=True):
        enclosing = _block_of(block)
        outer = set(constrained_outside.get(id(enclosing), set()))
        found += [
            f"{where} not narrowed to one project"
            for where in _unconstrained(block, by_block.get(id(block), []), outer)
        ]
        constrained_outside[id(block)] = outer
    return found


def test_the_check_tells_one_project_from_many():
    one = [
        "select * from requests where project_id = %(p)s and ts >= %(low)s",
        "select r.ts from requests r join attempts a on a.project_id = r.project_id"
        " and a.request_id = r.request_id where r.project_id = %s",
        "delete from alerts where project_id = 7 and id in"
        " (select id from alerts where project_id = 7 and state = 'resolved')",
        "select * from requests r where r.project_id = %s and exists"
        " (select 1 from attempts a where a.project_id = r.project_id)",
        "select p.name from projects p where p.id = %s",
        "copy attempts (project_id, ts, request_id) from stdin (format binary)",
    ]
    many = [
        "select count(*) from requests",
        "select * from requests where project_id = %s or customer_id = %s",
        "select a.* from alerts a join alert_rules r on r.id = a.rule_id where a.project_id = %s",
        "update feedback set score = 1 where id = %s",
        "select * from requests where project_id = any(%s)",
        "select * from requests r join rate_limits l on true where r.project_id = 1",
    ]
    assert [sql for sql in one if problems_of(sql)] == []
    assert [sql for sql in many if not problems_of(sql)] == []


class _RecordingCursor(psycopg.Cursor):
    recorded: list[str] | None = None

    def execute(self, query, params=None, **kwargs):
        _record(self, query)
        return super().execute(query, params, **kwargs)

    def executemany(self, query, params_seq, **kwargs):
        _record(self, query)
        return super().executemany(query, params_seq, **kwargs)

    def copy(self, statement, params=None, **kwargs):
        _record(self, statement)
        return super().copy(statement, params, **kwargs)


class _RecordingServerCursor(psycopg.ServerCursor):
    def execute(self, query, params=None, **kwargs):
        _record(self, query)
        return super().execute(query, params, **kwargs)


def _record(cursor, query) -> None:
    if _RecordingCursor.recorded is not None:
        if not isinstance(query, str | bytes):
            query = query.as_string(cursor)
        _RecordingCursor.recorded.append(query.decode() if isinstance(query, bytes) else query)


@contextmanager
def recording(engine) -> Iterator[list[str]]:
    """Every statement sent on the engine's connections meanwhile (the SQLAlchemy ones, and
    those sent on the driver's cursors: COPY, the streamed exports), in order."""

    def record_on(dbapi_connection, _record, _proxy) -> None:
        dbapi_connection.cursor_factory = _RecordingCursor
        dbapi_connection.server_cursor_factory = _RecordingServerCursor

    _RecordingCursor.recorded = []
    event.listen(engine.pool, "checkout", record_on)
    try:
        yield _RecordingCursor.recorded
    finally:
        event.remove(engine.pool, "checkout", record_on)
        _RecordingCursor.recorded = None
        engine.dispose()  # no connection keeps the recording cursors


def _drive_one_project(api: TestClient, engine, project) -> None:
    """A day of one project's traffic through every service that reads or writes it."""
    admin, read, ingest = auth(project.admin_key), auth(project.read_key), auth(project.ingest_key)
    now = floor_hour(utc_now())
    day = floor_day(now) - timedelta(days=1)
    start, end = (day - timedelta(days=1)).isoformat(), (now + timedelta(hours=1)).isoformat()

    def call(method: str, path: str, headers: dict, **kwargs):
        answer = api.request(method, path, headers=headers, **kwargs)
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer

    call("POST", "/v1/prices", admin, json={"prices": [{
        "model": "acme-small", "provider": "acme", "input_per_mtok": "1.00",
        "output_per_mtok": "2.00", "effective_from": "2020-01-01T00:00:00Z"}]})  # fmt: skip
    call("PUT", "/v1/policies/support-chat", admin, json={
        "split": {"cheap": 0.7, "standard": 0.25, "premium": 0.05},
        "effective_from": "2020-01-01T00:00:00Z"})  # fmt: skip
    call("PUT", "/v1/model-tiers/acme-large", admin, json={"tier": "premium"})
    rule = call("POST", "/v1/alert-rules", admin, json={
        "name": "escalations", "metric": "escalation_rate", "scope": {"feature": "support-chat"},
        "window_minutes": 60, "threshold": 0.1, "min_requests": 1, "cooldown_minutes": 60,
        "recipients": ["pm@example.com"]}).json()  # fmt: skip
    call("PATCH", f"/v1/alert-rules/{rule['id']}", admin, json={"threshold": 0.2})

    events = [
        routed_event(
            attempt(status="rejected"), attempt(model="acme-large", tier="premium"),
            timestamp=(day + timedelta(hours=i)).isoformat(), customer_id=f"c{i % 3}",
            task_type="faq", router={"strategy": "rules", "confidence": 0.1 * (i % 10)},
            experiment={"name": "router-v4", "arm": "ab"[i % 2]},
            quality={"score": 0.9, "source": "user"}, revenue_usd="0.01",
        )
        for i in range(30)
    ]  # fmt: skip
    events.append(routed_event(attempt(model="mystery", provider="acme"),
                               timestamp=now.isoformat()))  # fmt: skip
    call("POST", "/v1/requests", ingest, json={"requests": events})
    call("POST", "/v1/feedback", ingest, json={"feedback": [
        {"request_id": events[0]["request_id"], "score": 0.4},
        {"request_id": str(uuid.uuid4()), "score": 0.5}]})  # fmt: skip
    revenue = {"customer_id": "c1", "period_start": start, "period_end": end, "amount_usd": "5"}
    call("POST", "/v1/revenue", admin, json={"records": [revenue]})
    call("POST", "/v1/evals", ingest, json={"results": [
        {"item_id": f"q{i}", "model": model, "tier": tier, "score": 0.8, "feature": "support-chat",
         "task_type": "faq"}
        for i in range(5) for model, tier in (("acme-small", "cheap"), ("acme-large", "premium"))
    ]})  # fmt: skip
    call("PUT", "/v1/quality-floors/support-chat", admin, json={"pass_score": 0.7})
    trace = otlp_spans.new_trace_id()
    spans = otlp_spans.export(
        otlp_spans.call(trace, otlp_spans.new_span_id(), at=now, gen_ai__response__id="r1"),
        otlp_spans.call(trace, otlp_spans.new_span_id(), at=now, model="unmapped-model"),
    )
    protobuf = {**ingest, "Content-Type": "application/x-protobuf"}
    call("POST", "/v1/traces", protobuf, content=spans.SerializeToString())

    for job in ("partitions", "rollup", "margins", "drift", "alerts", "traces", "feedback"):
        run_job(engine, job)
    call("POST", "/v1/prices", admin, json={"prices": [{
        "model": "mystery", "provider": "acme", "input_per_mtok": "3.00",
        "output_per_mtok": "4.00", "effective_from": "2020-01-01T00:00:00Z"}]})  # fmt: skip
    for job in ("reprice", "rollup", "digest", "emails"):
        run_job(engine, job)
    correct_prices(engine, project_id=project.id, model="acme-small",
                   start=day, end=now, reason="negotiated")  # fmt: skip

    period = {"start": start, "end": end}
    for params in ({}, {"feature": "support-chat"}, {"customer_id": "c1"},
                   {"experiment": "router-v4"}):  # fmt: skip
        call("GET", "/v1/metrics/routing", read, params={**period, **params})
    call("GET", "/v1/metrics/customers", read, params=period)
    for granularity in ("day", "month"):
        call("GET", "/v1/exports/customers.csv", read,
             params={**period, "granularity": granularity})  # fmt: skip
    call("GET", "/v1/exports/requests.csv", read, params={**period, "customer_id": "c1"})
    call("GET", "/v1/advice/routing", read, params={"feature": "support-chat"})
    call("GET", "/v1/advice/routing.csv", read, params={"feature": "support-chat"})
    call("POST", "/v1/advice/what-if", read, json={
        "feature": "support-chat", "shares": {"cheap": 0.5, "premium": 0.5}})  # fmt: skip
    for path in ("/v1/alerts", "/v1/alert-rules", "/v1/prices", "/v1/policies/support-chat",
                 "/v1/keys", "/v1/model-tiers", "/v1/quality-floors"):  # fmt: skip
        call("GET", path, admin if path == "/v1/keys" else read)
    call("GET", "/v1/model-tiers", read, params={"unmapped": "true"})
    call("PUT", "/v1/model-tiers/unmapped-model", admin, json={"tier": "cheap"})
    call("DELETE", "/v1/model-tiers/acme-large", admin)
    call("DELETE", f"/v1/alert-rules/{rule['id']}", admin)

    within = Period(floor_day(now) - timedelta(days=2), now + timedelta(hours=1))
    with engine.connect() as conn:
        dashboard_queries.routing_series(conn, project_id=project.id, within=within)
        dashboard_queries.served_model_latency(conn, project_id=project.id, within=within)
        dashboard_queries.filter_values(conn, project_id=project.id, within=within)
        dashboard_queries.experiment_arms(
            conn, project_id=project.id, within=within, experiment="router-v4"
        )
        dashboard_queries.drift_history(conn, project_id=project.id, within=within)
        dashboard_queries.routing_flow(conn, project_id=project.id, within=within)
        calibration.router_calibration(conn, project_id=project.id, within=within)


@pytest.fixture(scope="module")
def statements_of_one_project(engine) -> list[str]:
    make_project()  # a neighbour, so the jobs' statements across projects meet two
    project = make_project()
    with recording(engine) as statements, TestClient(app) as api:
        _drive_one_project(api, engine, project)
    return statements


def test_statements_of_one_project_stay_within_it(statements_of_one_project):
    statements = statements_of_one_project
    normalized = [" ".join(sql.split()) for sql in statements]
    # The workload ran, and the driver's own statements were recorded: ingest's COPY and
    # the streamed requests export.
    assert len(normalized) > 200
    assert any(sql.startswith("copy requests (") for sql in normalized)
    assert any(sql.startswith("copy (select ") for sql in normalized)
    problems = {}
    for sql, flat in zip(statements, normalized, strict=True):
        found = problems_of(sql)
        if found:
            problems.setdefault(flat, found)
    assert not problems, "statements Citus cannot keep on one node:\n" + "\n".join(
        f"{'; '.join(found)}:\n    {sql[:600]}" for sql, found in problems.items()
    )
