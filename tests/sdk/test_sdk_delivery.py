"""Delivery against a scripted stand-in API on loopback: batching, wire format, retries,
Retry-After, refusals of the key, batches split around the events the API refuses or fails
on, 207 reporting, the full queue, the spool, the flush deadline, fork and exit."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import formatdate
from pathlib import Path

import pytest
from routeledger import RouteLedger
from routeledger.spool import HOLD_SECONDS
from routeledger.transport import Reply, _seconds

from tests.helpers import send_with_poison

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def local_zone(monkeypatch):
    """Sets the process's local zone (TZ) for the test; this machine's is back after it."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_events_arrive_once_in_wire_form(fake_api, make_client):
    client = make_client(fake_api.url)
    with client.request(
        customer_id="acme",
        feature="support-chat",
        intended_tier="cheap",
        user_tier="free",
        experiment={"name": "router-v4", "arm": "treatment"},
        metadata={"region": "eu"},
    ) as req:
        req.attempt(
            "claude-3-5-haiku", "cheap", 500, 200, latency_ms=812.0, cost_usd=Decimal("1.2E-4")
        )
        req.set_quality(0.9, source="user")
        req.set_revenue(0.1)
    assert client.flush(5)
    (event,) = fake_api.received
    assert uuid.UUID(event["request_id"]).version == 4 and event["request_id"] == req.request_id
    assert RFC3339_UTC.match(event["timestamp"])
    assert event["revenue_usd"] == "0.1" and event["attempts"][0]["cost_usd"] == "0.00012"
    assert event["quality"] == {"score": 0.9, "source": "user"}
    assert (
        "task_type" not in event and "provider" not in event["attempts"][0]
    )  # no nulls on the wire
    assert client.stats() == dict(
        sent=1, duplicates=0, rejected=0, held=0, spooled=0, dropped=0, retries=0, queued=0
    )


def test_given_timestamp_and_request_id_are_kept(fake_api, make_client, local_zone):
    """As a replay of recorded traffic sends them (a naive datetime is local time, here UTC;
    see the test in Tokyo below)."""
    local_zone("UTC")
    client = make_client(fake_api.url)
    stamps = [
        datetime(2026, 11, 22, 10, 15, 30, 123456),
        datetime(2026, 11, 22, 11, 15, 30, tzinfo=timezone(timedelta(hours=1))),
    ]
    for number, stamp in enumerate(stamps):
        request_id = f"00000000-0000-4000-8000-00000000000{number}"
        with client.request("acme", "replay", request_id=request_id, timestamp=stamp) as req:
            req.attempt("gpt-4o-mini", "cheap", 1, 1)
    assert client.flush(5)
    sent = sorted((event["request_id"], event["timestamp"]) for event in fake_api.received)
    assert sent == [
        ("00000000-0000-4000-8000-000000000000", "2026-11-22T10:15:30.123Z"),
        ("00000000-0000-4000-8000-000000000001", "2026-11-22T10:15:30.000Z"),
    ]


def test_retry_after_in_seconds_or_as_a_date():
    in_three_seconds = formatdate(time.time() + 3, usegmt=True)
    assert _seconds("2") == 2.0
    assert 1.5 < _seconds(in_three_seconds) <= 3.0
    assert _seconds("soon") is None and _seconds(None) is None


def test_batches_by_count_and_bytes(fake_api, make_client, send):
    client = make_client(fake_api.url, batch_size=100, flush_interval=30)
    send(client, 250)
    assert client.flush(5)
    assert sum(count for _, count in fake_api.posts) == 250
    assert max(count for _, count in fake_api.posts) <= 100

    small = make_client(fake_api.url, max_batch_bytes=2000, flush_interval=30)
    send(small, 20)  # each event is about 600 bytes
    assert small.flush(5)
    assert max(count for _, count in fake_api.posts[-5:]) <= 3
    assert len(fake_api.request_ids) == 270


def test_retries_while_unavailable_then_delivers(fake_api, make_client, send):
    fake_api.script = [(503, {}, {}), (502, {}, {})]
    client = make_client(fake_api.url)
    send(client, 3)
    assert client.flush(10)
    assert len(fake_api.request_ids) == 3
    assert client.stats()["retries"] == 2


