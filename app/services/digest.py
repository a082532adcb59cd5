"""The daily digest per project: yesterday's spend, savings, rates against policy, the
customers with the worst margins and the alerts still firing.

Sent to everyone on the project's alert rules, once per project and day (dedupe key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy import Connection, Engine, text

from app.periods import DAY, Period, floor_day, trailing, utc_now
from app.services.advice import TRAFFIC_WINDOW, top_recommendations
from app.services.alerts import list_alerts
from app.services.emails import dashboard_url, queue_email, report_email
from app.services.metrics import customer_metrics, routing_metrics

WORST_CUSTOMERS = 5


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _usd(value) -> str:
    if value is None:
        return "unknown"
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


# While some requests are unpriced, what is computed from their cost is bounded, not exact.
LOWER_BOUND = " (lower bound: unpriced requests)"
UPPER_BOUND = " (at most: unpriced requests)"


def digest_lines(conn: Connection, *, project_id: int, within: Period) -> list[tuple[str, str]]:
    routing = routing_metrics(conn, project_id=project_id, within=within)
    spend = _usd(routing.cost_usd) + (LOWER_BOUND if routing.unpriced_requests else "")
    savings = f"{_usd(routing.savings_usd)} ({_percent(routing.savings_pct)})" + (
        UPPER_BOUND if routing.unpriced_requests else ""
    )
    lines = [
        ("Requests", f"{routing.requests:,}"),
        ("Spend", spend),
        ("Savings", savings),
        ("Escalation rate", _percent(routing.escalation_rate)),
        ("Fallback rate", _percent(routing.fallback_rate)),
        ("Failover rate", _percent(routing.failover_rate)),
        ("Intended split", _split(routing.intended_split)),
        ("Policy split", _split(routing.policy_split) if routing.policy_split else "no policy"),
        ("Policy deviation", _percent(routing.policy_deviation)),
        ("Unpriced requests", str(routing.unpriced_requests)),
    ]
    worst = customer_metrics(conn, project_id=project_id, within=within)[:WORST_CUSTOMERS]
    for customer in worst:
        margin = _usd(customer.margin_usd) + (UPPER_BOUND if customer.unpriced_requests else "")
        lines.append((f"Margin of {customer.customer_id}", margin))
    lines += advice_lines(conn, project_id=project_id, end=within.end)
    firing = list_alerts(conn, project_id=project_id, state="firing")
    lines.append(("Firing alerts", ", ".join(a["rule_name"] for a in firing) or "none"))
    return lines


def advice_lines(conn: Connection, *, project_id: int, end: datetime) -> list[tuple[str, str]]:
    """The routing advice that saves the most, over the 30 days up to `end`."""
    lines = []
    within = trailing(TRAFFIC_WINDOW, end=end)
    for segment in top_recommendations(conn, project_id=project_id, within=within):
        expected = segment.expected_pass_rate
        where = segment.feature + (f" / {segment.task_type}" if segment.task_type else "")
        lines.append(
            (
                f"Advice for {where}",
                f"route to {segment.recommended_tier}: saves {_usd(segment.projected_savings_usd)}"
                f" per 30 days; expected pass rate {_percent(expected.value)}"
                f" ({_percent(expected.low)} to {_percent(expected.high)})",
            )
        )
    return lines


def _split(split: dict[str, float]) -> str:
    return ", ".join(f"{tier} {share:.0%}" for tier, share in split.items()) or "no requests"


@dataclass(frozen=True)
class DigestRun:
    queued: int


def queue_digests(engine: Engine, *, now: datetime | None = None) -> DigestRun:
    """Queues yesterday's digest of every project whose alert rules name recipients."""
    queued = 0
    with engine.connect() as conn:
        now = now or utc_now()
        targets = conn.execute(
            text(
                "select r.project_id, p.name, array_agg(distinct x) as recipients "
                "from alert_rules r join projects p on p.id = r.project_id, "
                "unnest(r.recipients) as x where r.enabled group by 1, 2 order by 1"
            )
        ).all()
    day = floor_day(now) - DAY
    within = Period(day, day + DAY)
    for target in targets:
        with engine.begin() as conn:
            subject = f"[RouteLedger] {target.name}: daily digest for {day:%Y-%m-%d}"
            queued += queue_email(
                conn,
                project_id=target.project_id,
                dedupe_key=f"digest:{target.project_id}:{day:%Y-%m-%d}",
                email=report_email(
                    kind="digest",
                    recipients=list(target.recipients),
                    subject=subject,
                    intro=f"Yesterday ({day:%Y-%m-%d}, UTC) in {target.name}.",
                    lines=digest_lines(conn, project_id=target.project_id, within=within),
                    link=dashboard_url(_day_page(target.name, day)),
                ),
            )
    return DigestRun(queued=queued)


def _day_page(project: str, day: datetime) -> str:
    """The dashboard's overview of the digest's own project and day (its `end` is a day too,
    the last one shown)."""
    day_text = f"{day:%Y-%m-%d}"
    return "/?" + urlencode({"project": project, "start": day_text, "end": day_text})
