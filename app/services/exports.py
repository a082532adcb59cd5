"""Finance exports: CSV files of requests and of per-customer cost, revenue and margin.

Both follow DESIGN.md: RFC 4180 (CRLF line ends, quotes only where needed), UTF-8, one
header row whose columns never change order, timestamps in ISO 8601 UTC, money as plain
decimals (customers: 6 places, rounded half-even after summing; requests: the stored full
precision), empty cells for unknown values, and text cells that begin with =, +, -, @, a tab
or a carriage return prefixed with ' so a spreadsheet never runs them.

Each export is a generator of chunks of UTF-8 CSV, so neither the API nor the command
line ever holds a whole file: the requests are streamed out of PostgreSQL row by row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import Connection

from app.periods import Period, calendar_parts, iso_utc
from app.services.advice import Advice
from app.services.metrics import Filters, customer_metrics
from app.vocabulary import GRANULARITIES

CHUNK_BYTES = 256 * 1024
# What a spreadsheet may take as the start of a formula (a tab or carriage return first
# still leaves one behind it).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_SIX_PLACES = Decimal("0.000001")


@dataclass(frozen=True)
class Chunk:
    """Some CSV (UTF-8), and how much of the export it completes: rows for the requests
    export, periods for the customers export (see count_requests and periods)."""

    data: bytes
    done: int


def neutralise(value: str) -> str:
    """A text cell a spreadsheet would take as a formula, made plain text."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _csv_bytes(rows: Iterable[Iterable]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


# --- requests -------------------------------------------------------------------------------

# PostgreSQL formats every cell: numeric::text is a plain decimal at full precision (never an
# exponent), booleans are true/false, timestamps ISO 8601 UTC to the microsecond.
_UTC = """to_char({} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_STARTS = ", ".join(str(ord(c)) for c in _FORMULA_STARTS)  # ascii() gives the first code point
_TEXT = "case when ascii({0}) in (" + _STARTS + ") then '''' || {0} else {0} end"
REQUEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "request_id::text"),
    ("timestamp", _UTC.format("ts")),
    ("received_at", _UTC.format("received_at")),
    ("customer_id", _TEXT.format("customer_id")),
    ("feature", _TEXT.format("feature")),
    ("user_tier", _TEXT.format("user_tier")),
    ("task_type", _TEXT.format("task_type")),
    ("intended_tier", _TEXT.format("intended_tier")),
    ("served_tier", _TEXT.format("served_tier")),
    ("served_model", _TEXT.format("served_model")),
    ("served_provider", _TEXT.format("served_provider")),
    ("attempts", "attempt_count::text"),
    ("is_fallback", "is_fallback::text"),
    ("is_escalation", "is_escalation::text"),
    ("is_failover", "is_failover::text"),
    ("is_failed", "is_failed::text"),
    ("input_tokens", "input_tokens::text"),
    ("output_tokens", "output_tokens::text"),
    ("cache_read_tokens", "cache_read_tokens::text"),
    ("cache_write_tokens", "cache_write_tokens::text"),
    ("latency_ms", "latency_ms::text"),
    ("cost_usd", "cost_usd::text"),
    ("unpriced_attempts", "unpriced_attempts::text"),
    ("is_unpriced", "is_unpriced::text"),
    ("baseline_cost_usd", "baseline_cost_usd::text"),
    ("quality_score", "quality_score::text"),
    ("quality_source", _TEXT.format("quality_source")),
    ("revenue_usd", "revenue_usd::text"),
    ("router_strategy", _TEXT.format("router_strategy")),
    ("router_version", _TEXT.format("router_version")),
    ("router_confidence", "router_confidence::text"),
    ("router_latency_ms", "router_latency_ms::text"),
    ("experiment_name", _TEXT.format("experiment_name")),
    ("experiment_arm", _TEXT.format("experiment_arm")),
    ("metadata", "metadata::text"),  # a JSON object: it starts with {
)


def _requests_where(*, project_id: int, within: Period, filters: Filters) -> tuple[str, dict]:
    """The WHERE clause (psycopg placeholders) and its parameters."""
    clauses = ["project_id = %(project_id)s", "ts >= %(start)s", "ts < %(end)s"]
    params = {"project_id": project_id, "start": within.start, "end": within.end}
    for column, value in filters.columns().items():
        clauses.append(f"{column} = %({column})s")
        params[column] = value
    return " and ".join(clauses), params


def count_requests(
    conn: Connection, *, project_id: int, within: Period, filters: Filters = Filters()
) -> int:
    where, params = _requests_where(project_id=project_id, within=within, filters=filters)
    return conn.exec_driver_sql(f"select count(*) from requests where {where}", params).scalar()


def requests_csv(
    conn: Connection,
    *,
    project_id: int,
    within: Period,
    filters: Filters = Filters(),
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[Chunk]:
    """One row per request in the period, oldest first, streamed: memory holds one chunk
    whatever the size of the export.

    PostgreSQL writes the CSV itself (COPY ... TO STDOUT, format csv: cells with a comma,
    a quote or a line break quoted, quotes doubled, NULL empty, an empty string ""), which
    is what makes a million rows take seconds. COPY ends rows with LF and hands them over
    one row per message, so the last byte of each message is the row's end: it becomes
    CRLF, and line breaks inside quoted cells stay as they are."""
    where, params = _requests_where(project_id=project_id, within=within, filters=filters)
    cells = ", ".join(f"{sql} as {name}" for name, sql in REQUEST_COLUMNS)
    # Qualified: a bare request_id in ORDER BY would be the output column, its text.
    query = (
        f"copy (select {cells} from requests where {where}"
        " order by requests.ts, requests.request_id) to stdout (format csv, header)"
    )
    parts: list = []
    size, rows = 0, -1  # the first message is the header
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(query, params) as copy:
        for row in copy:
            parts += (row[:-1], b"\r\n")
            size += len(row) + 1
            rows += 1
            if size >= chunk_bytes:
                yield Chunk(b"".join(parts), rows)
                parts, size, rows = [], 0, 0
    if parts:
        yield Chunk(b"".join(parts), rows)


# --- customers ------------------------------------------------------------------------------

CUSTOMER_HEADER = (
    "period_start", "period_end", "customer_id", "requests", "input_tokens", "output_tokens",
    "cost_usd", "revenue_usd", "margin_usd", "margin_pct", "unpriced_requests",
)  # fmt: skip


def six_places(value: Decimal | None) -> str:
    """Rounded half-even to 6 places, as a plain decimal ('' when unknown; never -0)."""
    if value is None:
        return ""
    rounded = value.quantize(_SIX_PLACES, rounding=ROUND_HALF_EVEN)
    return format(rounded.copy_abs() if rounded.is_zero() else rounded, "f")


def periods(within: Period, granularity: str) -> list[Period]:
    """The calendar days or months (UTC) of the period, the first and last clipped to it."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: must be one of {', '.join(GRANULARITIES)}")
    return calendar_parts(within, granularity)