def test_honours_retry_after(fake_api, make_client, send):
    fake_api.script = [(429, {"Retry-After": "1"}, {"detail": "slow down"})]
    client = make_client(fake_api.url)
    started = time.monotonic()
    send(client, 1)
    assert client.flush(10)
    assert time.monotonic() - started >= 1.0
    assert len(fake_api.posts) == 2


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_keeps_the_events_and_says_so(fake_api, make_client, send, caplog, status):
    # The key is wrong, not the events: they wait in the spool, the error is logged once, and
    # they go as soon as the API takes the key again.
    fake_api.script = [(status, {}, {"detail": "unknown key"})] * 2
    client = make_client(fake_api.url)
    with caplog.at_level(logging.ERROR, logger="routeledger"):
        ids = send(client, 3)
        assert client.flush(10)
    assert fake_api.request_ids == set(ids)
    assert len(fake_api.posts) == 3
    assert client.stats()["rejected"] == 0 and client.stats()["sent"] == 3
    refusals = [record for record in caplog.records if "unknown key" in record.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR


def depth(value):
    return 1 + max(map(depth, value.values()), default=0) if isinstance(value, dict) else 0


def refuse_batches_with_deep_metadata(status, detail):
    """A judge for FakeApi: the whole batch is answered `status` when any event in it has
    metadata over 255 levels deep, as the API did before it judged such an event alone."""

    def judge(events):
        if any(depth(event.get("metadata")) > 255 for event in events):
            return status, {}, {"detail": detail}
        return None

    return judge


@pytest.mark.parametrize("status", [400, 413, 422])
def test_events_the_api_refuses_do_not_hold_their_batch_hostage(
    fake_api, make_client, caplog, status
):
    fake_api.judge = refuse_batches_with_deep_metadata(status, "metadata: nested too deep")
    rejected = []
    client = make_client(
        fake_api.url, flush_interval=30, on_rejected=lambda event, error: rejected.append(event)
    )
    with caplog.at_level(logging.WARNING, logger="routeledger"):
        good, poison = send_with_poison(client)
        assert client.flush(10)
    received = Counter(event["request_id"] for event in fake_api.received)
    assert set(good) <= set(received) and not set(poison) & set(received)
    assert all(count == 1 for count in received.values())  # each good event sent once
    assert sorted(event["request_id"] for event in rejected) == sorted(poison)
    stats = client.stats()
    assert (stats["sent"], stats["rejected"], stats["held"]) == (490, 10, 0)
    for request_id in poison:  # each logged once, with the API's message
        messages = [record.getMessage() for record in caplog.records]
        assert [m for m in messages if request_id in m and "nested too deep" in m] == [
            f"RouteLedger API rejected event {request_id}: metadata: nested too deep"
        ]
    assert not list(Path(client.spool_dir).iterdir())


def age_held_files(spool_dir):
    """Make the held files due, as if HOLD_SECONDS had passed."""
    past = time.time() - HOLD_SECONDS - 1
    for path in Path(spool_dir).glob("*.held"):
        os.utime(path, (past, past))


def test_events_the_api_fails_on_are_held_apart(fake_api, make_client):
    # A server error is not the event's fault for sure: the others go, it is held and tried
    # again later, and stored once the API takes it.
    fake_api.judge = refuse_batches_with_deep_metadata(500, "Internal Server Error")
    client = make_client(fake_api.url, flush_interval=30)
    good, poison = send_with_poison(client)
    assert not client.flush(10)  # it does not wait for held events, and says they are there
    assert fake_api.request_ids == set(good)
    stats = client.stats()
    assert (stats["sent"], stats["rejected"], stats["held"]) == (490, 0, 10)
    assert len(list(Path(client.spool_dir).glob("*.held"))) == 10

    fake_api.judge = None  # the API is fixed
    age_held_files(client.spool_dir)
    assert client.flush(10)
    assert fake_api.request_ids == set(good + poison)
    assert all(count == 1 for count in Counter(e["request_id"] for e in fake_api.received).values())
    assert not list(Path(client.spool_dir).iterdir())


@pytest.mark.parametrize("status", [422, 500])
def test_an_api_that_refuses_everything_loses_nothing(fake_api, make_client, send, status):
    # A wrong endpoint, or an API broken for every batch, never took an event from this
    # client: no event is taken for invalid, each is kept, held or spooled.
    fake_api.judge = lambda events: (status, {}, {"detail": "no"})
    client = make_client(fake_api.url, flush_interval=30)
    ids = send(client, 20)
    assert not client.flush(1)
    client.shutdown(0.1)
    client._worker._thread.join(10)
    kept = [
        json.loads(line)["request_id"]
        for path in Path(client.spool_dir).iterdir()
        for line in path.read_bytes().splitlines()
    ]
    assert sorted(kept) == sorted(ids)
    assert client.stats()["rejected"] == client.stats()["dropped"] == 0


def test_too_large_batch_is_split(fake_api, make_client, send):
    fake_api.max_events = 2
    client = make_client(fake_api.url, flush_interval=30)
    ids = send(client, 7)
    assert client.flush(5)
    assert fake_api.request_ids == set(ids)
    assert client.stats()["sent"] == 7


def test_rejected_events_are_reported(fake_api, make_client, send, caplog):
    rejected = []
    client = make_client(
        fake_api.url,
        flush_interval=30,
        on_rejected=lambda event, error: rejected.append((event, error)),
    )
    with caplog.at_level(logging.WARNING, logger="routeledger"):
        good = send(client, 2)
        bad = (
            send(client, 1, feature="invalid")
            + send(client, 1)
            + send(client, 1, feature="invalid")
        )
        assert client.flush(5)
    assert [(event["request_id"], error) for event, error in rejected] == [
        (bad[0], "feature: invalid"),
        (bad[2], "feature: invalid"),
    ]
    assert fake_api.request_ids == set(good + bad[1:2])  # exactly the listed events dropped
    assert client.stats()["rejected"] == 2 and client.stats()["sent"] == 3
    assert [record.getMessage() for record in caplog.records] == [
        f"RouteLedger API rejected event {bad[0]}: feature: invalid",
        f"RouteLedger API rejected event {bad[2]}: feature: invalid",
    ]


def test_full_queue_spills_to_the_spool_then_delivers(fake_api, make_client, send):
    # A long interval and a batch larger than the queue: the worker sleeps while the queue fills.
    client = make_client(fake_api.url, max_queue=10, batch_size=500, flush_interval=30)
    ids = send(client, 25)
    assert client.stats()["queued"] == 10 and client.stats()["spooled"] == 15
    assert client.flush(5)
    assert fake_api.request_ids == set(ids)
    assert len(fake_api.received) == 25  # each sent once
    assert not list(Path(client.spool_dir).iterdir())


def test_down_then_back_delivers_exactly_once(start_fake_api, make_client, send):
    api = start_fake_api()
    port = api.port
    api.close()
    client = make_client(api.url, max_retries=1)
    ids = send(client, 50)
    assert not client.flush(0.2)
    wait_for(lambda: client.stats()["spooled"] == 50)
    back = start_fake_api(port)
    assert client.flush(10)
    assert back.request_ids == set(ids) and len(back.received) == 50
    assert client.stats()["sent"] == 50


@pytest.fixture
def silent_server():
    """Accepts connections and reads requests but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.timeout(60)
def test_flush_and_shutdown_keep_their_deadline(silent_server, make_client, send):
    # The server never answers and the client waits an hour for it: a send, flush or shutdown
    # that waited on the network instead of keeping its deadline would hang until the
    # test's timeout fails it.
    client = make_client(silent_server, timeout=3600)
    send(client, 1000)
    assert not client.flush(0.3)
    assert not client.shutdown(0.3)
    spooled = b"".join(path.read_bytes() for path in Path(client.spool_dir).iterdir())
    assert len(spooled.splitlines()) == 1000  # the batch in flight and the rest of the queue


def test_events_after_shutdown_go_to_the_spool(fake_api, make_client, send):
    client = make_client(fake_api.url)
    client.shutdown()
    send(client, 3)
    assert client.stats()["spooled"] == 3
    client.shutdown()  # as at exit: what came after the first shutdown becomes replayable
    again = make_client(fake_api.url)
    assert again.flush(5)
    assert len(fake_api.request_ids) == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_sends_its_own_events_only(fake_api, make_client, send):
    client = make_client(fake_api.url, flush_interval=30)
    parent_ids = send(client, 10)  # still queued at the fork
    pid = os.fork()
    if pid == 0:
        try:
            child_ids = send(client, 5)
            ok = (
                client.flush(5)
                and client.stats()["sent"] == 5
                and not set(child_ids) & set(parent_ids)
            )
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(5)
    assert len(fake_api.request_ids) == 15 and len(fake_api.received) == 15


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    from routeledger import RouteLedger
    client = RouteLedger(api_key="test-key", endpoint=sys.argv[1], spool_dir=sys.argv[2],
                         flush_interval=30, shutdown_timeout=float(sys.argv[3]), max_retries=0)
    for number in range(20):
        with client.request(customer_id="acme", feature="exit") as req:
            req.attempt("gpt-4o-mini", "cheap", 10, 5)
    """
)


