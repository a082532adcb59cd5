"""Feedback, policies, revenue, prices and keys through the real API."""

from __future__ import annotations

import psycopg

from tests.helpers import auth, batch, event, post, stored_request


def test_feedback_sets_quality_and_holds_feedback_for_requests_not_stored_yet(
    http, fresh_project, database_url
):
    ev = event(quality={"score": 0.2, "source": "judge"})
    post(http, fresh_project.ingest_key, batch(ev))
    response = http.post(
        "/v1/feedback",
        json={
            "feedback": [
                {
                    "request_id": ev["request_id"],
                    "score": 0.9,
                    "source": "user",
                    "comment": "great",
                },
                {"request_id": "5d1c1c1e-0000-4000-8000-000000000000", "score": 0.5},
                {"request_id": ev["request_id"], "score": 7},
            ]
        },
        headers=auth(fresh_project.ingest_key),
    )
    assert response.status_code == 207, response.text
    body = response.json()
    assert (body["accepted"], body["held"], body["duplicates"]) == (1, 1, 0)
    assert [(e["index"], e["error"].split(":")[0]) for e in body["errors"]] == [(2, "score")]
    row = stored_request(database_url, ev["request_id"])
    assert (row["quality_score"], row["quality_source"]) == (0.9, "user")
    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "select score, comment, request_ts from feedback where request_id = %s",
            (ev["request_id"],),
        ).fetchall()
    assert [(s, c) for s, c, _ in stored] == [(0.9, "great")]
    assert stored[0][2] == row["ts"]


def test_policy_round_trip_and_validation(http, fresh_project):
    headers = auth(fresh_project.admin_key)
    put = http.put(
        "/v1/policies/support-chat",
        json={"split": {"cheap": 0.7, "standard": 0.25, "premium": 0.05},
              "effective_from": "2026-11-01T00:00:00Z"},
        headers=headers,
    )  # fmt: skip
    assert put.status_code == 200, put.text
    newer = http.put(
        "/v1/policies/support-chat",
        json={"split": {"cheap": 0.5, "premium": 0.5}, "effective_from": "2026-11-10T00:00:00Z"},
        headers=headers,
    )
    got = http.get("/v1/policies/support-chat", headers=auth(fresh_project.read_key)).json()
    assert newer.json() == got
    assert got["split"] == {"cheap": 0.5, "premium": 0.5}
    assert [h["split"]["cheap"] for h in got["history"]] == [0.7, 0.5]

    def refused(split):
        response = http.put("/v1/policies/support-chat", json={"split": split}, headers=headers)
        assert response.status_code == 422, response.text
        return response.json()["detail"]

    assert "sum to 1" in refused({"cheap": 0.7, "premium": 0.2})
    assert refused({"cheap": 0.5, "gold": 0.5}).startswith("split.gold: unknown tier")
    assert refused({"cheap": -0.5, "premium": 1.5}).startswith("split.cheap")
    assert (
        http.put(
            "/v1/policies/support-chat",
            json={"split": {"cheap": 1}},
            headers=auth(fresh_project.read_key),
        ).status_code
        == 403
    )


def test_revenue_records_are_validated_and_stored(http, fresh_project, database_url):
    headers = auth(fresh_project.admin_key)
    ok = http.post(
        "/v1/revenue",
        json={"records": [{"customer_id": "acme", "period_start": "2026-11-01T00:00:00Z",
                           "period_end": "2026-12-01T00:00:00Z", "amount_usd": "99.990000001"}]},
        headers=headers,
    )  # fmt: skip
    assert ok.status_code == 201 and ok.json() == {"accepted": 1, "duplicates": 0}
    backwards = http.post(
        "/v1/revenue",
        json={"records": [{"customer_id": "acme", "period_start": "2026-12-01T00:00:00Z",
                           "period_end": "2026-11-01T00:00:00Z", "amount_usd": "1"}]},
        headers=headers,
    )  # fmt: skip
    assert backwards.status_code == 422
    assert backwards.json()["detail"].startswith("records[0].period_end")
    missing = http.post(
        "/v1/revenue",
        json={"records": [{"customer_id": "acme", "period_start": "2026-11-01T00:00:00Z",
                           "period_end": "2026-12-01T00:00:00Z"}]},
        headers=headers,
    )  # fmt: skip
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("records[0].amount_usd")
    with psycopg.connect(database_url) as conn:
        amounts = conn.execute(
            "select amount_usd from revenue_records where project_id = %s", (fresh_project.id,)
        ).fetchall()
    assert [str(a) for (a,) in amounts] == ["99.990000001"]


