"""POST /v1/requests against a real API server and real PostgreSQL."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from app.periods import utc_now
from tests.helpers import (
    attempt,
    auth,
    batch,
    event,
    make_project,
    post,
    stored_attempts,
    stored_request,
)

# --- answer codes ------------------------------------------------------------------------


def test_valid_batch_is_stored_with_derived_fields(http, fresh_project, database_url):
    ev = event(
        attempt(tier="cheap", status="rejected", reason="quality_check"),
        attempt(tier="premium", model="acme-large", status="ok", input_tokens=1200),
        intended_tier="cheap",
        router={"strategy": "rules", "version": "v3", "confidence": 0.92, "latency_ms": 2.5},
        experiment={"name": "router-v4", "arm": "treatment"},
        quality={"score": 0.9, "source": "user"},
        revenue_usd="0.004",
        metadata={"region": "eu"},
    )
    response = post(http, fresh_project.ingest_key, batch(ev))
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "errors": []}
    row = stored_request(database_url, ev["request_id"])
    assert row["project_id"] == fresh_project.id
    assert (row["served_tier"], row["served_model"]) == ("premium", "acme-large")
    assert row["is_fallback"] and row["is_escalation"] and not row["is_failover"]
    assert not row["is_failed"]
    assert row["input_tokens"] == 2200 and row["attempt_count"] == 2
    assert row["revenue_usd"] == Decimal("0.004")
    assert row["experiment_arm"] == "treatment" and row["router_confidence"] == 0.92
    assert row["metadata"] == {"region": "eu"}
    # Each attempt carries its request's keys, which the attempt rollups group by.
    keys = ("feature", "customer_id", "experiment_name", "experiment_arm")
    assert [{key: stored[key] for key in keys} for stored in stored_attempts(
        database_url, ev["request_id"]
    )] == [{"feature": row["feature"], "customer_id": row["customer_id"],
            "experiment_name": "router-v4", "experiment_arm": "treatment"}] * 2  # fmt: skip


def test_failover_and_failed_request(http, fresh_project, database_url):
    failed = event(attempt(status="timeout"), attempt(status="error", tier="standard"))
    response = post(http, fresh_project.ingest_key, batch(failed))
    assert response.status_code == 200
    row = stored_request(database_url, failed["request_id"])
    assert row["is_failed"] and row["is_failover"] and row["served_tier"] is None
    assert not row["is_escalation"]
    assert row["baseline_cost_usd"] == 0  # a failed request has no baseline cost


def test_missing_and_unknown_keys_are_401(http, fresh_project):
    assert http.post("/v1/requests", json=batch(event())).status_code == 401
    assert post(http, "rl_not-a-key", batch(event())).status_code == 401


def test_key_without_ingest_scope_is_403(http, fresh_project):
    response = post(http, fresh_project.read_key, batch(event()))
    assert response.status_code == 403
    assert "ingest" in response.json()["detail"]


def test_malformed_json_is_400(http, fresh_project):
    response = http.post(
        "/v1/requests",
        content=b'{"requests": [',
        headers={**auth(fresh_project.ingest_key), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


def test_not_json_content_type_is_415(http, fresh_project):
    response = http.post(
        "/v1/requests",
        content=json.dumps(batch(event())),
        headers={**auth(fresh_project.ingest_key), "Content-Type": "text/plain"},
    )
    assert response.status_code == 415


@pytest.mark.parametrize(
    "body", [[event()], {"events": [event()]}, {"requests": []}, {"requests": {}}, "x"]
)
def test_body_that_is_not_a_batch_is_422(http, fresh_project, body):
    response = post(http, fresh_project.ingest_key, body)
    assert response.status_code == 422
    assert "requests" in response.json()["detail"]


def test_over_1000_events_is_413(http, fresh_project):
    response = post(http, fresh_project.ingest_key, batch(*[event() for _ in range(1001)]))
    assert response.status_code == 413
    assert fresh_project.count_requests() == 0


def test_over_5_mib_is_413(http, fresh_project):
    padding = "x" * 190
    events = [event(metadata={f"k{i}": padding for i in range(40)}) for _ in range(800)]
    body = json.dumps(batch(*events)).encode()
    assert len(body) > 5 * 1024 * 1024
    response = http.post(
        "/v1/requests",
        content=body,
        headers={**auth(fresh_project.ingest_key), "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_gzip_over_5_mib_once_decompressed_is_413(http, fresh_project):
    body = gzip.compress(b'{"requests": [' + b" " * (6 * 1024 * 1024) + b"]}")
    response = http.post(
        "/v1/requests",
        content=body,
        headers={
            **auth(fresh_project.ingest_key),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert response.status_code == 413


def test_gzip_body_is_accepted(http, fresh_project):
    events = [event() for _ in range(3)]
    response = http.post(
        "/v1/requests",
        content=gzip.compress(json.dumps(batch(*events)).encode()),
        headers={
            **auth(fresh_project.ingest_key),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert response.status_code == 200, response.text
    assert fresh_project.count_requests() == 3


def test_a_gzip_body_of_several_members_is_read_whole_and_a_cut_one_is_400(http, fresh_project):
    """gzip allows members one after another (`cat a.gz b.gz`): every member is the body (only
    the first was read: a protobuf export's spans after it were lost without a word). A body
    cut short, or with bytes after its members that are not gzip, is refused."""
    events = [event() for _ in range(3)]
    text = json.dumps(batch(*events)).encode()
    headers = {**auth(fresh_project.ingest_key), "Content-Type": "application/json",
               "Content-Encoding": "gzip"}  # fmt: skip
    whole = gzip.compress(text[:40]) + gzip.compress(text[40:])
    assert http.post("/v1/requests", content=whole, headers=headers).status_code == 200
    assert fresh_project.count_requests() == 3
    for broken in (gzip.compress(text)[:-9], gzip.compress(text) + b"not gzip"):
        answer = http.post("/v1/requests", content=broken, headers=headers)
        assert (answer.status_code, answer.json()) == (400, {"detail": "body is not valid gzip"})
    # Members are few in practice; a body of thousands (each decompressed apart) is refused
    # before it keeps a core busy.
    many = gzip.compress(text[:40]) + gzip.compress(b"") * 1000 + gzip.compress(text[40:])
    answer = http.post("/v1/requests", content=many, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["detail"] == "body is not valid gzip: more than 16 members"


def test_over_the_key_rate_is_429_with_retry_after(http, fresh_project):
    created = http.post(
        "/v1/keys",
        json={"name": "slow", "scopes": ["ingest"], "rate_limit_per_second": 0.5},
        headers=auth(fresh_project.admin_key),
    )
    assert created.status_code == 201, created.text
    slow_key = created.json()["key"]
    codes = [post(http, slow_key, batch(event())).status_code for _ in range(3)]
    assert codes[0] == 200 and 429 in codes
    refused = post(http, slow_key, batch(event()))
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1


# --- bad events beside good ones -----------------------------------------------------------

BAD_EVENTS = {
    "wrong type": (event(attempt(input_tokens="500")), "attempts[0].input_tokens"),
    "negative tokens": (event(attempt(output_tokens=-3)), "attempts[0].output_tokens"),
    "unknown tier": (event(attempt(tier="gold")), "attempts[0].tier"),
    "unknown intended tier": (event(intended_tier="platinum"), "intended_tier"),
    "far future": (
        event(timestamp=(utc_now() + timedelta(days=2)).isoformat()),
        "timestamp",
    ),
    "no offset": (event(timestamp="2026-11-22T10:15:30"), "timestamp"),
    "21 attempts": (event(*[attempt(status="error")] * 21), "attempts"),
    "9 KiB metadata": (event(metadata={"blob": "x" * 9 * 1024}), "metadata"),
    "unknown field": (event(colour="red"), "colour"),
    "missing customer": (
        {k: v for k, v in event().items() if k != "customer_id"},
        "customer_id",
    ),
    "bad status": (event(attempt(status="maybe")), "attempts[0].status"),
    "long string": (event(feature="f" * 201), "feature"),
    "not an object": ("just a string", "event"),
    "negative client cost": (event(attempt(cost_usd="-1")), "attempts[0].cost_usd"),
    "quality out of range": (event(quality={"score": 1.5}), "quality.score"),
    # A JSON number with a fraction is a binary float: 12345678.12345679 would be stored.
    "money as a fraction": (event(revenue_usd=12345678.123456789012), "revenue_usd"),
    "cost as a fraction": (event(attempt(cost_usd=0.25)), "attempts[0].cost_usd"),
    # 49 places: rounded to 28 digits it would have looked like 1.
    "long money": (event(attempt(cost_usd="1." + "0" * 48 + "1")), "attempts[0].cost_usd"),
    "unix time": (event(timestamp="1774998000"), "timestamp"),
    # Decimal() reads both as 1000 and 1: not how an amount is written.
    "money with an underscore": (event(revenue_usd="1_000"), "revenue_usd"),
    "money with spaces": (event(attempt(cost_usd=" 1 ")), "attempts[0].cost_usd"),
}


def test_money_is_stored_as_sent(http, fresh_project, database_url):
    """A decimal string to its last digit, trailing zeros and 30 places included, and a whole
    number: never through a float."""
    digits = event(attempt(cost_usd="12345678.123456789012345678901234567890"))
    zeros = event(attempt(cost_usd="0.25000000000000000000000000000000000000"))
    whole = event(attempt(cost_usd=3), revenue_usd=999_999_999_999)
    assert post(http, fresh_project.ingest_key, batch(digits, zeros, whole)).status_code == 200
    costs = {
        e["request_id"]: stored_request(database_url, e["request_id"])["cost_usd"]
        for e in (digits, zeros, whole)
    }
    assert costs[digits["request_id"]] == Decimal("12345678.123456789012345678901234567890")
    assert costs[zeros["request_id"]] == Decimal("0.25")
    assert costs[whole["request_id"]] == 3
    revenue = stored_request(database_url, whole["request_id"])["revenue_usd"]
    assert revenue == Decimal(999_999_999_999)


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
def test_bad_event_is_refused_by_name_and_good_neighbours_stored(http, fresh_project, case):
    bad, field = BAD_EVENTS[case]
    good_before, good_after = event(), event()
    response = post(http, fresh_project.ingest_key, batch(good_before, bad, good_after))
    assert response.status_code == 207, response.text
    body = response.json()
    assert body["accepted"] == 2 and body["duplicates"] == 0
    [error] = body["errors"]
    assert error["index"] == 1
    assert error["error"].startswith(field), error["error"]
    assert fresh_project.fetch_request_ids() == {
        good_before["request_id"],
        good_after["request_id"],
    }


def test_a_misshapen_part_of_an_event_is_worded_for_json_clients(http, fresh_project):
    """An unknown field and a part that is no object, at any depth, are named as a JSON
    client would say it (never by the service's own class names)."""
    bad = [
        event(attempt(colour="red")),
        event(router={"strategy": "rules", "colour": "red"}),
        {**event(), "attempts": ["just a string"]},
        event(experiment=["router-v4", "treatment"]),
    ]
    response = post(http, fresh_project.ingest_key, batch(*bad))
    assert response.status_code == 207, response.text
    assert [e["error"] for e in response.json()["errors"]] == [
        "attempts[0].colour: unknown field",
        "router.colour: unknown field",
        "attempts[0]: must be a JSON object",
        "experiment: must be a JSON object",
    ]


def test_invalid_utf8_in_one_event_keeps_the_others(http, fresh_project):
    good = event()
    bad = event(customer_id="PLACEHOLDER")
    raw = json.dumps(batch(good, bad)).encode().replace(b"PLACEHOLDER", b"caf\xc3\x28")
    response = http.post(
        "/v1/requests",
        content=raw,
        headers={**auth(fresh_project.ingest_key), "Content-Type": "application/json"},
    )
    assert response.status_code == 207, response.text
    [error] = response.json()["errors"]
    assert error == {
        "index": 1,
        "request_id": bad["request_id"],
        "error": "customer_id: not valid UTF-8",
    }
    assert fresh_project.fetch_request_ids() == {good["request_id"]}


def test_every_event_bad_is_207_and_nothing_stored(http, fresh_project):
    response = post(http, fresh_project.ingest_key, batch(event(attempt(tier="x"))))
    assert response.status_code == 207
    assert response.json()["accepted"] == 0
    assert fresh_project.count_requests() == 0


# --- duplicates ------------------------------------------------------------------------------


def test_duplicate_in_the_same_batch_is_stored_once(http, fresh_project):
    first = event()
    copy = {**first, "customer_id": "someone-else"}
    response = post(http, fresh_project.ingest_key, batch(first, copy))
    assert response.json() == {"accepted": 1, "duplicates": 1, "errors": []}
    assert fresh_project.count_requests() == 1
    assert fresh_project.count_attempts() == 1


def test_duplicate_of_an_earlier_batch_is_stored_once(http, fresh_project, database_url):
    first = event()
    assert post(http, fresh_project.ingest_key, batch(first)).json()["accepted"] == 1
    again = post(http, fresh_project.ingest_key, batch({**first, "feature": "changed"}, event()))
    assert again.json() == {"accepted": 1, "duplicates": 1, "errors": []}
    assert stored_request(database_url, first["request_id"])["feature"] == "support-chat"
    assert fresh_project.count_requests() == 2


def test_same_request_id_in_another_project_is_not_a_duplicate(http, fresh_project, live_api):
    shared = event()
    assert post(http, fresh_project.ingest_key, batch(shared)).json()["accepted"] == 1
    other = live_api.default_project
    assert post(http, other.ingest_key, batch(shared)).json()["accepted"] == 1


def test_racing_batches_store_each_request_once(live_api, fresh_project):
    events = [event() for _ in range(300)]
    results: list[dict] = []
    barrier = threading.Barrier(4)

    def send(order: list[dict]) -> None:
        with httpx.Client(base_url=live_api.url, timeout=60) as client:
            barrier.wait()
            response = post(client, fresh_project.ingest_key, batch(*order))
            assert response.status_code == 200, response.text
            results.append(response.json())

    orders = [events, events[::-1], events[100:] + events[:100], events[::2] + events[1::2]]
    threads = [threading.Thread(target=send, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert len(results) == 4
    assert sum(r["accepted"] for r in results) == 300
    assert sum(r["duplicates"] for r in results) == 900
    assert fresh_project.count_requests() == 300
    assert fresh_project.count_attempts() == 300


# --- pricing -----------------------------------------------------------------------------------


def test_price_change_mid_period_prices_each_side_at_its_own_rate(
    http, fresh_project, database_url
):
    model = f"negotiated-{uuid.uuid4().hex[:6]}"
    prices = {
        "prices": [
            {"model": model, "input_per_mtok": "1.00", "output_per_mtok": "2.00",
             "effective_from": "2026-11-01T00:00:00Z"},
            {"model": model, "input_per_mtok": "0.50", "output_per_mtok": "1.50",
             "cache_read_per_mtok": "0.05", "effective_from": "2026-11-10T00:00:00Z"},
        ]
    }  # fmt: skip
    response = http.post("/v1/prices", json=prices, headers=auth(fresh_project.admin_key))
    assert response.status_code == 201, response.text
    before = event(attempt(model=model, cache_read_tokens=2000), timestamp="2026-11-05T12:00:00Z")
    after = event(attempt(model=model, cache_read_tokens=2000), timestamp="2026-11-15T12:00:00Z")
    assert post(http, fresh_project.ingest_key, batch(before, after)).status_code == 200
    # 1000 in, 500 out, 2000 cache reads (no cache price before the change: input price)
    [cost_before] = stored_attempts(database_url, before["request_id"])
    [cost_after] = stored_attempts(database_url, after["request_id"])
    assert cost_before["cost_usd"] == Decimal("0.004")  # (1000*1 + 500*2 + 2000*1) / 1e6
    assert cost_after["cost_usd"] == Decimal("0.00135")  # (1000*.5 + 500*1.5 + 2000*.05) / 1e6
    assert cost_before["price_id"] != cost_after["price_id"]
    assert cost_before["cost_source"] == "price"
    # The price rows used are kept and explain each stored cost.
    listed = http.get("/v1/prices", params={"model": model}, headers=auth(fresh_project.read_key))
    by_id = {p["id"]: p for p in listed.json()["prices"]}
    assert by_id[cost_before["price_id"]]["input_per_mtok"] == "1.00"
    assert by_id[cost_after["price_id"]]["effective_from"].startswith("2026-11-10")


def test_custom_price_overrides_catalog_only_from_its_effective_from(
    http, fresh_project, database_url
):
    early = event(attempt(model="gpt-4o", provider="openai"), timestamp="2026-10-01T00:00:00Z")
    late = event(attempt(model="gpt-4o", provider="openai"), timestamp="2026-11-20T00:00:00Z")
    http.post(
        "/v1/prices",
        json={"prices": [{"model": "gpt-4o", "provider": "openai", "input_per_mtok": "1",
                          "output_per_mtok": "1", "effective_from": "2026-11-15T00:00:00Z"}]},
        headers=auth(fresh_project.admin_key),
    )  # fmt: skip
    post(http, fresh_project.ingest_key, batch(early, late))
    [catalog_priced] = stored_attempts(database_url, early["request_id"])
    [negotiated] = stored_attempts(database_url, late["request_id"])
    assert catalog_priced["cost_usd"] == Decimal("0.0075")  # gpt-4o catalog: $2.5 in, $10 out
    assert negotiated["cost_usd"] == Decimal("0.0015")


def test_catalog_matching_and_client_cost(http, fresh_project, database_url):
    matched = event(attempt(model="claude-3-5-haiku", provider="anthropic"))
    client_cost = event(attempt(model="anything-at-all", cost_usd="0.123456789"))
    post(http, fresh_project.ingest_key, batch(matched, client_cost))
    [haiku] = stored_attempts(database_url, matched["request_id"])
    assert haiku["cost_usd"] == Decimal("0.0028")  # $0.8 in, $4 out per MTok
    [sent] = stored_attempts(database_url, client_cost["request_id"])
    assert sent["cost_usd"] == Decimal("0.123456789") and sent["cost_source"] == "client"
    assert sent["price_id"] is None


def test_unpriced_model_is_null_never_zero(http, fresh_project, database_url):
    ev = event(
        attempt(model="mystery-model-x", provider="nobody", status="rejected"),
        attempt(model="acme-priced", tier="premium"),
    )
    http.post(
        "/v1/prices",
        json={"prices": [{"model": "acme-priced", "input_per_mtok": "3", "output_per_mtok": "4",
                          "effective_from": "2020-01-01T00:00:00Z"}]},
        headers=auth(fresh_project.admin_key),
    )  # fmt: skip
    post(http, fresh_project.ingest_key, batch(ev))
    unknown, priced = stored_attempts(database_url, ev["request_id"])
    assert unknown["cost_usd"] is None and unknown["cost_source"] is None
    assert priced["cost_usd"] == Decimal("0.005")
    row = stored_request(database_url, ev["request_id"])
    assert row["is_unpriced"] and row["unpriced_attempts"] == 1
    assert row["cost_usd"] == Decimal("0.005")  # the known part: a lower bound


def test_baseline_cost_uses_the_project_baseline_model(http, database_url, live_api):
    from tests.helpers import attempt, batch, event

    project = make_project(baseline_model="frontier-x")
    http.post(
        "/v1/prices",
        json={"prices": [
            {"model": "frontier-x", "input_per_mtok": "10", "output_per_mtok": "30",
             "effective_from": "2020-01-01T00:00:00Z"},
            {"model": "small-y", "input_per_mtok": "0.1", "output_per_mtok": "0.2",
             "effective_from": "2020-01-01T00:00:00Z"}]},
        headers=auth(project.admin_key),
    )  # fmt: skip
    cheap = event(attempt(model="small-y", input_tokens=1000, output_tokens=500))
    escalated = event(
        attempt(model="small-y", status="rejected"),
        attempt(model="frontier-x", tier="premium", input_tokens=2000, output_tokens=100),
    )
    post(http, project.ingest_key, batch(cheap, escalated))
    cheap_row = stored_request(database_url, cheap["request_id"])
    escalated_row = stored_request(database_url, escalated["request_id"])
    assert cheap_row["cost_usd"] == Decimal("0.0002")
    assert cheap_row["baseline_cost_usd"] == Decimal("0.025")  # 1000*10 + 500*30
    assert escalated_row["cost_usd"] == Decimal("0.0232")  # 0.0002 + 0.023
    assert escalated_row["baseline_cost_usd"] == Decimal("0.023")  # served tokens only
    savings = (cheap_row["baseline_cost_usd"] + escalated_row["baseline_cost_usd"]) - (
        cheap_row["cost_usd"] + escalated_row["cost_usd"]
    )
    assert savings == Decimal("0.0246")
    assert cheap_row["baseline_price_id"] is not None


# --- isolation and keys ---------------------------------------------------------------


def test_a_key_sees_only_its_own_project(http, fresh_project, live_api, database_url):
    from tests.helpers import batch, event

    other = make_project()
    private_model = f"private-{uuid.uuid4().hex[:6]}"
    http.post(
        "/v1/prices",
        json={"prices": [{"model": private_model, "input_per_mtok": "1", "output_per_mtok": "1",
                          "effective_from": "2020-01-01T00:00:00Z"}]},
        headers=auth(other.admin_key),
    )  # fmt: skip
    http.put(
        "/v1/policies/secret-feature",
        json={"split": {"cheap": 1}},
        headers=auth(other.admin_key),
    )
    mine = event()
    post(http, fresh_project.ingest_key, batch(mine))
    assert fresh_project.fetch_request_ids() == {mine["request_id"]}
    assert other.count_requests() == 0
    seen = http.get(
        "/v1/prices", params={"model": private_model}, headers=auth(fresh_project.read_key)
    )
    assert seen.json()["prices"] == []
    policy = http.get("/v1/policies/secret-feature", headers=auth(fresh_project.read_key))
    assert policy.status_code == 404
    keys = http.get("/v1/keys", headers=auth(fresh_project.admin_key)).json()
    other_key_ids = {k["id"] for k in http.get("/v1/keys", headers=auth(other.admin_key)).json()}
    assert not other_key_ids & {k["id"] for k in keys}
    revoke_other = http.delete(
        f"/v1/keys/{min(other_key_ids)}", headers=auth(fresh_project.admin_key)
    )
    assert revoke_other.status_code == 404
    # Feedback for another project's request never reaches it: in this project that request
    # is unknown, so the feedback waits for a request of this project with that id.
    theirs = event()
    post(http, other.ingest_key, batch(theirs))
    response = http.post(
        "/v1/feedback",
        json={"feedback": [{"request_id": theirs["request_id"], "score": 0.1}]},
        headers=auth(fresh_project.ingest_key),
    )
    assert response.status_code == 200 and response.json()["held"] == 1
    assert stored_request(database_url, theirs["request_id"])["quality_score"] is None
    post(http, other.ingest_key, batch(event()))  # the other project's ingest applies nothing
    assert stored_request(database_url, theirs["request_id"])["quality_score"] is None


def test_revoked_key_is_refused(http, fresh_project):
    keys = http.get("/v1/keys", headers=auth(fresh_project.admin_key)).json()
    ingest_id = next(k["id"] for k in keys if k["scopes"] == ["ingest"])
    assert post(http, fresh_project.ingest_key, batch(event())).status_code == 200
    assert (
        http.delete(f"/v1/keys/{ingest_id}", headers=auth(fresh_project.admin_key)).status_code
        == 204
    )
    refused = post(http, fresh_project.ingest_key, batch(event()))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
