"""The finance exports through the real API and the command line: columns, formats,
half-even rounding after summing, neutralised formulas, reconciliation with the metrics."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from app.periods import Period
from app.services.exports import (
    customers_csv,
    neutralise,
    periods,
    requests_csv,
    six_places,
    with_crlf,
)
from app.services.rollups import run_rollup
from tests.helpers import REPO, attempt, auth, batch, event, post

REQUEST_HEADER = [
    "request_id", "timestamp", "received_at", "customer_id", "feature", "user_tier",
    "task_type", "intended_tier", "served_tier", "served_model", "served_provider", "attempts",
    "is_fallback", "is_escalation", "is_failover", "is_failed", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "latency_ms", "cost_usd", "unpriced_attempts",
    "is_unpriced", "baseline_cost_usd", "quality_score", "quality_source", "revenue_usd",
    "router_strategy", "router_version", "router_confidence", "router_latency_ms",
    "experiment_name", "experiment_arm", "metadata",
]  # fmt: skip
CUSTOMER_HEADER = [
    "period_start", "period_end", "customer_id", "requests", "input_tokens", "output_tokens",
    "cost_usd", "revenue_usd", "margin_usd", "margin_pct", "unpriced_requests",
]  # fmt: skip
# The last three days of October (fixed: the same on any day the suite runs).
MIDNIGHT = datetime(2026, 11, 1, tzinfo=UTC)
DAY1, DAY2, DAY3 = (MIDNIGHT - timedelta(days=n) for n in (3, 2, 1))
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


def _at(day: datetime, hours: float) -> str:
    return (day + timedelta(hours=hours)).isoformat()


def _paid(cost: str, **overrides) -> dict:
    """A request of one attempt whose cost the client sent, so the money is exact."""
    return event(attempt(cost_usd=cost), **overrides)


def _rows(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def _export(http, project, kind: str, **params):
    return http.get(f"/v1/exports/{kind}.csv", params=params, headers=auth(project.read_key))


# --- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("'=1+1", "''=1+1"),  # the prefix too: else "'=1+1" and "=1+1" print alike
        ("acme", "acme"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_neutralise_prefixes_cells_a_spreadsheet_would_run(value, expected):
    assert neutralise(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0000005", "0.000000"),
        ("0.0000015", "0.000002"),
        ("0.0000025", "0.000002"),
        ("1.23456749999", "1.234567"),
        ("-0.0000004", "0.000000"),
        ("-1.5", "-1.500000"),
        ("12345678901234.1234565", "12345678901234.123456"),
    ],
)
def test_six_places_rounds_half_even_without_exponent_or_negative_zero(value, expected):
    assert six_places(Decimal(value)) == expected
    assert six_places(None) == ""


def test_periods_are_calendar_days_and_months_clipped_to_the_period():
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    within = Period(at("2026-01-30T05:00"), at("2026-03-01T00:00"))
    assert periods(within, "month") == [
        Period(at("2026-01-30T05:00"), at("2026-02-01T00:00")),
        Period(at("2026-02-01T00:00"), at("2026-03-01T00:00")),
    ]
    days = periods(Period(at("2026-12-31T22:00"), at("2027-01-02T03:00")), "day")
    assert [(p.start.isoformat(), p.end.isoformat()) for p in days] == [
        ("2026-12-31T22:00:00+00:00", "2027-01-01T00:00:00+00:00"),
        ("2027-01-01T00:00:00+00:00", "2027-01-02T00:00:00+00:00"),
        ("2027-01-02T00:00:00+00:00", "2027-01-02T03:00:00+00:00"),
    ]


# --- requests.csv ----------------------------------------------------------------------


def test_requests_export_columns_formats_and_neutralised_cells(http, fresh_project):
    tricky = event(
        attempt(status="rejected", reason="quality_check", cost_usd="0.000000123456789012345"),
        attempt(model="mystery-model", provider=None, tier="premium", latency_ms=12.5),
        timestamp=_at(DAY1, 1.5),
        customer_id="=cmd|' /C calc'!A0",
        feature="-chat",
        user_tier="@free",
        task_type='faq, "quoted"\nsecond line',
        intended_tier="cheap",
        router={"strategy": "+rules", "version": "v3", "confidence": 0.25},
        experiment={"name": "router-v4", "arm": "treatment"},
        quality={"score": 0.9, "source": "user"},
        revenue_usd="0.0040",
        metadata={"note": "=1+1"},
    )
    plain = event(timestamp=_at(DAY1, 0.25), feature="search")
    assert post(http, fresh_project.ingest_key, batch(tricky, plain)).status_code == 200

    response = _export(
        http, fresh_project, "requests", start=DAY1.isoformat(), end=DAY2.date().isoformat()
    )
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    lines = response.content.split(b"\r\n")
    assert lines[0].decode() == ",".join(REQUEST_HEADER) and lines[-1] == b""
    rows = _rows(response)
    assert [r["request_id"] for r in rows] == [plain["request_id"], tricky["request_id"]]
    row = rows[1]
    assert ISO_UTC.match(row["timestamp"]) and ISO_UTC.match(row["received_at"])
    assert row["timestamp"] == f"{DAY1 + timedelta(hours=1.5):%Y-%m-%dT%H:%M:%S}.000000Z"
    assert row["customer_id"] == "'=cmd|' /C calc'!A0"
    assert (row["feature"], row["user_tier"], row["router_strategy"]) == (
        "'-chat",
        "'@free",
        "'+rules",
    )
    assert row["task_type"] == 'faq, "quoted"\nsecond line'
    assert row["metadata"] == '{"note": "=1+1"}'
    assert row["cost_usd"] == "0.000000123456789012345"  # full precision, no exponent
    assert (row["is_unpriced"], row["unpriced_attempts"], row["attempts"]) == ("true", "1", "2")
    assert (row["is_fallback"], row["is_escalation"], row["is_failed"]) == ("true", "true", "false")
    assert (row["served_model"], row["served_provider"]) == ("mystery-model", "")
    assert (row["revenue_usd"], row["quality_score"], row["quality_source"]) == (
        "0.0040",
        "0.9",
        "user",
    )
    assert (row["experiment_name"], row["experiment_arm"]) == ("router-v4", "treatment")
    assert rows[0]["quality_score"] == "" and rows[0]["latency_ms"] == ""

    only = _rows(
        _export(
            http,
            fresh_project,
            "requests",
            start=DAY1.date().isoformat(),
            end=DAY2.date().isoformat(),
            feature="search",
        )
    )
    assert [r["request_id"] for r in only] == [plain["request_id"]]
    quoted = _export(
        http, fresh_project, "requests", start=DAY1.isoformat(), end=DAY2.isoformat(),
        customer_id=tricky["customer_id"], feature="-chat",
    )  # fmt: skip
    assert [r["request_id"] for r in _rows(quoted)] == [tricky["request_id"]]
    empty = _export(
        http, fresh_project, "requests", start=DAY2.date().isoformat(), end=DAY3.date().isoformat()
    )
    assert empty.text == ",".join(REQUEST_HEADER) + "\r\n"


@pytest.mark.parametrize(
    "lines",
    [
        [b"a,b\n", b"1,2\n"],
        [b'a,"x\ny"\n', b'"",",\n"\n', b"\n"],
        [b'"say ""hi""\n",\n', b'"\r\n",""""\n', b'"\n\n",3\n'],
    ],
)
def test_with_crlf_ends_lines_but_keeps_line_breaks_inside_quoted_cells(lines):
    expected = b"".join(line[:-1] + b"\r\n" for line in lines)
    assert with_crlf(b"".join(lines), len(lines)) == expected