def test_a_revenue_record_with_an_id_is_stored_once_however_often_it_is_sent(
    http, fresh_project, database_url
):
    """A retried call (its answer lost) sends its records again: those with the client's
    record_id are duplicates, stored once, whatever the copy says; those without are not
    recognisable, and are stored again."""
    headers = auth(fresh_project.admin_key)
    month = {"customer_id": "acme", "period_start": "2026-11-01T00:00:00Z",
             "period_end": "2026-12-01T00:00:00Z"}  # fmt: skip
    invoice = {**month, "amount_usd": "99", "record_id": "INV-0042"}
    first = http.post("/v1/revenue", json={"records": [invoice]}, headers=headers)
    assert first.status_code == 201 and first.json() == {"accepted": 1, "duplicates": 0}
    again = http.post(
        "/v1/revenue",
        json={"records": [{**invoice, "amount_usd": "98"}, {**month, "amount_usd": "5"},
                          {**month, "amount_usd": "7", "record_id": "INV-0043"},
                          {**month, "amount_usd": "7", "record_id": "INV-0043"}]},
        headers=headers,
    )  # fmt: skip
    assert again.status_code == 201 and again.json() == {"accepted": 2, "duplicates": 2}
    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "select record_id, amount_usd from revenue_records where project_id = %s"
            " order by record_id nulls last",
            (fresh_project.id,),
        ).fetchall()
    assert stored == [("INV-0042", 99), ("INV-0043", 7), (None, 5)]
    blank = http.post(
        "/v1/revenue", json={"records": [{**invoice, "record_id": ""}]}, headers=headers
    )
    assert blank.status_code == 422
    assert blank.json()["detail"].startswith("records[0].record_id")


def test_prices_validation_names_the_field(http, fresh_project):
    response = http.post(
        "/v1/prices",
        json={"prices": [{"model": "m", "input_per_mtok": "-1", "output_per_mtok": "1",
                          "effective_from": "2026-11-01T00:00:00Z"}]},
        headers=auth(fresh_project.admin_key),
    )  # fmt: skip
    assert response.status_code == 422
    assert response.json()["detail"].startswith("prices[0].input_per_mtok")
    # Just below the bound, to its last place (a rounded copy of it would be at the bound);
    # prices are answered as plain decimals, never with an exponent.
    posted = http.post(
        "/v1/prices",
        json={"prices": [{"model": "m", "input_per_mtok": "999999999999.99999999999999999",
                          "output_per_mtok": "0.0000001", "cache_read_per_mtok": "0.00000012345",
                          "effective_from": "2026-11-01T00:00:00Z"}]},
        headers=auth(fresh_project.admin_key),
    )  # fmt: skip
    assert posted.status_code == 201, posted.text
    [price] = [
        p
        for p in http.get("/v1/prices", headers=auth(fresh_project.read_key)).json()["prices"]
        if p["model"] == "m"
    ]
    assert (price["input_per_mtok"], price["output_per_mtok"], price["cache_read_per_mtok"]) == (
        "999999999999.99999999999999999",
        "0.0000001",
        "0.00000012345",
    )
    catalog = http.get(
        "/v1/prices",
        params={"scope": "catalog", "model": "gpt-4o"},
        headers=auth(fresh_project.read_key),
    ).json()
    assert catalog["catalog_version"]
    assert {p["provider"] for p in catalog["prices"]} >= {"openai"}


def test_health_and_openapi(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ok"}
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"IngestBatch", "Event", "Attempt", "IngestResult", "FeedbackBatch"} <= set(schemas)
    ingest = spec["paths"]["/v1/requests"]["post"]
    assert ingest["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/IngestBatch"
    )
    assert {"200", "207", "400", "401", "403", "413", "415", "422", "429"} <= set(
        ingest["responses"]
    )
    assert "input_tokens" in schemas["Attempt"]["properties"]
