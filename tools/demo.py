"""Demo traffic: a week of a plausible LLM product, sent through the SDK, so that every
dashboard page has something to show.

Four features with a routing policy each, eight customers (one of them loses money), a
cheap/standard/premium ladder with fallbacks, escalations and failovers, an escalation
spike on support-chat two days ago that fires an alert and resolves, a drift of
search-answer's prompts in the last day, a model nobody has priced, and an experiment with
two arms on code-assist. The traffic is drawn from a seeded generator: the same plan gives
the same requests (same request ids), so sending it again stores nothing twice.
"""

from __future__ import annotations

import math
import random
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection

from app.db import get_engine, transaction
from app.periods import Period, utc_now
from app.schemas import AlertRuleIn, AlertScope, PolicyIn, RevenueRecordIn
from app.services import alerts, metrics, policies, projects, revenue, users
from app.services.jobs import JOBS, run_job

DEMO_PROJECT = "demo"
DEMO_BASELINE = ("claude-opus-4", "anthropic")
DEMO_LOGINS = {
    "admin": ("demo@routeledger.dev", "routeledger-demo"),
    "viewer": ("viewer@routeledger.dev", "routeledger-demo"),
}
UNPRICED_MODEL = "acme-llm-internal"

# tier -> (model, provider, mean latency ms, mean quality)
LADDER = {
    "cheap": ("gpt-4o-mini", "openai", 650.0, 0.78),
    "standard": ("claude-sonnet-4", "anthropic", 1600.0, 0.87),
    "premium": ("claude-opus-4", "anthropic", 3800.0, 0.93),
}
NEXT_TIER = {"cheap": "standard", "standard": "premium"}


@dataclass(frozen=True)
class Feature:
    name: str
    policy: dict[str, float]
    # What the router actually intends (not always the policy: that gap is the point).
    intended: dict[str, float]
    escalation: float  # chance the intended tier's answer is rejected and the next one serves
    input_tokens: int
    output_tokens: int
    share: float


FEATURES = (
    Feature(
        "support-chat",
        {"cheap": 0.7, "standard": 0.25, "premium": 0.05},
        {"cheap": 0.72, "standard": 0.23, "premium": 0.05},
        0.07,
        900,
        250,
        0.4,
    ),
    Feature(
        "summarize",
        {"cheap": 0.8, "standard": 0.2},
        {"cheap": 0.64, "standard": 0.36},
        0.04,
        3200,
        400,
        0.25,
    ),
    Feature(
        "code-assist",
        {"standard": 0.6, "premium": 0.4},
        {"standard": 0.55, "premium": 0.45},
        0.05,
        2200,
        700,
        0.2,
    ),
    Feature(
        "search-answer",
        {"cheap": 0.9, "standard": 0.1},
        {"cheap": 0.88, "standard": 0.12},
        0.05,
        600,
        150,
        0.15,
    ),
)

# customer -> (share of traffic, premium bias, revenue per week in USD)
CUSTOMERS = {
    "acme": (0.24, 0.0, "38.00"),
    "initech": (0.18, 0.0, "26.00"),
    "globex": (0.16, 0.35, "4.00"),  # leans on the premium model and pays little
    "umbrella": (0.11, 0.0, "15.00"),
    "hooli": (0.1, 0.0, "14.00"),
    "stark": (0.09, 0.05, "16.00"),
    "wayne": (0.07, 0.0, "9.00"),
    "pied-piper": (0.05, 0.0, "6.00"),
}

EXPERIMENT = "router-v4"


@dataclass(frozen=True)
class DemoPlan:
    """When the demo week ends, how busy it is, and where its episodes fall."""

    end: datetime
    days: int = 8
    requests_per_hour: int = 40
    seed: int = 7

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)

    @property
    def spike(self) -> tuple[datetime, datetime]:
        """support-chat escalates far more often for three hours, two days before the end."""
        begin = self.end - timedelta(hours=50)
        return begin, begin + timedelta(hours=3)

    @property
    def drift_since(self) -> datetime:
        """search-answer's prompts get longer and the router less sure, for the last day."""
        return self.end - timedelta(hours=20)


def plan_ending_now(**options) -> DemoPlan:
    now = utc_now()
    return DemoPlan(end=now.replace(minute=0, second=0, microsecond=0), **options)


@dataclass
class DemoAttempt:
    model: str
    provider: str | None
    tier: str
    input_tokens: int
    output_tokens: int
    latency_ms: float
    status: str = "ok"
    reason: str | None = None


