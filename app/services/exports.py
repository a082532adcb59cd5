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

from app.db import driver_cursor
from app.periods import Period, calendar_parts, iso_utc
from app.services.advice import Advice
from app.services.metrics import Filters, customer_metrics
from app.vocabulary import GRANULARITIES

# Each chunk costs the API a hop to its thread pool and a write: fewer, larger ones are cheaper.
CHUNK_BYTES = 1024 * 1024
# What a spreadsheet may take as the start of a formula (a tab or carriage return first
# still leaves one behind it), and the prefix itself: "'=x" and "=x" stay two values.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
_SIX_PLACES = Decimal("0.000001")


@dataclass(frozen=True)
class Chunk:
    """Some CSV (UTF-8), and how much of the export it completes: rows for the requests
    export, periods for the customers export (see count_requests and periods)."""

    data: bytes
    done: int


def neutralise(value: str) -> str:
    """A text cell a spreadsheet would take as a formula, made plain text (one leading `'`
    removed gives the value back)."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _csv_bytes(rows: Iterable[Iterable]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


# --- requests -------------------------------------------------------------------------------

# PostgreSQL formats every cell. COPY writes a column with its type's output function, the
# text a ::text cast gives (numeric: a plain decimal at full precision, never an exponent), so
# only booleans (COPY writes t/f), timestamps (ISO 8601 UTC to the microsecond) and text cells
# (neutralised) are expressions.
_BOOL = "case when {0} then 'true' when not {0} then 'false' end"  # constants: no text built
_UTC = """to_char({} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_STARTS = ", ".join(str(ord(c)) for c in _FORMULA_STARTS)  # ascii() gives the first code point
# Every formula start is below 'A' (65): a cell that begins with a letter, as most do, skips
# the list (looking it up for every text cell was a seventh of PostgreSQL's time).
_TEXT = (
    "case when ascii({0}) < 65 and ascii({0}) in (" + _STARTS + ") then '''' || {0} else {0} end"
)
REQUEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "request_id"),
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
    ("attempts", "attempt_count"),
    ("is_fallback", _BOOL.format("is_fallback")),
    ("is_escalation", _BOOL.format("is_escalation")),
    ("is_failover", _BOOL.format("is_failover")),
    ("is_failed", _BOOL.format("is_failed")),
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_tokens", "cache_read_tokens"),
    ("cache_write_tokens", "cache_write_tokens"),
    ("latency_ms", "latency_ms"),
    ("cost_usd", "cost_usd"),
    ("unpriced_attempts", "unpriced_attempts"),
    ("is_unpriced", _BOOL.format("is_unpriced")),
    ("baseline_cost_usd", "baseline_cost_usd"),
    ("quality_score", "quality_score"),
    ("quality_source", _TEXT.format("quality_source")),
    ("revenue_usd", "revenue_usd"),
    ("router_strategy", _TEXT.format("router_strategy")),
    ("router_version", _TEXT.format("router_version")),
    ("router_confidence", "router_confidence"),
    ("router_latency_ms", "router_latency_ms"),
    ("experiment_name", _TEXT.format("experiment_name")),
    ("experiment_arm", _TEXT.format("experiment_arm")),
    ("metadata", "metadata"),  # a JSON object: it starts with {
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


def requests_copy(
    *, project_id: int, within: Period, filters: Filters = Filters()
) -> tuple[str, dict]:
    """The COPY that writes the requests export (LF line ends), with psycopg placeholders,
    and its parameters."""
    where, params = _requests_where(project_id=project_id, within=within, filters=filters)
    cells = ", ".join(f"{sql} as {name}" for name, sql in REQUEST_COLUMNS)
    # Qualified: a bare request_id in ORDER BY would be the output column.
    query = (
        f"copy (select {cells} from requests where {where}"
        " order by requests.ts, requests.request_id) to stdout (format csv, header)"
    )
    return query, params


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
    is what makes a million rows take seconds. COPY hands the lines over one per message;
    each is copied into the chunk at once (holding on to psycopg's buffers costs more), and
    a full chunk's line ends become CRLF in one pass (with_crlf)."""
    query, params = requests_copy(project_id=project_id, within=within, filters=filters)
    chunk = bytearray()
    lines, header = 0, 1  # the first chunk starts with the header line
    with driver_cursor(conn) as cursor, cursor.copy(query, params) as copy:
        for line in copy:
            chunk += line
            lines += 1
            if len(chunk) >= chunk_bytes:
                yield Chunk(with_crlf(bytes(chunk), lines), lines - header)
                chunk.clear()
                lines = header = 0
    if chunk:
        yield Chunk(with_crlf(bytes(chunk), lines), lines - header)


def with_crlf(data: bytes, lines: int) -> bytes:
    """Whole CSV lines that end in LF, as COPY writes them, ending in CRLF instead; line
    breaks inside quoted cells stay as they are. When the LFs are as many as the lines, each
    is a line's end. Otherwise the text outside quoted cells is every other part between
    quote characters: a quoted cell's own quotes are doubled, so quotes come in pairs."""
    if data.count(b"\n") == lines:
        return data.replace(b"\n", b"\r\n")
    parts = data.split(b'"')
    parts[::2] = [part.replace(b"\n", b"\r\n") for part in parts[::2]]
    return b'"'.join(parts)


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
            tier = ("",) * (len(ADVICE_HEADER) - len(segment)) if t is None else (
                t.tier, neutralise(t.model), t.cases, *_estimate_cells(t.relative),
                *_estimate_cells(t.pass_rate), six_places(t.cost_per_request),
                str(t.meets_target).lower(),
            )  # fmt: skip
            rows.append((*segment, *tier))
    return _csv_bytes(rows)


def _estimate_cells(estimate) -> tuple:
    return tuple("" if v is None else v for v in (estimate.value, estimate.low, estimate.high))
