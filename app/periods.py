"""Time in the ledger, defined once: the clock, UTC parsing, whole hours and days, half-open
periods, and the day and month grains (DESIGN.md: all times are UTC; every period is
half-open, [start, end)).

Every service takes "now" from `utc_now` (or from its caller), never from the database's
clock: one clock for the whole service, so an injected one moves it all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from app.settings import get_settings

# The instants the ledger can have seen: a bound outside them is a mistake, not a question.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
# How far ahead of now an event's timestamp may be (DESIGN.md: more is an error).
MAX_FUTURE = DAY
# The origin of date_bin's buckets (hours, days, wider buckets of the dashboard's series), in
# Python and in SQL: every bucket boundary is a whole number of widths from it.
BIN_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
BIN_ORIGIN_SQL = "timestamptz '2000-01-01 00:00:00+00'"
# Weeks start on Monday, 00:00 UTC (ISO 8601): date_bin's origin for them is a Monday.
WEEK_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
WEEK_ORIGIN_SQL = "timestamptz '2000-01-03 00:00:00+00'"


def utc_now() -> datetime:
    """The service's clock: the system's, moved by ROUTELEDGER_CLOCK_OFFSET_SECONDS (0 but
    when the tests run the service at a chosen instant)."""
    offset = get_settings().routeledger_clock_offset_seconds
    return datetime.now(UTC) + timedelta(seconds=offset)


class InvalidPeriod(ValueError):
    """A bound that cannot be read, is not a whole hour, or an empty period; the message
    names the bound."""


@dataclass(frozen=True)
class Period:
    """[start, end), both UTC."""

    start: datetime
    end: datetime

    def overlap(self, other: Period) -> timedelta:
        """How much of `other` lies inside this period (zero when they are apart)."""
        return max(timedelta(0), min(self.end, other.end) - max(self.start, other.start))


# --- instants --------------------------------------------------------------------------------


def as_utc(at: datetime) -> datetime:
    """An aware instant in UTC; a naive one is taken as UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def parse_instant(value: str, *, name: str) -> datetime:
    """An ISO 8601 date (its midnight) or date-time, in UTC (naive is UTC), from EARLIEST to
    before LATEST."""
    try:
        at = (
            midnight(date.fromisoformat(value))
            if len(value) == 10
            else as_utc(datetime.fromisoformat(value))
        )
    except (ValueError, OverflowError):
        raise InvalidPeriod(f"{name}: {value!r} is not an ISO 8601 date or date-time") from None
    if not EARLIEST <= at < LATEST:
        raise InvalidPeriod(f"{name}: {value!r} is not from {EARLIEST:%Y} to before {LATEST:%Y}")
    return at


def parse_hour(value: str, *, name: str) -> datetime:
    """A whole UTC hour from an ISO 8601 date (its midnight) or date-time."""
    at = parse_instant(value, name=name)
    if at != floor_hour(at):
        raise InvalidPeriod(f"{name}: {value!r} is not a whole hour (metrics are hourly)")
    return at


def iso_utc(at: datetime) -> str:
    """`2026-11-22T10:15:30Z`: the instant in UTC, to the second."""
    return as_utc(at).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- hours, days, months ---------------------------------------------------------------------


def floor_hour(at: datetime) -> datetime:
    """The whole UTC hour starting the hour of `at`."""
    return as_utc(at).replace(minute=0, second=0, microsecond=0)


def next_hour(at: datetime) -> datetime:
    """The end of the hour of `at`."""
    return floor_hour(at) + HOUR


def floor_day(at: datetime) -> datetime:
    """The UTC midnight starting the day of `at`."""
    return floor_hour(at).replace(hour=0)


def floor_week(at: datetime) -> datetime:
    """The Monday midnight (UTC) starting the week of `at`."""
    day = floor_day(at)
    return day - DAY * day.weekday()


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def month_of(at: datetime) -> datetime:
    """The UTC midnight starting the month of `at`."""
    return floor_day(at).replace(day=1)


def next_month(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def grain_period(granularity: str, start: datetime) -> Period:
    """The day or month (see app.vocabulary.GRANULARITIES) starting at `start`."""
    if granularity == "day":
        return Period(start, start + DAY)
    if granularity == "month":
        return Period(start, next_month(start))
    raise ValueError(f"granularity: {granularity!r} is not day or month")


def grain_start(granularity: str, at: datetime) -> datetime:
    """The start of the day or month holding `at`."""
    return floor_day(at) if granularity == "day" else month_of(at)


def calendar_parts(within: Period, granularity: str) -> list[Period]:
    """The calendar days or months of the period, the first and last clipped to it."""
    parts = []
    start = within.start
    while start < within.end:
        end = min(grain_period(granularity, grain_start(granularity, start)).end, within.end)
        parts.append(Period(start, end))
        start = end
    return parts


# --- the periods callers ask for ----------------------------------------------------------------


def hourly_period(
    start: str | None,
    end: str | None,
    *,
    now: datetime | None = None,
    length: timedelta = DAY,
) -> Period:
    """The period of a metrics call: whole hours, by default the `length` (24 hours) up to
    the end of the current hour."""
    # Both bounds read before answering, so that a call with both wrong hears of both.
    problems: list[str] = []

    def read(value: str, name: str) -> datetime | None:
        try:
            return parse_hour(value, name=name)
        except InvalidPeriod as problem:
            problems.append(str(problem))
            return None

    end_at = read(end, "end") if end else next_hour(now or utc_now())
    start_at = read(start, "start") if start else (None if end_at is None else end_at - length)
    if problems:
        raise InvalidPeriod("; ".join(problems))
    if start_at >= end_at:
        raise InvalidPeriod("start: must be before end")
    longest = get_settings().routeledger_max_period_days
    if end_at - start_at > timedelta(days=longest):
        raise InvalidPeriod(
            f"start: the period is longer than {longest} days (ROUTELEDGER_MAX_PERIOD_DAYS); "
            "ask for a shorter one"
        )
    return Period(start_at, end_at)


def days_period(first: date, last: date) -> Period:
    """Whole UTC days, the last one included: [first's midnight, the midnight after last),
    cut to the longest period a call may ask for (ROUTELEDGER_MAX_PERIOD_DAYS, the last days
    kept) and to [EARLIEST, LATEST)."""
    longest = get_settings().routeledger_max_period_days
    end = LATEST if last >= LATEST.date() else midnight(last) + DAY
    return Period(max(midnight(first), end - longest * DAY, EARLIEST), end)


def trailing(window: timedelta, *, end: datetime) -> Period:
    """The window of this length ending at `end`."""
    return Period(end - window, end)
