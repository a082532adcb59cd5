"""GET /v1/metrics/routing and GET /v1/metrics/customers, over the hourly rollups."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Bound, Name, ReadCaller, ReadDb, RequestFilters, period_param
from app.schemas import CustomerOut, CustomersOut, ModelFiguresOut, RoutingMetricsOut
from app.services import metrics
from app.services.metrics import money_text

router = APIRouter(prefix="/v1/metrics", tags=["metrics"])


@router.get("/routing", response_model=RoutingMetricsOut, summary="Rates, splits, cost, savings")
def get_routing(
    caller: ReadCaller,
    conn: ReadDb,
    filters: RequestFilters,
    start: Bound = None,
    end: Bound = None,
) -> RoutingMetricsOut:
    found = metrics.routing_metrics(
        conn, project_id=caller.project_id, within=period_param(start, end), filters=filters
    )
    return RoutingMetricsOut(
        start=found.start,
        end=found.end,
        requests=found.requests,
        attempts=found.attempts,
        failed=found.failed,
        fallback_rate=found.fallback_rate,
        escalation_rate=found.escalation_rate,
        failover_rate=found.failover_rate,
        intended_split=found.intended_split,
        served_split=found.served_split,
        policy_split=found.policy_split,
        policy_deviation=found.policy_deviation,
        cost_usd=money_text(found.cost_usd),
        cost_is_lower_bound=found.unpriced_requests > 0,
        baseline_cost_usd=money_text(found.baseline_cost_usd) if found.baseline_known else None,
        savings_usd=money_text(found.savings_usd),
        savings_pct=found.savings_pct,
        unpriced_requests=found.unpriced_requests,
        baseline_unknown_requests=found.baseline_unknown,
        input_tokens=found.input_tokens,
        output_tokens=found.output_tokens,
        mean_quality=found.mean_quality,
        latency_p50_ms=found.latency_p50_ms,
        latency_p95_ms=found.latency_p95_ms,
        by_model=[
            ModelFiguresOut(
                model=m.model,
                tier=m.tier,
                attempts=m.attempts,
                served=m.served,
                cost_usd=money_text(m.known_cost_usd),
                unpriced_attempts=m.unpriced_attempts,
                mean_quality=m.mean_quality,
            )
            for m in found.by_model
        ],
    )


@router.get(
    "/customers",
    response_model=CustomersOut,
    summary="Per customer: requests, cost, revenue, margin; negative margins first",
)
def get_customers(
    caller: ReadCaller,
    conn: ReadDb,
    start: Bound = None,
    end: Bound = None,
    customer_id: Name = None,
) -> CustomersOut:
    within = period_param(start, end)
    found = metrics.customer_metrics(
        conn, project_id=caller.project_id, within=within, customer_id=customer_id
    )
    return CustomersOut(
        start=within.start,
        end=within.end,
        customers=[
            CustomerOut(
                customer_id=c.customer_id,
                requests=c.requests,
                cost_usd=money_text(c.cost_usd),
                cost_is_lower_bound=c.unpriced_requests > 0,
                revenue_usd=money_text(c.total_revenue_usd),
                margin_usd=money_text(c.margin_usd),
                margin_pct=float(c.margin_pct) if c.margin_pct is not None else None,
                unpriced_requests=c.unpriced_requests,
            )
            for c in found
        ],
    )