def test_requests_export_is_the_same_bytes_in_chunks_of_any_size(http, fresh_project, engine):
    """Line breaks, quotes, commas, empty cells, carriage returns and whole seconds, cut
    into chunks anywhere: each chunk's line ends become CRLF and nothing else moves."""
    events = [
        event(timestamp=_at(DAY1, 1), task_type="a\nb", feature='say "hi", =x', user_tier=""),
        event(timestamp=_at(DAY1, 1.000001), task_type="\r\n", feature="\r=1", user_tier="\n"),
        event(timestamp=_at(DAY1, 2.5), metadata={"a": "x\ny", "b": '"=,'}, feature="é-"),
    ]
    assert post(http, fresh_project.ingest_key, batch(*events)).status_code == 200
    within = Period(DAY1, DAY2)
    whole = _export(http, fresh_project, "requests", start=DAY1.isoformat(), end=DAY2.isoformat())
    # The header, each line and the cell that holds \r\n; no other line break becomes CRLF.
    assert whole.content.count(b"\r\n") == 1 + len(events) + 1
    with engine.connect() as conn:
        for chunk_bytes in (1, 40, 300, 10**6):
            chunks = list(
                requests_csv(
                    conn, project_id=fresh_project.id, within=within, chunk_bytes=chunk_bytes
                )
            )
            assert b"".join(c.data for c in chunks) == whole.content
            assert sum(c.done for c in chunks) == len(events)