def run_exit_script(endpoint, spool_dir, shutdown_timeout):
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, endpoint, str(spool_dir), str(shutdown_timeout)],
        check=True,
        timeout=30,
    )
    return time.monotonic() - started


def test_exit_flushes_the_queue(fake_api, tmp_path):
    run_exit_script(fake_api.url, tmp_path, 5)
    assert len(fake_api.request_ids) == 20


def test_exit_spools_what_it_cannot_send_and_a_later_process_replays_it(
    start_fake_api, make_client, tmp_path
):
    api = start_fake_api()
    port = api.port
    api.close()
    assert run_exit_script(api.url, tmp_path, 0.5) < 10
    back = start_fake_api(port)
    client = make_client(back.url, spool_dir=tmp_path)
    assert client.flush(5)
    assert len(back.request_ids) == 20


def test_without_key_events_are_dropped_quietly(monkeypatch, send, caplog):
    monkeypatch.delenv("ROUTELEDGER_API_KEY", raising=False)
    with caplog.at_level(logging.ERROR, logger="routeledger"):
        client = RouteLedger(endpoint="http://127.0.0.1:9")
    send(client, 2)
    assert client.stats()["dropped"] == 2
    assert client.flush(1)
    assert "no API key" in caplog.text


def test_a_naive_datetime_is_local_time_as_python_takes_it(fake_api, make_client, local_zone):
    """datetime.now() in Tokyo (UTC+9, no daylight saving) is nine hours ahead of UTC: taken
    as UTC, the request would be recorded nine hours in the future."""
    local_zone("Asia/Tokyo")
    client = make_client(fake_api.url)
    with client.request("acme", "replay", timestamp=datetime(2026, 11, 22, 19, 15, 30)) as req:
        req.attempt("gpt-4o-mini", "cheap", 1, 1)
    assert client.flush(5)
    [event] = fake_api.received
    assert event["timestamp"] == "2026-11-22T10:15:30.000Z"