@dataclass
class DemoRequest:
    request_id: str
    timestamp: datetime
    customer_id: str
    feature: str
    intended_tier: str
    confidence: float
    experiment: dict | None
    attempts: list[DemoAttempt] = field(default_factory=list)
    quality: float | None = None


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _diurnal(at: datetime) -> float:
    """Busier in the (European and American) working day than at night."""
    return 1.0 + 0.6 * math.sin((at.hour - 8) / 24 * 2 * math.pi)


def generate(plan: DemoPlan) -> Iterator[DemoRequest]:
    """The demo's requests, in time order."""
    rng = random.Random(plan.seed)
    features = {f.name: f for f in FEATURES}
    feature_shares = {f.name: f.share for f in FEATURES}
    customer_shares = {c: v[0] for c, v in CUSTOMERS.items()}
    hour = plan.start
    while hour < plan.end:
        for _ in range(round(plan.requests_per_hour * _diurnal(hour))):
            at = hour + timedelta(seconds=rng.uniform(0, 3599))
            feature = features[_pick(rng, feature_shares)]
            customer = _pick(rng, customer_shares)
            yield _request(rng, plan, at, feature, customer)
        hour += timedelta(hours=1)


def _request(
    rng: random.Random, plan: DemoPlan, at: datetime, feature: Feature, customer: str
) -> DemoRequest:
    intended = dict(feature.intended)
    escalation = feature.escalation
    input_tokens, confidence = feature.input_tokens, rng.betavariate(8, 2)
    experiment = None
    premium_bias = CUSTOMERS[customer][1]
    if premium_bias and "premium" in intended:
        intended["premium"] += premium_bias
    elif premium_bias:
        intended = {"premium": premium_bias, **intended}
    if feature.name == "code-assist":
        arm = "treatment" if rng.random() < 0.5 else "control"
        experiment = {"name": EXPERIMENT, "arm": arm}
        if arm == "treatment":  # the new router sends more to the standard tier
            intended = {"standard": 0.75, "premium": 0.25}
            escalation = 0.09
    if feature.name == "support-chat" and plan.spike[0] <= at < plan.spike[1]:
        escalation = 0.45
    if feature.name == "search-answer" and at >= plan.drift_since:
        input_tokens *= 4
        confidence = rng.betavariate(3, 3)
        intended = {"cheap": 0.6, "standard": 0.4}
    tier = _pick(rng, intended)
    request = DemoRequest(
        request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        timestamp=at,
        customer_id=customer,
        feature=feature.name,
        intended_tier=tier,
        confidence=round(confidence, 3),
        experiment=experiment,
    )
    tokens_in = max(20, int(rng.lognormvariate(math.log(input_tokens), 0.5)))
    tokens_out = max(5, int(rng.lognormvariate(math.log(feature.output_tokens), 0.4)))
    while True:
        model, provider, latency, _ = LADDER[tier]
        if feature.name == "code-assist" and tier == "standard" and rng.random() < 0.06:
            model, provider = UNPRICED_MODEL, None
        attempt = DemoAttempt(
            model,
            provider,
            tier,
            tokens_in,
            tokens_out,
            rng.lognormvariate(math.log(latency), 0.35),
        )
        request.attempts.append(attempt)
        if rng.random() < 0.015:  # the provider failed: the same tier once more
            attempt.status = rng.choice(["error", "timeout"])
            attempt.output_tokens = 0
            continue
        if tier in NEXT_TIER and rng.random() < escalation:
            attempt.status, attempt.reason = "rejected", "quality_check"
            tier = NEXT_TIER[tier]
            continue
        break
    if rng.random() < 0.35:
        noise = rng.gauss(0, 0.07)
        request.quality = round(min(1.0, max(0.0, LADDER[tier][3] + noise)), 3)
    return request


def send(client, requests: Iterator[DemoRequest]) -> int:
    """Records each request with the SDK client; returns how many."""
    sent = 0
    for demo in requests:
        with client.request(
            demo.customer_id,
            demo.feature,
            intended_tier=demo.intended_tier,
            router={"strategy": "rules", "version": "v3", "confidence": demo.confidence},
            experiment=demo.experiment,
            request_id=demo.request_id,
            timestamp=demo.timestamp,
        ) as request:
            for a in demo.attempts:
                request.attempt(
                    a.model,
                    a.tier,
                    a.input_tokens,
                    a.output_tokens,
                    latency_ms=round(a.latency_ms, 1),
                    status=a.status,
                    reason=a.reason,
                    provider=a.provider,
                )
            if demo.quality is not None:
                request.set_quality(demo.quality, source="judge")
        sent += 1
    return sent


@dataclass(frozen=True)
class DemoProject:
    project_id: int
    ingest_key: str