def test_exports_need_a_read_key_and_whole_hours(http, fresh_project):
    assert http.get("/v1/exports/requests.csv").status_code == 401
    ingest_only = http.get("/v1/exports/requests.csv", headers=auth(fresh_project.ingest_key))
    assert ingest_only.status_code == 403
    bad = _export(http, fresh_project, "requests", start="2026-11-01T10:30:00Z")
    assert bad.status_code == 422 and bad.json()["detail"].startswith("start:")
    wrong = _export(http, fresh_project, "customers", granularity="week")
    assert wrong.status_code == 422 and "granularity" in wrong.json()["detail"]


# --- customers.csv ---------------------------------------------------------------------


def test_customers_export_rounds_after_summing_and_reconciles_with_metrics(
    http, fresh_project, engine
):
    events = [
        # Three costs of 0.0000005: each rounds to 0, their sum 0.0000015 to 0.000002.
        *(_paid("0.0000005", customer_id="even", timestamp=_at(DAY1, h)) for h in (1, 2, 3)),
        _paid("0.0000025", customer_id="half", timestamp=_at(DAY1, 4)),
        _paid("0.00001", customer_id="-loss", timestamp=_at(DAY1, 5), revenue_usd="0.000001"),
        _paid("0.25", customer_id="even", timestamp=_at(DAY2, 23.5)),
    ]
    assert post(http, fresh_project.ingest_key, batch(*events)).status_code == 200
    revenue = http.post(
        "/v1/revenue",
        json={
            "records": [
                {
                    "customer_id": "even",
                    "period_start": DAY1.isoformat(),
                    "period_end": DAY3.isoformat(),
                    "amount_usd": "2.00",
                }
            ]
        },
        headers=auth(fresh_project.admin_key),
    )
    assert revenue.status_code == 201, revenue.text
    run_rollup(engine)

    period = {"start": DAY1.isoformat(), "end": DAY3.isoformat()}
    response = _export(http, fresh_project, "customers", granularity="day", **period)
    assert response.text.split("\r\n")[0] == ",".join(CUSTOMER_HEADER)
    rows = [
        (r["period_start"][:10], r["customer_id"], r["requests"], r["cost_usd"],
         r["revenue_usd"], r["margin_usd"], r["margin_pct"], r["unpriced_requests"])
        for r in _rows(response)
    ]  # fmt: skip
    day1, day2 = f"{DAY1:%Y-%m-%d}", f"{DAY2:%Y-%m-%d}"
    assert rows == [
        (day1, "'-loss", "1", "0.000010", "0.000001", "-0.000009", "-9.000000", "0"),
        (day1, "even", "3", "0.000002", "1.000000", "0.999998", "0.999998", "0"),
        (day1, "half", "1", "0.000002", "0.000000", "-0.000002", "", "0"),
        (day2, "even", "1", "0.250000", "1.000000", "0.750000", "0.750000", "0"),
    ]
    first = _rows(response)[0]
    assert (first["period_start"], first["period_end"]) == (
        f"{DAY1:%Y-%m-%dT%H:%M:%SZ}",
        f"{DAY2:%Y-%m-%dT%H:%M:%SZ}",
    )

    # Whatever the granularity, the export adds up to the metrics API, to the cent.
    metrics = http.get(
        "/v1/metrics/customers", params=period, headers=auth(fresh_project.read_key)
    ).json()
    for granularity in ("day", "month"):
        totals: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        export = _export(http, fresh_project, "customers", granularity=granularity, **period)
        for row in _rows(export):
            for field in ("cost_usd", "revenue_usd", "margin_usd"):
                totals[row["customer_id"].lstrip("'")][field] += Decimal(row[field])
        assert set(totals) == {c["customer_id"] for c in metrics["customers"]}
        for customer in metrics["customers"]:
            for field in ("cost_usd", "revenue_usd", "margin_usd"):
                exported = totals[customer["customer_id"]][field]
                assert abs(exported - Decimal(customer[field])) < Decimal("0.005"), field