def test_the_callers_dicts_are_sent_as_they_were_when_the_request_ended(fake_api, make_client):
    """An app reusing one metadata dict (and nested ones) for its requests: each request
    carries the values it had, though events are encoded later on the worker thread."""
    client = make_client(fake_api.url, flush_interval=30)
    metadata = {"question": None, "tags": []}
    for number in range(3):
        metadata["question"] = f"q{number}"
        metadata["tags"].append(number)
        with client.request("acme", "chat", metadata=metadata) as req:
            req.attempt("gpt-4o-mini", "cheap", 1, 1)
    assert client.flush(5)
    sent = sorted((e["metadata"]["question"], e["metadata"]["tags"]) for e in fake_api.received)
    assert sent == [("q0", [0]), ("q1", [0, 1]), ("q2", [0, 1, 2])]


class Unprintable:
    def __str__(self):
        raise AttributeError("a detached ORM object")


def test_an_event_that_cannot_be_encoded_is_dropped_alone(fake_api, make_client, caplog):
    """Whatever fails in encoding one event (a value whose str() raises, a timestamp beyond
    the year 9999) drops it, counted and logged; its neighbours are delivered, and neither
    a flush nor a shutdown raises."""
    client = make_client(fake_api.url, flush_interval=30)
    good = []
    with caplog.at_level(logging.ERROR, logger="routeledger"):
        for poison in (None, {"user": Unprintable()}, None, None):
            with client.request("acme", "chat", metadata=poison) as req:
                req.attempt("gpt-4o-mini", "cheap", 1, 1)
            if poison is None:
                good.append(req.request_id)
        with client.request("acme", "chat", timestamp=1e20) as req:
            req.attempt("gpt-4o-mini", "cheap", 1, 1)
        assert client.flush(5)
        assert client.shutdown(1)
    assert fake_api.request_ids == set(good)
    assert client.stats()["dropped"] == 2
    assert caplog.text.count("which it cannot encode") == 2