def customers_csv(
    conn: Connection, *, project_id: int, within: Period, granularity: str
) -> Iterator[Chunk]:
    """Per customer and per day or month: requests, tokens, cost, revenue (per-request and
    prorated records), margin, from the same figures as GET /v1/metrics/customers."""
    parts = periods(within, granularity)
    yield Chunk(_csv_bytes([CUSTOMER_HEADER]), 0)
    for part in parts:
        figures = customer_metrics(conn, project_id=project_id, within=part)
        rows = [
            (
                iso_utc(part.start),
                iso_utc(part.end),
                neutralise(c.customer_id),
                c.requests,
                c.input_tokens,
                c.output_tokens,
                six_places(c.cost_usd),
                six_places(c.total_revenue_usd),
                six_places(c.margin_usd),
                six_places(c.margin_pct),
                c.unpriced_requests,
            )
            for c in sorted(figures, key=lambda c: c.customer_id)
        ]
        yield Chunk(_csv_bytes(rows), 1)


# --- routing advice (issue 15) -----------------------------------------------------------------

ADVICE_HEADER = (
    "feature", "task_type", "evidence", "pass_score", "target", "reference_tier",
    "recommended_tier", "segment_requests", "segment_cost_usd", "projected_savings_usd",
    "tier", "model", "cases", "relative_pass_rate", "relative_low", "relative_high",
    "pass_rate", "pass_rate_low", "pass_rate_high", "cost_per_request_usd", "meets_target",
)  # fmt: skip


def advice_csv(advice: Advice) -> bytes:
    """One row per segment and tier (a segment without evidence: one row, its tier cells
    empty); money to 6 places, rates and limits as they are."""
    rows: list[tuple] = [ADVICE_HEADER]
    for s in advice.segments:
        segment = (
            neutralise(s.feature), neutralise(s.task_type or ""), s.evidence or "",
            s.floor.pass_score, s.floor.target, s.reference_tier or "", s.recommended_tier,
            s.requests, six_places(s.cost_usd), six_places(s.projected_savings_usd),
        )  # fmt: skip
        for t in s.tiers or (None,):
            tier = () if t is None else (
                t.tier, neutralise(t.model), t.cases, *_estimate_cells(t.relative),
                *_estimate_cells(t.pass_rate), six_places(t.cost_per_request),
                str(t.meets_target).lower(),
            )  # fmt: skip
            rows.append((*segment, *tier))
    return _csv_bytes(rows)


def _estimate_cells(estimate) -> tuple:
    return tuple("" if v is None else v for v in (estimate.value, estimate.low, estimate.high))