def test_an_export_reads_one_snapshot_whatever_commits_while_it_streams(engine):
    """The customers export reads day after day while it streams: a revenue record committed
    meanwhile is in none of its days, rather than in the days read after it (the export
    routes read through app.db.snapshot, as here); the next export has it in every day."""
    from app.db import snapshot
    from app.schemas import RevenueIn
    from app.services.revenue import add_revenue
    from tests.helpers import make_project

    project = make_project()
    record = {"customer_id": "late", "period_start": DAY1.isoformat(),
              "period_end": DAY3.isoformat(), "amount_usd": "2"}  # fmt: skip

    def export(conn) -> Iterator[bytes]:
        within = Period(DAY1, DAY3)
        for chunk in customers_csv(conn, project_id=project.id, within=within, granularity="day"):
            yield chunk.data

    with snapshot() as conn:
        chunks = export(conn)
        read = [next(chunks), next(chunks)]  # the header, then the first day, read
        with engine.begin() as writer:
            records = RevenueIn.model_validate_json(orjson.dumps({"records": [record]})).records
            add_revenue(writer, project_id=project.id, records=records)
        read += chunks
    assert b"late" not in b"".join(read)
    with snapshot() as conn:
        after = b"".join(export(conn)).decode()
    assert [line.split(",")[2] for line in after.splitlines()[1:]] == ["late", "late"]


def test_export_command_writes_the_same_files_as_the_api(http, fresh_project, engine, tmp_path):
    events = [_paid("0.0123", customer_id=f"c{i % 3}", timestamp=_at(DAY1, i)) for i in range(12)]
    assert post(http, fresh_project.ingest_key, batch(*events)).status_code == 200
    run_rollup(engine)
    period = {"start": DAY1.date().isoformat(), "end": DAY2.date().isoformat()}
    for kind, extra in (("customers", ["--granularity", "day"]), ("requests", [])):
        output = tmp_path / f"{kind}.csv"
        command = subprocess.run(
            [sys.executable, "-m", "app.cli", "export", kind, "--project", fresh_project.name,
             "--start", period["start"], "--end", period["end"], "-o", str(output), *extra],
            cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert command.returncode == 0, command.stderr
        params = {**period, "granularity": "day"} if kind == "customers" else period
        assert output.read_bytes() == _export(http, fresh_project, kind, **params).content
    assert len(_rows(_export(http, fresh_project, "requests", **period))) == 12


def test_a_cell_that_begins_with_the_prefix_stays_apart_from_the_one_it_would_protect(
    http, engine, fresh_project
):
    """Customers "'=evil" and "=evil" are two rows of both exports, never the same text."""
    both = [event(timestamp=_at(DAY1, 1), customer_id=name) for name in ("'=evil", "=evil")]
    assert post(http, fresh_project.ingest_key, batch(*both)).status_code == 200
    period = {"start": DAY1.isoformat(), "end": DAY2.date().isoformat()}
    requests = _rows(_export(http, fresh_project, "requests", **period))
    assert sorted(r["customer_id"] for r in requests) == ["''=evil", "'=evil"]
    run_rollup(engine)
    customers = _rows(_export(http, fresh_project, "customers", granularity="day", **period))
    assert sorted(r["customer_id"] for r in customers) == ["''=evil", "'=evil"]