def prepare_project(conn: Connection, *, plan: DemoPlan, name: str = DEMO_PROJECT) -> DemoProject:
    """The demo project (created when missing) with its policies, revenue and logins, and a
    fresh ingest key for this run."""
    try:
        project_id = projects.project_id_by_name(conn, name=name)
    except projects.ProjectNotFound:
        project_id, _ = projects.create_project(
            conn, name=name, baseline_model=DEMO_BASELINE[0], baseline_provider=DEMO_BASELINE[1]
        )
    key = projects.create_key(conn, project_id=project_id, name="demo ingest", scopes=["ingest"])
    for feature in FEATURES:
        policy = PolicyIn(split=feature.policy, effective_from=plan.start.isoformat())
        policies.set_policy(conn, project_id=project_id, feature=feature.name, policy=policy)
    _add_revenue(conn, project_id=project_id, plan=plan)
    _add_alert_rule(conn, project_id=project_id)
    for role, (email, password) in DEMO_LOGINS.items():
        user_id = users.user_id_by_email(conn, email=email)
        if user_id is None:
            user_id = users.create_user(conn, email=email, password=password)
        users.grant(conn, user_id=user_id, project_id=project_id, role=role)
    return DemoProject(project_id=project_id, ingest_key=key.secret)


ALERT_RULE = "support-chat escalation spike"


def _add_alert_rule(conn: Connection, *, project_id: int) -> None:
    if any(r["name"] == ALERT_RULE for r in alerts.list_rules(conn, project_id=project_id)):
        return
    alerts.create_rule(
        conn,
        project_id=project_id,
        rule=AlertRuleIn(
            name=ALERT_RULE,
            metric="escalation_rate",
            scope=AlertScope(feature="support-chat"),
            # Two hours of support-chat: enough requests that chance alone rarely fires it.
            window_minutes=120,
            threshold=0.25,
            min_requests=10,
            cooldown_minutes=60,
            recipients=["pm@example.com"],
        ),
    )


def _add_revenue(conn: Connection, *, project_id: int, plan: DemoPlan) -> None:
    """Each customer's subscription for the demo's weeks (once per plan start)."""
    within = Period(plan.start, plan.end)
    records = metrics.revenue_records(conn, project_id=project_id, within=within)
    if any(record.period_start == plan.start for record in records):
        return
    weeks = Decimal(plan.days) / 7
    revenue.add_revenue(
        conn,
        project_id=project_id,
        records=[
            RevenueRecordIn(
                customer_id=customer,
                period_start=plan.start.isoformat(),
                period_end=plan.end.isoformat(),
                amount_usd=str(Decimal(weekly) * weeks),
            )
            for customer, (_, _, weekly) in CUSTOMERS.items()
        ],
    )


class DemoNotDelivered(RuntimeError):
    pass


@dataclass(frozen=True)
class DemoResult:
    project: str
    requests: int


def load(*, endpoint: str, plan: DemoPlan, name: str = DEMO_PROJECT) -> DemoResult:
    """Sends the demo's traffic to the API at `endpoint` through the SDK, then runs the jobs
    the workers would run, so every page shows it at once."""
    from routeledger import RouteLedger

    with transaction() as conn:
        project = prepare_project(conn, plan=plan, name=name)
    requests = list(generate(plan))
    with tempfile.TemporaryDirectory(prefix="routeledger-demo-") as spool:
        client = RouteLedger(
            api_key=project.ingest_key,
            endpoint=endpoint,
            max_queue=len(requests) + 1,
            spool_dir=spool,
        )
        send(client, iter(requests))
        delivered = client.flush(timeout=600)
        stats = client.stats()
        client.shutdown(timeout=2)
    if not delivered or stats["rejected"]:
        raise DemoNotDelivered(
            f"the API at {endpoint} did not take the demo traffic: {stats['sent']} stored, "
            f"{stats['rejected']} rejected, {stats['spooled']} spooled"
        )
    run_jobs(plan)
    return DemoResult(project=name, requests=len(requests))


# Jobs that judge a window ending "now": run hour by hour over the demo's last days, as the
# beat would have, so the spike fires and resolves and drift has a history.
REPLAYED_JOBS = ("drift", "alerts")
REPLAYED_HOURS = 72


def run_jobs(plan: DemoPlan) -> None:
    """What the workers would have done, done now, so the pages show the demo at once
    (emails are left to the workers)."""
    engine = get_engine()
    run_job(engine, "rollup")
    run_job(engine, "margins")
    hour = plan.end - timedelta(hours=REPLAYED_HOURS)
    while hour <= plan.end:
        for name in REPLAYED_JOBS:
            JOBS[name](engine, now=hour)
        hour += timedelta(hours=1)
