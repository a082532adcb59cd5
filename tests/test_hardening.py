"""What a careless or hostile client found (issue 16), each answered now: a clear 4xx naming
the field (or a per-event error, the valid neighbours stored), never a 500; no header
injection; the key checked before the body is read; rates shared by API processes; no stall
behind a reader; bounded periods and reads."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from app.periods import utc_now
from tests.helpers import (
    LiveApi,
    attempt,
    auth,
    batch,
    event,
    make_project,
    post,
    stored_request,
)


def nested(levels: int) -> dict:
    value: dict = {"leaf": "x"}
    for _ in range(levels - 1):
        value = {"deep": value}
    return value


BAD_EVENTS = {
    "metadata": lambda: event(metadata=nested(255)),  # 2.4 KB: valid by the size rule
    "customer_id": lambda: event(customer_id="acme\x00"),
    "attempts[0].cost_usd": lambda: event(attempt(cost_usd="1e200000")),
    "revenue_usd": lambda: event(revenue_usd="1e-200000"),
    "timestamp": lambda: event(timestamp="0001-01-01T00:00:00+01:00"),
    "attempts[0].latency_ms": lambda: event(attempt(latency_ms=1e300 * 10)),  # Infinity
    "router.confidence": lambda: event(router={"confidence": float("nan")}),
}


@pytest.mark.parametrize("field", BAD_EVENTS)
def test_a_bad_event_is_refused_by_name_and_its_neighbours_stored(http, fresh_project, field):
    bad, good = BAD_EVENTS[field](), event()
    # json.dumps writes NaN and Infinity as the bare words JSON does not have.
    body = json.dumps(batch(good, bad))
    response = http.post(
        "/v1/requests",
        content=body,
        headers={**auth(fresh_project.ingest_key), "Content-Type": "application/json"},
    )
    assert response.status_code == 207, response.text
    (error,) = response.json()["errors"]
    assert error["index"] == 1 and error["error"].startswith(field), error
    assert fresh_project.fetch_request_ids() == {good["request_id"]}


def test_big_integers_in_metadata_read_alike_on_every_path(http, fresh_project, database_url):
    """A whole batch is validated from the raw body, a batch with a bad event through orjson
    (or leniently): both read an integer beyond 64 bits as a float, and one beyond a float's
    range is refused by name, never a 500."""
    big = {"big": 2**64, "small": -(2**63) - 1, "fits": 2**64 - 1}
    whole = event(metadata=big)
    # An invalid UTF-8 neighbour sends its batch down the lenient path.
    lenient, bad = event(metadata=big), event(customer_id="PLACEHOLDER")
    huge = event(metadata={"huge": 10**400})
    for events, code in (([whole], 200), ([lenient, bad, huge], 207)):
        raw = json.dumps(batch(*events)).encode().replace(b"PLACEHOLDER", b"caf\xc3\x28")
        response = http.post(
            "/v1/requests",
            content=raw,
            headers={**auth(fresh_project.ingest_key), "Content-Type": "application/json"},
        )
        assert response.status_code == code, response.text
    errors = {e["index"]: e["error"] for e in response.json()["errors"]}
    assert errors == {1: "customer_id: not valid UTF-8",
                      2: "metadata: Value error, must hold finite numbers only"}  # fmt: skip
    stored = [stored_request(database_url, e["request_id"])["metadata"] for e in (whole, lenient)]
    # jsonb keeps the float's shortest digits: 2**64 is read as 1.8446744073709552e+19.
    as_float = {"big": 18446744073709552000, "small": -9223372036854776000, "fits": 2**64 - 1}
    assert stored[0] == stored[1] == as_float


@pytest.mark.parametrize(
    ("path", "key", "good", "bad", "named"),
    [
        ("/v1/feedback", "feedback", {"score": 0.5}, {"source": "\udc80"}, "source"),
        ("/v1/evals", "results",
         {"item_id": "good-1", "model": "m", "tier": "cheap", "score": 0.5, "feature": "f"},
         {"item_id": "\ud800", "model": "m", "tier": "cheap", "score": 0.5, "feature": "f"},
         "item_id"),
    ],
)  # fmt: skip
def test_text_that_is_not_utf8_is_refused_alone_on_every_batch_door(
    http, fresh_project, path, key, good, bad, named
):
    """A lone surrogate (JSON can escape one; UTF-8 cannot hold it) in one item: that item is
    refused by name, not echoed back, and the others are stored."""
    request_id = event()["request_id"]
    items = [{"request_id": request_id, **good}, {"request_id": request_id, **bad}]
    if key == "results":
        items = [good, bad]
    response = http.post(
        path,
        content=json.dumps({key: items}),  # ensure_ascii: the surrogate goes as \ud800
        headers={"Content-Type": "application/json", **auth(fresh_project.ingest_key)},
    )
    assert response.status_code == 207, response.text
    body = response.json()
    assert body["accepted"] + body.get("held", 0) == 1
    [error] = body["errors"]
    assert error["index"] == 1 and error["error"] == f"{named}: not valid UTF-8"


def test_an_event_older_than_the_age_bound_is_refused_alone(engine, monkeypatch):
    from app.services.batches import Batch
    from app.services.ingest import ingest_batch
    from app.settings import get_settings

    monkeypatch.setenv("ROUTELEDGER_MAX_EVENT_AGE_DAYS", "400")
    get_settings.cache_clear()
    try:
        project = make_project()
        now = datetime(2027, 6, 1, tzinfo=UTC)
        old = event(timestamp=(now - timedelta(days=401)).isoformat())
        recent = event(timestamp=(now - timedelta(days=399)).isoformat())
        result = ingest_batch(engine, project_id=project.id, batch=Batch([old, recent]), now=now)
    finally:
        get_settings.cache_clear()
    assert result.accepted == 1
    assert result.errors[0].index == 0 and "400 days in the past" in result.errors[0].error


BAD_ADMIN_CALLS = [
    ("post", "/v1/prices", {"prices": [{"model": "m", "input_per_mtok": "1e200000",
                                        "output_per_mtok": "1",
                                        "effective_from": "2026-01-01T00:00:00Z"}]},
     "prices[0].input_per_mtok"),
    ("post", "/v1/revenue", {"records": [{"customer_id": "c", "amount_usd": "1e200000",
                                          "period_start": "2026-01-01T00:00:00Z",
                                          "period_end": "2026-02-01T00:00:00Z"}]},
     "records[0].amount_usd"),
    ("post", "/v1/alert-rules", {"name": "r", "metric": "spend", "threshold": 1,
                                 "min_requests": 2**31, "recipients": ["a@example.com"]},
     "min_requests"),
    ("post", "/v1/alert-rules", {"name": "r", "metric": "spend", "threshold": 1,
                                 "recipients": ["x,evil@example.com"]}, "recipients[0]"),
    ("post", "/v1/alert-rules", {"name": "spend spike\nBcc: x@example.com", "metric": "spend",
                                 "threshold": 1, "recipients": ["a@example.com"]}, "name"),
    ("post", "/v1/alert-rules", {"name": "r", "metric": "spend", "threshold": "Infinity",
                                 "recipients": ["a@example.com"]}, "threshold"),
    # Line breaks to Python's email package too: an alert named so could never be sent.
    *(("post", "/v1/alert-rules", {"name": f"spend{brk}Bcc: x@example.com", "metric": "spend",
                                   "threshold": 1, "recipients": ["a@example.com"]}, "name")
      for brk in ("\x85", "\u2028", "\u2029")),
    ("put", "/v1/quality-floors/a%00", {"pass_score": 0.7}, "feature"),
    ("patch", f"/v1/alert-rules/{2**70}", {"threshold": 2}, "rule_id"),
    ("delete", f"/v1/keys/{2**70}", None, "key_id"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "field"), BAD_ADMIN_CALLS)
def test_bad_admin_calls_are_4xx_naming_the_field(http, fresh_project, method, path, body, field):
    response = http.request(
        method.upper(),
        path,
        content=None if body is None else json.dumps(body),
        headers={"Content-Type": "application/json", **auth(fresh_project.admin_key)},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(field), response.text


def test_the_same_price_twice_is_a_conflict(http, fresh_project):
    price = {"model": "acme-x", "provider": "acme", "input_per_mtok": "1",
             "output_per_mtok": "2", "effective_from": "2026-01-01T00:00:00Z"}  # fmt: skip
    first = http.post("/v1/prices", json={"prices": [price]}, headers=auth(fresh_project.admin_key))
    again = http.post("/v1/prices", json={"prices": [price]}, headers=auth(fresh_project.admin_key))
    assert first.status_code == 201 and again.status_code == 409
    assert "acme-x" in again.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/metrics/routing", {"end": "0001-01-01"}),
        ("/v1/metrics/routing", {"start": "0000-12-31", "end": "2026-01-01"}),
        ("/v1/metrics/routing", {"start": "0001-01-01", "end": "9999-12-31"}),
        ("/v1/exports/customers.csv", {"start": "2026-01-01", "end": "9999-01-01"}),
        ("/v1/metrics/customers", {"start": "2020-01-01", "end": "2026-01-01"}),  # too long
    ],
)
def test_periods_out_of_bounds_are_422(http, live_api, path, params):
    response = http.get(path, params=params, headers=auth(live_api.read_key))
    assert response.status_code == 422, response.text


def test_a_failing_email_row_does_not_stop_the_others(engine, monkeypatch, tmp_path):
    """A row the sender cannot build (a recipient with a line break, queued before names
    were checked) is backed off with its error; the rows after it go out."""
    from app.services.emails import send_pending
    from app.settings import get_settings

    monkeypatch.delenv("SMTP_URL", raising=False)
    monkeypatch.setenv("ROUTELEDGER_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    good = f"good-{uuid.uuid4().hex[:8]}@example.com"
    try:
        with engine.begin() as conn:
            for key, recipient in (("bad", "x@example.com\nBcc: evil@example.com"), ("ok", good)):
                conn.exec_driver_sql(
                    "insert into email_outbox (dedupe_key, kind, recipients, subject, text_body,"
                    " html_body, created_at, next_attempt_at) values (%s, 'test', %s, 's', 't',"
                    " '<p>h</p>', %s, %s)",
                    (f"{key}-{uuid.uuid4()}", [recipient], utc_now(), utc_now()),
                )
        run = send_pending(engine)
    finally:
        get_settings.cache_clear()
    assert run.failed >= 1 and run.sent >= 1
    sent = [f.read_text() for f in (tmp_path / "outbox").glob("*.eml")]
    assert any(good in text for text in sent)
    with engine.connect() as conn:
        status, error = conn.exec_driver_sql(
            "select status, last_error from email_outbox where recipients = %s",
            (["x@example.com\nBcc: evil@example.com"],),
        ).one()
    assert status == "pending" and error


def test_a_repeated_authorization_header_is_read_alike_by_every_call(http, fresh_project):
    """The first of two Authorization headers is the key, for a call with a body as for one
    without (a proxy adding its own must not make a call act as another key)."""
    ingest, admin = (f"Bearer {k}" for k in (fresh_project.ingest_key, fresh_project.admin_key))
    policy = {"split": {"cheap": 1.0}, "effective_from": "2026-11-01T00:00:00Z"}
    for first, second, status in ((ingest, admin, 403), (admin, ingest, 200)):
        headers = [("Authorization", first), ("Authorization", second)]
        put = http.put("/v1/policies/twice", json=policy, headers=headers)
        listed = http.get("/v1/keys", headers=headers)
        assert (put.status_code, listed.status_code) == (status, status), put.text


def test_the_key_is_checked_before_a_body_is_read(http, live_api):
    """A huge gzip body without a key is refused 401 at once (not read, not decompressed),
    and calls without a valid key are throttled per address; a key found valid before still
    passes from that address."""
    good = http.get("/v1/metrics/routing", headers=auth(live_api.read_key))
    assert good.status_code == 200, good.text
    bomb = gzip.compress(b" " * (20 * 1024 * 1024))
    response = http.post(
        "/v1/requests",
        content=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 401, response.text
    statuses = [
        http.get("/v1/metrics/routing", headers=auth("rl_not-a-key")).status_code for _ in range(40)
    ]
    assert statuses[0] == 401 and statuses[-1] == 429
    assert http.get("/v1/metrics/routing", headers=auth("x" * 10**6)).status_code == 429
    still = http.get("/v1/metrics/routing", headers=auth(live_api.read_key))
    assert still.status_code == 200, still.text


def test_readiness_never_shows_the_drivers_text():
    api = LiveApi(database_url="postgresql://nobody:secret@127.0.0.1:1/nowhere")
    api.ready_path = "/healthz"  # the process answers; its database does not
    try:
        api.start()
        response = httpx.get(f"{api.url}/readyz", timeout=10)
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "detail": "database unreachable"}
    finally:
        api.stop()


def test_two_api_processes_share_a_keys_rate(database_url):
    """One call per hundred seconds, a burst of one: across two API processes, one call goes
    through (each process counting alone let one through each)."""
    from app.db import transaction
    from app.services.projects import create_key

    project = make_project()
    with transaction() as conn:
        key = create_key(
            conn, project_id=project.id, name="slow", scopes=["read"], rate_limit_per_second=0.01
        ).secret
    apis = [LiveApi(database_url=database_url) for _ in range(2)]
    try:
        for api in apis:
            api.start()
        statuses = [
            httpx.get(f"{api.url}/v1/alert-rules", headers=auth(key), timeout=10).status_code
            for api in apis
            for _ in range(3)
        ]
    finally:
        for api in apis:
            api.stop()
    assert sorted(statuses) == [200, 429, 429, 429, 429, 429]


def test_ingest_does_not_wait_behind_a_reader_for_a_new_partition(
    http, fresh_project, engine, database_url
):
    """A month with no partition yet, while a long reader holds the requests table: ingest
    answers 503 with Retry-After within its lock timeout, and stores it once the reader is
    done (a month that has its partition is stored meanwhile)."""
    month = datetime(2011, 3 + uuid.uuid4().int % 9, 15, tzinfo=UTC)  # no test stores there
    with engine.connect() as conn:
        exists = conn.exec_driver_sql(
            "select 1 from pg_class where relname = %s", (f"requests_p{month:%Y_%m}",)
        ).first()
    if exists:
        pytest.skip("that month's partition exists in this database already")
    reader = psycopg.connect(database_url)
    try:
        reader.execute("select count(*) from requests")  # holds ACCESS SHARE until it ends
        waiting = post(http, fresh_project.ingest_key, batch(event(timestamp=month.isoformat())))
        assert waiting.status_code == 503 and waiting.headers["Retry-After"]
        assert post(http, fresh_project.ingest_key, batch(event())).status_code == 200
    finally:
        reader.close()
    stored = post(http, fresh_project.ingest_key, batch(event(timestamp=month.isoformat())))
    assert stored.status_code == 200


def test_a_read_that_runs_too_long_is_a_503(database_url, engine):
    project = make_project()
    api = LiveApi(database_url=database_url, env={"ROUTELEDGER_STATEMENT_TIMEOUT_SECONDS": "0.5"})
    blocker = engine.connect()
    try:
        api.start()
        blocker.begin()
        blocker.exec_driver_sql("lock table rollup_routing_hourly in access exclusive mode")
        # Hours of a fixed day, read from the hourly rollups whatever the clock says (the
        # default period, the last 24 hours, is a whole day read from the daily ones at 23:00).
        response = httpx.get(
            f"{api.url}/v1/metrics/routing",
            params={"start": "2026-11-02T01:00:00Z", "end": "2026-11-02T05:00:00Z"},
            headers=auth(project.read_key),
            timeout=30,
        )
    finally:
        blocker.rollback()
        blocker.close()
        api.stop()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "longer than 0.5 s" in response.json()["detail"]


def test_a_snapshot_left_waiting_between_statements_is_ended(engine, monkeypatch):
    """An export whose client stopped reading leaves its snapshot idle in its transaction:
    past the time limit the session ends, and with it the snapshot (which would otherwise
    hold back vacuum for as long as the client waits)."""
    import time

    from sqlalchemy.exc import DBAPIError

    from app.db import snapshot
    from app.settings import get_settings

    monkeypatch.setenv("ROUTELEDGER_EXPORT_TIMEOUT_SECONDS", "0.3")
    get_settings.cache_clear()
    try:
        with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):
            with snapshot(export=True) as conn:
                conn.exec_driver_sql("select 1")
                time.sleep(1.0)
                conn.exec_driver_sql("select 1")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