def test_a_key_read_with_its_line_break_still_works(fake_api, make_client):
    client = make_client(fake_api.url, api_key="test-key\n")
    with client.request("acme", "chat") as req:
        req.attempt("gpt-4o-mini", "cheap", 1, 1)
    assert client.flush(5) and fake_api.request_ids == {req.request_id}


def test_a_key_no_header_can_carry_disables_the_client_and_says_why(send, caplog):
    with caplog.at_level(logging.ERROR, logger="routeledger"):
        client = RouteLedger(api_key="test\r\nkey", endpoint="http://127.0.0.1:9")
    send(client, 2)
    assert client.stats()["dropped"] == 2
    assert "the API key holds characters a key never has" in caplog.text


@pytest.mark.parametrize(
    "answer",
    [(200, {"Content-Type": "text/html"}, "<html>sign in</html>"), (200, {}, None)],
    ids=["a portal's page", "a null body"],
)
def test_a_2xx_that_is_not_the_apis_answer_keeps_the_events(
    fake_api, make_client, send, caplog, answer
):
    """A proxy or captive portal answering 2xx for the API proves nothing was stored: the
    events wait in the spool, the error is logged, and they go once the API answers."""
    fake_api.script = [answer]
    client = make_client(fake_api.url)
    with caplog.at_level(logging.ERROR, logger="routeledger"):
        ids = send(client, 3)
        assert client.flush(10)
    assert fake_api.request_ids == set(ids)
    assert client.stats()["sent"] == 3
    assert "without the API's answer" in caplog.text


def test_a_portals_2xx_backs_off_as_any_failure(fake_api, make_client, send):
    """Answered 200 by something that is not the API, the client backs off more each time
    (a portal answering every flush would be sent every batch, every second, forever)."""
    fake_api.script = [(200, {"Content-Type": "text/html"}, "<html>sign in</html>")] * 2
    client = make_client(fake_api.url, flush_interval=30)
    send(client, 1)
    assert not client.flush(0.3)
    assert not client.flush(0.3)
    assert client._worker._failures == 2
    assert client.flush(5) and len(fake_api.request_ids) == 1


def test_a_request_whose_dicts_cannot_be_copied_never_raises_into_the_app(
    fake_api, make_client, caplog
):
    client = make_client(fake_api.url)
    metadata: dict = {"region": "eu"}
    metadata["self"] = metadata
    with caplog.at_level(logging.WARNING, logger="routeledger"):
        with client.request("acme", "chat", metadata=metadata) as req:
            req.attempt("gpt-4o-mini", "cheap", 1, 1)
        assert client.flush(5)
    assert "could not copy the metadata" in caplog.text
    assert client.stats()["dropped"] == 1  # it cannot be encoded either: dropped, not raised


def test_a_long_outage_keeps_probing_and_loses_nothing(start_fake_api, make_client, send):
    """Hours of failures in a row (a probe every 15 to 30 s) must not break the backoff's
    arithmetic: events sent meanwhile are spooled, and delivered once the API is back."""
    api = start_fake_api()
    port = api.port
    api.close()
    client = make_client(api.url, max_retries=1)
    client._worker._failures = 5000  # about a day of probes
    ids = send(client, 5)
    assert not client.flush(0.2)
    wait_for(lambda: client.stats()["spooled"] == 5)
    back = start_fake_api(port)
    assert client.flush(10)
    assert back.request_ids == set(ids)
    assert client.stats()["dropped"] == 0


def test_a_retry_after_of_an_hour_still_probes_within_the_backoffs_bound(fake_api, make_client):
    worker = make_client(fake_api.url)._worker
    now = time.monotonic()
    for asked, waited in (("3600", 30.0), ("0", 0.5), ("-5", 0.5)):
        reply = Reply(503, {}, "", _seconds(asked))
        assert worker._back_off(reply) == waited
        assert worker._retry_at - now == pytest.approx(waited, abs=1.0)


def test_feedback_the_api_holds_counts_as_delivered(fake_api, make_client):
    fake_api.judge = lambda items: (200, {}, {"accepted": 0, "held": len(items),
                                              "duplicates": 0, "errors": []})  # fmt: skip
    client = make_client(fake_api.url)
    client.feedback("00000000-0000-4000-8000-000000000000", 0.5)
    assert client.flush(5)
    assert client.stats()["sent"] == 1
