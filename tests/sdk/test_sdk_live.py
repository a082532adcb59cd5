"""The SDK against the real API and PostgreSQL on loopback (live_api, fresh_project in
tests/conftest.py): exactly-once storage through outages, restarts, a full queue and a
fork; rejected events surfaced; feedback."""

import os
import threading
import time

import pytest

from tests.helpers import send_with_poison


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def api(live_api):
    """The live API, running again after the test whatever the test did to it."""
    yield live_api
    if live_api.process is None or live_api.process.poll() is not None:
        live_api.start()


@pytest.fixture
def client_for(api, fresh_project, make_client):
    def make(**options):
        return make_client(api.url, api_key=fresh_project.ingest_key, **options)

    return make


def test_events_are_stored_exactly_once(client_for, fresh_project, send):
    client = client_for()
    ids = send(client, 1200)
    assert client.flush(30)
    assert fresh_project.fetch_request_ids() == set(ids)
    assert fresh_project.count_attempts() == 2400
    assert client.stats()["sent"] == 1200

    # The same ids again, as a replayed spool would send them: stored once, counted as duplicates.
    again = client_for()
    for request_id in ids[:100]:
        with again.request(
            customer_id="acme", feature="support-chat", request_id=request_id
        ) as req:
            req.attempt("gpt-4o-mini", "cheap", 1, 1)
    assert again.flush(30)
    assert again.stats()["duplicates"] == 100
    assert fresh_project.count_requests() == 1200


def test_service_down_spooled_then_delivered_once(api, client_for, fresh_project, send):
    api.stop()
    client = client_for(max_retries=1)
    ids = send(client, 500)
    started = time.monotonic()
    assert not client.flush(0.5)
    assert 0.5 <= time.monotonic() - started < 1.5  # the flush deadline holds
    wait_for(lambda: client.stats()["spooled"] == 500)
    assert fresh_project.count_requests() == 0
    api.start()
    assert client.flush(30)
    assert fresh_project.fetch_request_ids() == set(ids)
    assert client.stats()["sent"] == 500


def test_twenty_thousand_events_across_two_restarts(api, client_for, fresh_project, send):
    client = client_for(max_retries=1)
    restarts = []

    def restart_twice():
        for _ in range(2):
            time.sleep(1.0)
            api.restart()
            restarts.append(time.monotonic())

    restarter = threading.Thread(target=restart_twice)
    restarter.start()
    ids = []
    while len(ids) < 20_000:  # about 8 s of traffic, spanning both restarts
        ids.extend(send(client, 250))
        time.sleep(0.1)
    restarter.join()
    assert len(restarts) == 2
    assert client.flush(90)
    assert fresh_project.count_requests() == 20_000
    assert fresh_project.fetch_request_ids() == set(ids)
    stats = client.stats()
    assert stats["sent"] + stats["duplicates"] >= 20_000 and stats["dropped"] == 0


def test_full_queue_loses_nothing(client_for, fresh_project, send):
    client = client_for(max_queue=100, batch_size=500, flush_interval=30)
    ids = send(client, 350)
    assert client.stats()["spooled"] == 250
    assert client.flush(30)
    assert fresh_project.fetch_request_ids() == set(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_and_parent_each_deliver_their_own(client_for, fresh_project, send):
    client = client_for(flush_interval=30)
    parent_ids = send(client, 100)  # still queued at the fork
    pid = os.fork()
    if pid == 0:
        try:
            send(client, 50)
            ok = client.flush(30) and client.stats()["sent"] == 50
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(30)
    assert client.stats()["sent"] == 100
    assert fresh_project.count_requests() == 150
    assert set(parent_ids) <= fresh_project.fetch_request_ids()


def test_rejected_events_are_surfaced(client_for, fresh_project, send):
    rejected = []
    client = client_for(
        flush_interval=30, on_rejected=lambda event, error: rejected.append((event, error))
    )
    good = send(client, 3)
    with client.request(customer_id="acme", feature="support-chat") as bad:
        bad.attempt("gpt-4o", "ultra", 10, 5)  # no such tier in the project
    assert client.flush(30)
    assert [event["request_id"] for event, _ in rejected] == [bad.request_id]
    assert "tier" in rejected[0][1]
    assert client.stats()["rejected"] == 1 and client.stats()["sent"] == 3
    assert fresh_project.fetch_request_ids() == set(good)


def test_an_event_the_api_cannot_take_does_not_hold_the_others_hostage(client_for, fresh_project):
    # One event in 50 with metadata nested 300 levels deep (valid by the size rule): every
    # other event is stored once, and each of those is stored, rejected or held, as the API
    # judges it, never left in front of the others.
    client = client_for(flush_interval=30)
    good, poison = send_with_poison(client)
    client.flush(60)
    stored = fresh_project.fetch_request_ids()
    assert set(good) <= stored and fresh_project.count_requests() == len(stored)
    stats = client.stats()
    stored_poison = len(stored & set(poison))
    assert stats["sent"] == len(good) + stored_poison
    assert stats["rejected"] + stats["held"] + stored_poison == len(poison)
    assert stats["dropped"] == 0 and not client.stats()["queued"]


def test_feedback_after_the_request(client_for, send):
    client = client_for()
    (request_id,) = send(client, 1)
    client.feedback(request_id, 0.8, source="user")
    assert client.flush(30)
    assert client.stats()["sent"] == 2 and client.stats()["rejected"] == 0
